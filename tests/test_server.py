"""`pyllm serve` (pyllm/server.py): a real uvicorn server on a free localhost port, driven by the
official `openai` client (streamed and not) and by raw HTTP (httpx) for errors, auth and
disconnects, plus a bounded load test. Outputs are compared with the Python API's on the same
model (greedy), which the engine tests tie to each request's output alone."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

import pyllm  # noqa: E402
from pyllm import server as srv  # noqa: E402

MODEL_ID = "smollm2-135m-instruct"
N_CTX = 512


class LiveServer:
    """uvicorn serving `app` on a pre-bound free localhost port, in a thread of this process."""

    def __init__(self, app):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@pytest.fixture(scope="module")
def model(smollm2_path):
    with pyllm.Model(smollm2_path, n_ctx=N_CTX, n_parallel=4, max_queue=256) as m:
        yield m


@pytest.fixture(scope="module")
def live(model):
    cfg = srv.ServerConfig(model_id=MODEL_ID, aliases=("smollm2",), max_request_bytes=64 * 1024,
                           max_tokens_limit=N_CTX)
    s = LiveServer(srv.create_app(model, cfg))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_completion_with_the_openai_client_equals_the_python_api(model, client):
    ref = model.create_chat_completion(MESSAGES, max_tokens=16, temperature=0)
    r = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=16, temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL_ID
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref["choices"][0]["message"]["content"]
    assert r.choices[0].finish_reason == ref["choices"][0]["finish_reason"]
    assert r.usage.prompt_tokens == ref["usage"]["prompt_tokens"]
    assert r.usage.completion_tokens == ref["usage"]["completion_tokens"]
    assert "Paris" in r.choices[0].message.content


def test_streamed_chat_with_the_openai_client(client):
    whole = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=24, temperature=0)
    stream = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens   # include_usage: last chunk


def test_text_completion_stop_seed_and_logprobs(model, client):
    prompt = "Once upon a time"
    ref = model.create_completion(prompt, max_tokens=12, temperature=0)
    r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0)
    assert r.choices[0].text == ref["choices"][0]["text"]
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0, stream=True))
    assert streamed == r.choices[0].text
    # A stop string: the text ends before it, finish_reason "stop".
    word = r.choices[0].text.split()[2]
    cut = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0, stop=[word])
    assert cut.choices[0].finish_reason == "stop" and word not in cut.choices[0].text
    assert r.choices[0].text.startswith(cut.choices[0].text)
    # The same seed gives the same sample; logprobs: the sampled tokens and 3 alternatives each.
    a = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=10, temperature=1.0, seed=7, logprobs=3)
    b = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=10, temperature=1.0, seed=7)
    assert a.choices[0].text == b.choices[0].text
    lp = a.choices[0].logprobs
    assert "".join(lp.tokens) == a.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == a.usage.completion_tokens
    assert all(x <= 0 for x in lp.token_logprobs) and all(len(t) <= 3 for t in lp.top_logprobs)


def test_chat_logprobs_and_json_schema_response_format(client):
    r = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in content)
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}
    r = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "The capital of France, as JSON."}], max_tokens=40,
        temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"city"} and isinstance(value["city"], str)


def test_models_endpoint(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]


# --- raw HTTP: errors, limits, auth, disconnects


def _post(live, path, body, **kw):
    return httpx.post(live.url + path, content=body if isinstance(body, (bytes, str)) else json.dumps(body),
                      headers={"content-type": "application/json", **kw.pop("headers", {})}, timeout=60, **kw)


def _error(r, status, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def test_openai_error_shapes_and_statuses(live):
    chat = "/v1/chat/completions"
    _error(_post(live, chat, {"model": "gpt-4", "messages": MESSAGES}), 404, "model_not_found")
    _error(httpx.get(live.url + "/v1/nothing-here"), 404)
    long_text = "word " * (N_CTX + 50)
    err = _error(_post(live, chat, {"messages": [{"role": "user", "content": long_text}]}), 400,
                 "context_length_exceeded")
    assert str(N_CTX) in err["message"]
    _error(_post(live, chat, b"{not json"), 400)
    _error(_post(live, chat, {"messages": "hello"}), 400)
    err = _error(_post(live, chat, {"messages": MESSAGES, "temperature": "hot"}), 400)
    assert err["param"] == "temperature"
    _error(_post(live, chat, {"messages": MESSAGES, "max_tokens": N_CTX + 1}), 400)
    _error(_post(live, chat, {"messages": MESSAGES, "n": 3}), 400)
    _error(_post(live, chat, {"messages": MESSAGES, "response_format": {"type": "json_schema",
                                                                        "json_schema": {"schema": {"type": "nope"}}}}), 400)
    _error(_post(live, "/v1/completions", {"prompt": [1, 2, 10**9]}), 400)
    _error(_post(live, chat, {"messages": [{"role": "user", "content": "x" * (70 * 1024)}]}), 413, "request_too_large")


def test_api_key_is_enforced(model):
    s = LiveServer(srv.create_app(model, srv.ServerConfig(model_id=MODEL_ID, api_key="s3cret")))
    try:
        body = {"model": MODEL_ID, "messages": MESSAGES, "max_tokens": 2}
        _error(_post(s, "/v1/chat/completions", body), 401, "invalid_api_key")
        _error(_post(s, "/v1/chat/completions", body, headers={"authorization": "Bearer wrong"}), 401)
        _error(httpx.get(s.url + "/v1/models"), 401)
        assert httpx.get(s.url + "/health").status_code == 200   # load balancers probe it
        ok = _post(s, "/v1/chat/completions", body, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert c.models.list().data[0].id == MODEL_ID
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="nope", max_retries=0).models.list()
    finally:
        s.stop()


def test_queue_full_answers_429(smollm2_path):
    with pyllm.Model(smollm2_path, n_ctx=256, n_parallel=1, max_queue=1) as m:
        s = LiveServer(srv.create_app(m, srv.ServerConfig(model_id=MODEL_ID)))
        try:
            # The only slot and the one queue place taken by generations that cannot end early
            # (a regex that admits no end-of-text before 1000 x's).
            forever = dict(max_tokens=200, temperature=0, grammar={"regex": "x{1000}"}, stream=True)
            running = m.generate("Say x:", **forever)
            next(running)
            waiting = m.generate("Say x:", **forever)
            assert m.engine.snapshot()["queue_depth"] == 1
            r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=60)
            err = _error(r, 429, "queue_full")
            assert r.headers.get("retry-after") == "1" and err["type"] == "rate_limit_error"
            running.close()
            waiting.close()
            # Room again: the next request is served.
            assert _wait_for(lambda: m.engine.snapshot()["queue_depth"] == 0)
            r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=60)
            assert r.status_code == 200
        finally:
            s.stop()


def _wait_for(predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_client_disconnect_mid_stream_cancels_the_request(model, live):
    eng = model.engine
    cancelled = eng.stats.cancelled
    generated = eng.stats.generated_tokens
    # A regex that admits no end-of-text early: the generation runs until cancelled or max_tokens.
    body = {"prompt": "Say x:", "max_tokens": 400, "temperature": 0, "stream": True, "grammar": {"regex": "x{1000}"}}
    with httpx.Client(timeout=60) as c, c.stream("POST", live.url + "/v1/completions", json=body) as r:
        events = 0
        for line in r.iter_lines():
            if line.startswith("data:"):
                events += 1
            if events == 3:
                break
    assert _wait_for(lambda: eng.stats.cancelled > cancelled), "the request was not cancelled"
    assert _wait_for(lambda: eng.snapshot()["active"] == 0)
    assert eng.stats.generated_tokens - generated < 300   # far from the 400 asked


def test_client_disconnect_without_streaming_cancels_too(model, live):
    eng = model.engine
    cancelled = eng.stats.cancelled
    body = {"prompt": "Say x:", "max_tokens": 450, "temperature": 0, "grammar": {"regex": "x{1000}"}}
    generated = eng.stats.generated_tokens
    with pytest.raises(httpx.TimeoutException):
        httpx.post(live.url + "/v1/completions", json=body, timeout=0.5)
    assert _wait_for(lambda: eng.stats.cancelled > cancelled), "the request was not cancelled"
    assert _wait_for(lambda: eng.snapshot()["active"] == 0)
    assert eng.stats.generated_tokens - generated < 400


def test_metrics_are_prometheus_text(live):
    _post(live, "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
    text = httpx.get(live.url + "/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples["pyllm_requests_total"] >= 1 and samples["pyllm_generated_tokens_total"] >= 2
    for name in ("pyllm_queue_depth", "pyllm_tokens_per_second", "pyllm_kv_cache_used_tokens",
                 "pyllm_kv_cache_capacity_tokens", "pyllm_requests_active"):
        assert name in samples, name
    assert samples["pyllm_kv_cache_capacity_tokens"] == 4 * N_CTX
    assert any(k.startswith('pyllm_http_requests_total{path="/v1/completions",status="200"}') for k in samples)


def test_load_32_clients_200_requests_all_answered(model, live):
    """32 concurrent clients, 200 short requests: every one answered with its own greedy text
    (the same prompt always gives the same text), none lost. Latencies printed (no threshold)."""
    prompts = [f"Item {i}: the colour of the sky is" for i in range(8)]
    expected = {p: model.create_completion(p, max_tokens=4, temperature=0)["choices"][0]["text"] for p in prompts}
    n_requests, n_clients = 200, 32
    latencies, results = [], []

    async def main():
        queue = asyncio.Queue()
        for i in range(n_requests):
            queue.put_nowait(i)
        limits = httpx.Limits(max_connections=n_clients)
        async with httpx.AsyncClient(base_url=live.url, timeout=120, limits=limits) as c:
            async def worker():
                while not queue.empty():
                    i = queue.get_nowait()
                    p = prompts[i % len(prompts)]
                    t0 = time.perf_counter()
                    r = await c.post("/v1/completions", json={"model": MODEL_ID, "prompt": p, "max_tokens": 4,
                                                              "temperature": 0})
                    latencies.append(time.perf_counter() - t0)
                    results.append((i, p, r.status_code, r.json()))
            await asyncio.gather(*(worker() for _ in range(n_clients)))

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    assert len(results) == n_requests and sorted(i for i, *_ in results) == list(range(n_requests))
    assert all(status == 200 for _, _, status, _ in results)
    assert all(body["choices"][0]["text"] == expected[p] for _, p, _, body in results)
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]
    print(f"\nload: {n_requests} requests from {n_clients} clients in {wall:.1f} s "
          f"({n_requests / wall:.1f} req/s), latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")


def test_pyllm_serve_command(smollm2_path, tmp_path):
    """`pyllm serve MODEL --port P --parallel 2` in its own process answers the openai client."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(Path(pyllm.__file__).parent.parent))
    proc = subprocess.Popen([sys.executable, "-m", "pyllm", "serve", str(smollm2_path), "--port", str(port),
                             "--parallel", "2", "--ctx", "256", "--alias", "smol", "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "pyllm serve did not come up"
            time.sleep(0.2)
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        assert c.models.list().data[0].id == "smol"
        r = c.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=8, temperature=0)
        assert r.choices[0].message.content
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
    assert proc.returncode in (0, -signal.SIGINT), proc.stdout.read()


def test_ignore_eos_runs_to_max_tokens(live):
    """llama-server's ignore_eos (the benchmarks need every stream to run to max_tokens)."""
    body = {"prompt": "Hi", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    r = _post(live, "/v1/completions", body)
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] == 24 and r.json()["choices"][0]["finish_reason"] == "length"
    _error(_post(live, "/v1/completions", {**body, "grammar": {"regex": "a+"}}), 400)
