"""The Ray Serve recipe (pyllm/ray_serve.py): a local Ray instance, two replicas of pyllm's
OpenAI server behind Ray's HTTP proxy, driven by the `openai` client and raw HTTP. Both replicas
must answer (each reports its process id in /health).

Marked slow: 65 s on the shared 2-core VM (Ray's own start-up is ~45 s of it: the local
instance, Serve's controller and proxy, two replica processes). Run it with `pytest -m slow
tests/test_ray_serve.py`."""
import os
import socket
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

import pyllm  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_app(smollm2_path):
    from pyllm.ray_serve import build_app
    tree = str(Path(pyllm.__file__).resolve().parent.parent)
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": tree, "PYLLM_CACHE_DIR": os.environ.get("PYLLM_CACHE_DIR", "")}
                          if os.environ.get("PYLLM_CACHE_DIR") else {"PYTHONPATH": tree}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(str(smollm2_path), model_id="smol", num_replicas=2, n_parallel=2, n_ctx=256, n_threads=1,
                        ray_actor_options={"num_cpus": 0})
        serve.run(app, route_prefix="/", name="pyllm")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_two_replicas_behind_rays_proxy(ray_app):
    url = ray_app
    pids = set()
    deadline = time.monotonic() + 60
    while len(pids) < 2 and time.monotonic() < deadline:
        r = httpx.get(url + "/health", timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        pids.add(r.json()["pid"])
    assert len(pids) == 2, f"only replicas {pids} answered"
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["smol"]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    answers = {client.chat.completions.create(model="smol", messages=messages, max_tokens=8,
                                              temperature=0).choices[0].message.content for _ in range(4)}
    assert len(answers) == 1 and answers.pop()   # greedy: every replica says the same
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smol", messages=messages, max_tokens=8, temperature=0, stream=True) if c.choices)
    assert streamed
    r = httpx.post(url + "/v1/chat/completions", json={"model": "gpt-4", "messages": messages}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
