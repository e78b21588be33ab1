"""Several `pyllm serve` replicas behind Ray Serve's HTTP proxy (the `pyllm[ray]` extra).

Each replica is a Ray Serve deployment replica holding one Model (its own engine and slots) and
serving the same ASGI app as `pyllm serve` (pyllm/server.py), wrapped with `serve.ingress`; Ray's
proxy spreads requests over the replicas and Ray places replicas on the machines of a Ray cluster.

    from ray import serve
    from pyllm.ray_serve import build_app
    serve.run(build_app("smollm2-135m-instruct", num_replicas=2, n_parallel=4), route_prefix="/")
    # the OpenAI API at http://127.0.0.1:8000/v1 (Ray's proxy)

or from the shell: `serve run pyllm.ray_serve:app num_replicas=2 model=smollm2-135m-instruct`.

Not here: any cluster code of pyllm's own. Without Ray, the same server sits behind any HTTP load
balancer (nginx, HAProxy, a cloud load balancer): run `pyllm serve --host 0.0.0.0 --api-key ...`
on each machine and point the balancer at them, with GET /health as the health check.
"""
from __future__ import annotations

import os

try:
    from ray import serve
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(f"pyllm.ray_serve needs Ray Serve: pip install 'pyllm[ray]' ({e})") from e


def build_app(model: str | None = None, *, num_replicas: int = 2, n_parallel: int = 4, n_ctx: int | None = None,
              n_threads: int | None = None, api_key: str | None = None, model_id: str | None = None,
              max_queue: int = 64, ray_actor_options: dict | None = None, **model_kwargs):
    """A bound Ray Serve application: `num_replicas` replicas, each a pyllm.Model with
    `n_parallel` slots of `n_ctx` tokens, serving pyllm's OpenAI-compatible API. Pass it to
    `serve.run(app, route_prefix="/")`. ray_actor_options: Ray's per-replica resources (default
    {"num_cpus": n_threads or 1}); api_key: Bearer key every replica enforces ($PYLLM_API_KEY)."""
    from pyllm import hub
    name = model if model is not None else hub.DEFAULT_MODEL
    settings = dict(n_ctx=n_ctx, n_threads=n_threads, n_parallel=n_parallel, max_queue=max_queue, **model_kwargs)
    key = api_key or os.environ.get("PYLLM_API_KEY") or None
    served_id = model_id or str(name)

    def build_asgi_app():
        # Runs in each replica: the model is loaded there, not in the driver.
        from pathlib import Path

        from pyllm.model import Model
        from pyllm.server import ServerConfig, create_app
        llm = Model(name, **settings)
        cfg = ServerConfig(model_id=served_id, aliases=(str(name), Path(llm.path).stem), api_key=key)
        return create_app(llm, cfg)

    options = ray_actor_options if ray_actor_options is not None else {"num_cpus": n_threads or 1}
    deployment = serve.deployment(serve.ingress(build_asgi_app)(), name="pyllm", num_replicas=num_replicas,
                                  ray_actor_options=options)
    return deployment.bind()


def app(args: dict):
    """`serve run pyllm.ray_serve:app key=value ...` (Ray's application builder): model,
    num_replicas, n_parallel, n_ctx, n_threads, api_key, model_id."""
    ints = ("num_replicas", "n_parallel", "n_ctx", "n_threads", "max_queue")
    kwargs = {k: (int(v) if k in ints else v) for k, v in dict(args).items()}
    return build_app(kwargs.pop("model", None), **kwargs)
