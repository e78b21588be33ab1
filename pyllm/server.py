"""`pyllm serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn + sse-starlette) on one
Model and its generation engine.

Endpoints: POST /v1/chat/completions and /v1/completions (streamed as server-sent events, or
not), GET /v1/models, GET /health, GET /metrics (Prometheus text). Requests are turned into
token ids here (on a worker thread: templates and tokenization are Python), submitted to the
engine (pyllm/generate/engine.py), and their tokens are read back on the event loop without blocking it:
the engine's scheduler thread wakes the request's asyncio.Event after each token. A client that
disconnects cancels its request (its slot is freed at the next engine step).

Errors use OpenAI's shape ({"error": {"message", "type", "param", "code"}}) and status: 400 bad
request or a prompt over the context, 401 missing/wrong API key, 404 unknown model or route,
413 request too large, 429 queue full, 500 otherwise.

Not here: generation (generate/engine.py), text assembly and OpenAI's JSON shapes (chat/completions.py),
scaling out (ray_serve.py; any HTTP load balancer in front of several `pyllm serve` works too).
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import logging
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass

try:   # the `serve` extra: pip install "pyllm[serve]"
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from sse_starlette.sse import EventSourceResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(f"pyllm serve needs FastAPI, uvicorn and sse-starlette: pip install 'pyllm[serve]' ({e})") from e

from pyllm import hub
from pyllm.chat import completions
from pyllm.generate.engine import _END, BanTokens, Completion, QueueFullError, SamplingParams
from pyllm.errors import ContextOverflowError, GrammarError, InvalidTokenError, PyllmError

log = logging.getLogger("pyllm.server")

DEFAULT_MAX_REQUEST_BYTES = 1 << 20


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ServerConfig:
    model_id: str                      # the id /v1/models lists
    aliases: tuple = ()                # other names a request's "model" may use
    api_key: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_tokens_limit: int | None = None   # cap on a request's max_tokens (None: the context)


# ---------------------------------------------------------------------------------------------
# Request parsing
# ---------------------------------------------------------------------------------------------

def _get(body: dict, name: str, kinds, default=None, check=None, what: str = ""):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise APIError(400, f"'{name}' must be {what or kinds}, got {value!r}", param=name)
    if not isinstance(value, kinds):
        raise APIError(400, f"'{name}' must be {what or kinds}, got {type(value).__name__}", param=name)
    if check is not None and not check(value):
        raise APIError(400, f"'{name}' must be {what}, got {value!r}", param=name)
    return value


def _sampling(body: dict) -> SamplingParams:
    d = SamplingParams()
    num = (int, float)
    seed = _get(body, "seed", int, None, lambda v: -1 <= v < 2**64, "an integer (-1: random)")
    return SamplingParams(
        temperature=_get(body, "temperature", num, d.temperature, lambda v: 0 <= v <= 100, "a number from 0 to 100"),
        top_p=_get(body, "top_p", num, d.top_p, lambda v: 0 <= v <= 1, "a number from 0 to 1"),
        top_k=_get(body, "top_k", int, d.top_k, lambda v: 0 <= v <= 1 << 20, "a non-negative integer"),
        min_p=_get(body, "min_p", num, d.min_p, lambda v: 0 <= v <= 1, "a number from 0 to 1"),
        repeat_penalty=_get(body, "repeat_penalty", num, d.repeat_penalty, lambda v: 0 < v <= 100, "a positive number"),
        presence_penalty=_get(body, "presence_penalty", num, d.presence_penalty, lambda v: -2 <= v <= 2,
                              "a number from -2 to 2"),
        frequency_penalty=_get(body, "frequency_penalty", num, d.frequency_penalty, lambda v: -2 <= v <= 2,
                               "a number from -2 to 2"),
        seed=seed)


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 16:
        raise APIError(400, "'stop' must be a string or a list of at most 16 strings", param="stop")
    return [s for s in stop if s]


# ---------------------------------------------------------------------------------------------
# One generation, read on the event loop
# ---------------------------------------------------------------------------------------------

class _Generation:
    """A submitted request whose tokens are read without blocking the event loop: the engine's
    thread sets `event` (through the loop) after each token it queues."""

    def __init__(self, llm, ids, params, stops, hooks, max_tokens, top_logprobs):
        self.llm = llm
        self.info = Completion()
        constraint, speculative = hooks
        self.stream = llm.generate_tokens(ids, max_tokens, params, self.info, constraint, speculative, top_logprobs)
        self.request = self.stream.request
        self.text = completions.TextAssembler(llm.tokenizer, stops, self.info)
        self.event = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.request.notify = lambda: loop.call_soon_threadsafe(self.event.set)
        self.t_start = time.monotonic()

    async def pieces(self, disconnected=None):
        """Text pieces as they come. `disconnected`: an async callable polled while waiting
        (non-streamed requests), whose True cancels the request."""
        request = self.request
        next_check = time.monotonic() + 0.25
        try:
            while True:
                if disconnected is not None and time.monotonic() >= next_check:
                    if await disconnected():
                        return
                    next_check = time.monotonic() + 0.25
                item = request.poll()
                if item is None:
                    self.event.clear()
                    item = request.poll()   # a token queued between the poll and the clear
                if item is None:
                    if disconnected is None:
                        await self.event.wait()
                    else:
                        try:
                            await asyncio.wait_for(self.event.wait(), max(0.01, next_check - time.monotonic()))
                        except asyncio.TimeoutError:
                            pass
                    continue
                if item is _END:
                    if request.error is not None:
                        raise request.error
                    piece = self.text.finish()
                    if piece:
                        yield piece
                    return
                token, lp = item
                if lp is not None:
                    if self.info.logprobs is None:
                        self.info.logprobs = []
                    self.info.logprobs.append(lp)
                piece = self.text.feed(token)
                if piece:
                    yield piece
                if self.text.stopped:
                    return
        finally:
            self.stream.close()   # no-op when finished; else cancels (stop string, disconnect, error)


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------

def create_app(llm, config: ServerConfig | None = None):
    """The ASGI app serving `llm` (a pyllm.Model). Ray Serve wraps this same app."""
    cfg = config or ServerConfig(model_id=llm.name)
    names = {cfg.model_id, llm.name, *cfg.aliases}
    created = int(time.time())
    http_counts: Counter = Counter()
    app = FastAPI(title="pyllm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.llm = llm
    app.state.config = cfg

    def error_response(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return error_response(APIError(e.status_code, str(e.detail), code=code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e):
        return error_response(APIError(400, str(e)))

    app.add_middleware(_CountStatus, counts=http_counts)

    def authorize(request: Request) -> None:
        if cfg.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), cfg.api_key.encode()):
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                           type="invalid_request_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    async def read_json(request: Request) -> dict:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_request_bytes:
            raise APIError(413, f"the request body is {length} bytes; the limit is {cfg.max_request_bytes}",
                           code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_request_bytes:
                raise APIError(413, f"the request body is over the limit of {cfg.max_request_bytes} bytes",
                               code="request_too_large")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model not in names:
            raise APIError(404, f"the model '{model}' does not exist; this server has '{cfg.model_id}'",
                           type="invalid_request_error", param="model", code="model_not_found")
        return body

    def max_tokens_of(body: dict, default):
        value = body.get("max_completion_tokens", body.get("max_tokens"))
        if value is None:
            value = default
        if value is None:
            return cfg.max_tokens_limit
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise APIError(400, f"'max_tokens' must be a non-negative integer, got {value!r}", param="max_tokens")
        if cfg.max_tokens_limit is not None and value > cfg.max_tokens_limit:
            raise APIError(400, f"'max_tokens' is {value}; this server allows at most {cfg.max_tokens_limit}",
                           param="max_tokens")
        return value

    def check_n(body: dict) -> None:
        if body.get("n", 1) != 1 or body.get("best_of", 1) != 1:
            raise APIError(400, "pyllm generates one choice per request: n (and best_of) must be 1", param="n")
        if body.get("tools") or body.get("functions"):
            raise APIError(400, "tools / functions are not supported; use response_format with a JSON schema",
                           param="tools")

    async def completion_body(request: Request) -> dict:
        """The preamble both completion endpoints share: the API key, the JSON body (size
        limit, known model), one choice and no tools."""
        authorize(request)
        body = await read_json(request)
        check_n(body)
        return body

    def start(ids, params, stops, hooks, max_tokens, k) -> _Generation:
        try:
            return _Generation(llm, ids, params, stops, hooks, max_tokens, k)
        except QueueFullError as e:
            raise APIError(429, str(e), type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
        except ContextOverflowError as e:
            raise APIError(400, str(e), param="messages", code="context_length_exceeded") from None
        except (ValueError, TypeError) as e:
            raise APIError(400, str(e)) from None

    async def prepare(fn):
        """Runs prompt preparation (templates, tokenization, grammar compilation) off the loop,
        mapping bad input to 400."""
        try:
            return await run_in_threadpool(fn)
        except APIError:
            raise
        except ContextOverflowError as e:
            raise APIError(400, str(e), code="context_length_exceeded") from None
        except (GrammarError, InvalidTokenError, PyllmError, ValueError, TypeError) as e:
            raise APIError(400, str(e)) from None

    def sse(gen_chunks):
        async def events():
            async for chunk in gen_chunks:
                yield {"data": json.dumps(chunk, ensure_ascii=False)}
            yield {"data": "[DONE]"}
        return EventSourceResponse(events(), ping=15)

    async def stream_failure(e: BaseException):
        # After the 200 and the first events, an error can only be reported in the stream.
        log.exception("generation failed", exc_info=e)

    # --- endpoints

    @app.get("/health")
    async def health():
        snap = llm.engine.snapshot()
        return {"status": "ok", "model": cfg.model_id, "slots": snap["slots"], "active": snap["active"],
                "queue_depth": snap["queue_depth"], "pid": os.getpid()}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": cfg.model_id, "object": "model", "created": created,
                                             "owned_by": "pyllm", "meta": {"n_ctx": llm.n_ctx,
                                                                           "n_parallel": llm.n_parallel,
                                                                           "n_vocab": llm.n_vocab}}]}

    @app.get("/v1/models/{model_id:path}")
    async def model_info(model_id: str, request: Request):
        authorize(request)
        if model_id not in names:
            raise APIError(404, f"the model '{model_id}' does not exist", param="model", code="model_not_found")
        return {"id": cfg.model_id, "object": "model", "created": created, "owned_by": "pyllm"}

    @app.get("/metrics")
    async def metrics(request: Request):
        authorize(request)
        return PlainTextResponse(_prometheus(llm.engine, http_counts),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await completion_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
        params = _sampling(body)
        stream = bool(body.get("stream", False))
        max_tokens = max_tokens_of(body, None)
        logprobs = bool(body.get("logprobs", False))
        top = _get(body, "top_logprobs", int, None, lambda v: 0 <= v <= 20, "an integer from 0 to 20")
        k = (top or 0) if logprobs else None
        stop = _stop(body)
        response_format, grammar = body.get("response_format"), body.get("grammar")

        def build():
            hooks = llm.generation_hooks(response_format, grammar)
            msgs = completions.normalize_messages(messages)
            template = completions.chat_template_for(llm)
            ids = completions.chat_prompt_ids(llm, msgs, template)
            return ids, hooks, completions.stop_strings(stop, template.stop)

        ids, hooks, stops = await prepare(build)
        gen = start(ids, params, stops, hooks, max_tokens, k)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": cfg.model_id}
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return sse(_chat_stream(gen, head, k is not None, include_usage))
        text = []
        async for piece in gen.pieces(request.is_disconnected):
            text.append(piece)
        info = gen.info
        if info.finish_reason is None:   # the client went away
            return Response(status_code=499)
        n = len(info.token_ids or [])
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                             "finish_reason": info.finish_reason,
                             "logprobs": completions.chat_logprobs(llm, info, 0, n) if k is not None else None}],
                "usage": completions.usage_dict(info)}

    async def _chat_stream(gen: _Generation, head: dict, with_logprobs: bool, include_usage: bool):
        info = gen.info
        sent = 0

        def chunk(delta, finish_reason=None):
            nonlocal sent
            lp = None
            if with_logprobs:
                n = len(info.token_ids or [])
                lp = completions.chat_logprobs(llm, info, sent, n)
                sent = n
            return {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": lp}]}

        yield chunk({"role": "assistant", "content": ""})
        try:
            async for piece in gen.pieces():
                yield chunk({"content": piece})
        except Exception as e:
            await stream_failure(e)
            yield {"error": APIError(500, str(e), type="server_error").body()["error"]}
            return
        last = chunk({}, info.finish_reason)
        if include_usage:
            yield last
            yield {**head, "object": "chat.completion.chunk", "choices": [], "usage": completions.usage_dict(info)}
        else:
            last["usage"] = completions.usage_dict(info)
            yield last

    @app.post("/v1/completions")
    async def text_completions(request: Request):
        body = await completion_body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and
                                            all(isinstance(t, int) and not isinstance(t, bool) for t in prompt))):
            raise APIError(400, "'prompt' must be a string or a non-empty list of token ids (one prompt per request)",
                           param="prompt")
        params = _sampling(body)
        stream = bool(body.get("stream", False))
        max_tokens = max_tokens_of(body, 16)
        k = _get(body, "logprobs", int, None, lambda v: 0 <= v <= 20, "an integer from 0 to 20")
        echo = bool(body.get("echo", False))
        stop = _stop(body)
        response_format, grammar = body.get("response_format"), body.get("grammar")

        ignore_eos = bool(body.get("ignore_eos", False))   # llama-server's: run to max_tokens

        def build():
            hooks = llm.generation_hooks(response_format, grammar)
            if ignore_eos:
                if hooks[0] is not None:
                    raise APIError(400, "ignore_eos cannot be combined with response_format or grammar")
                hooks = (BanTokens(llm.n_vocab, llm.eog_ids()), hooks[1])
            ids = llm.tokenize(prompt, special=True) if isinstance(prompt, str) else list(prompt)
            llm.check_ids(ids)
            echo_text = (prompt if isinstance(prompt, str) else llm.detokenize(ids)) if echo else ""
            prompt_lps = completions.prompt_logprobs(llm, ids, k) if echo and k is not None and ids else None
            return ids, hooks, echo_text, prompt_lps

        ids, hooks, echo_text, prompt_lps = await prepare(build)
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        gen = start(ids, params, stop, hooks, max_tokens, k)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": cfg.model_id}
        if stream:
            return sse(_text_stream(gen, head, k is not None, echo_text, prompt_lps))
        text = []
        async for piece in gen.pieces(request.is_disconnected):
            text.append(piece)
        info = gen.info
        if info.finish_reason is None:
            return Response(status_code=499)
        lp = None
        if k is not None:
            lp = completions.text_logprobs(llm, info, 0, len(info.token_ids or []), 0, prompt_lps)
        return {**head, "choices": [{"index": 0, "text": echo_text + "".join(text),
                                     "finish_reason": info.finish_reason, "logprobs": lp}],
                "usage": completions.usage_dict(info)}

    async def _text_stream(gen: _Generation, head: dict, with_logprobs: bool, echo_text: str, prompt_lps):
        info = gen.info
        sent = 0
        offset = 0

        def chunk(text, finish_reason=None, prompt=None):
            nonlocal sent, offset
            lp = None
            if with_logprobs:
                n = len(info.token_ids or [])
                lp = completions.text_logprobs(llm, info, sent, n, offset, prompt)
                sent = n
            offset += len(text)
            return {**head, "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": lp}]}

        if echo_text:
            yield chunk(echo_text, prompt=prompt_lps)
        try:
            async for piece in gen.pieces():
                yield chunk(piece)
        except Exception as e:
            await stream_failure(e)
            yield {"error": APIError(500, str(e), type="server_error").body()["error"]}
            return
        last = chunk("", info.finish_reason)
        last["usage"] = completions.usage_dict(info)
        yield last

    return app


class _CountStatus:
    """Counts answered HTTP requests by path and status (a plain ASGI middleware: Starlette's
    BaseHTTPMiddleware would hide client disconnects from the endpoints)."""

    def __init__(self, app, counts: Counter):
        self.app, self.counts = app, counts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.counts[(scope["path"], message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counting_send)


def _prometheus(engine, http_counts: Counter) -> str:
    s = engine.stats
    snap = engine.snapshot()
    lines = []

    def metric(name, kind, help_text, samples):
        lines.append(f"# HELP pyllm_{name} {help_text}")
        lines.append(f"# TYPE pyllm_{name} {kind}")
        for labels, value in samples:
            label = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
            lines.append(f"pyllm_{name}{label} {value}")

    metric("requests_total", "counter", "Generation requests submitted to the engine.", [({}, s.requests)])
    metric("requests_finished_total", "counter", "Generations finished, by finish reason.",
           [({"reason": r}, n) for r, n in sorted(s.finished.items())] or [({"reason": "stop"}, 0)])
    metric("requests_cancelled_total", "counter", "Generations cancelled (client gone, stream dropped).",
           [({}, s.cancelled)])
    metric("requests_failed_total", "counter", "Generations that ended with an error.", [({}, s.errors)])
    metric("requests_rejected_total", "counter", "Requests refused because the queue was full.", [({}, s.rejected)])
    metric("prompt_tokens_total", "counter", "Prompt tokens submitted.", [({}, s.prompt_tokens)])
    metric("prompt_tokens_reused_total", "counter", "Prompt tokens found in a slot's KV cache (not recomputed).",
           [({}, s.reused_tokens)])
    metric("generated_tokens_total", "counter", "Tokens generated.", [({}, s.generated_tokens)])
    metric("engine_busy_seconds_total", "counter", "Seconds the scheduler spent evaluating.",
           [({}, round(s.busy_seconds, 6))])
    metric("queue_depth", "gauge", "Requests waiting for a slot.", [({}, snap["queue_depth"])])
    metric("requests_active", "gauge", "Requests holding a slot.", [({}, snap["active"])])
    metric("slots", "gauge", "Sequences the engine runs at once (--parallel).", [({}, snap["slots"])])
    metric("tokens_per_second", "gauge", "Generated tokens per second over the last 10 s.",
           [({}, round(snap["tokens_per_second"], 3))])
    metric("kv_cache_used_tokens", "gauge", "Positions held in the slots' KV caches.", [({}, snap["kv_used_tokens"])])
    metric("kv_cache_capacity_tokens", "gauge", "Positions all slots' KV caches can hold.",
           [({}, snap["kv_capacity_tokens"])])
    metric("kv_cache_usage_ratio", "gauge", "kv_cache_used_tokens / kv_cache_capacity_tokens.",
           [({}, round(snap["kv_used_tokens"] / max(1, snap["kv_capacity_tokens"]), 6))])
    metric("http_requests_total", "counter", "HTTP requests answered, by path and status.",
           [({"path": p, "status": c}, n) for (p, c), n in sorted(http_counts.items())] or
           [({"path": "/metrics", "status": 200}, 0)])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    from pyllm.cli import add_cache_type_arguments
    p.add_argument("model", nargs="?", default=hub.DEFAULT_MODEL,
                   help=f"a .gguf path or a known model name (default: {hub.DEFAULT_MODEL})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-np", "--parallel", type=int, default=4, help="sequences generated at once (slots; default 4)")
    p.add_argument("-c", "--ctx", type=int, help="context of each slot, in tokens (default: min(trained, 4096))")
    p.add_argument("-t", "--threads", type=int)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (also $PYLLM_API_KEY)")
    p.add_argument("--alias", help="the model id /v1/models lists (default: the model argument)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 429 (default 64)")
    p.add_argument("--max-tokens-limit", type=int, help="largest max_tokens a request may ask (default: the context)")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help=f"largest request body (default {DEFAULT_MAX_REQUEST_BYTES})")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    add_cache_type_arguments(p)


def build(args):
    """(model, app) from parsed `pyllm serve` arguments."""
    import os
    from pathlib import Path

    from pyllm.cli import cache_type_kwargs
    from pyllm.model import Model
    llm = Model(args.model, n_ctx=args.ctx, n_threads=args.threads, n_parallel=args.parallel,
                max_queue=args.max_queue, **cache_type_kwargs(args))
    model_id = args.alias or str(args.model)
    aliases = (str(args.model), Path(llm.path).stem, Path(llm.path).name)
    api_key = args.api_key or os.environ.get("PYLLM_API_KEY") or None
    cfg = ServerConfig(model_id=model_id, aliases=aliases, api_key=api_key, max_request_bytes=args.max_request_bytes,
                       max_tokens_limit=args.max_tokens_limit)
    return llm, create_app(llm, cfg)


def run(args) -> int:
    import uvicorn
    if args.host not in ("127.0.0.1", "localhost", "::1") and not (args.api_key or __import__("os").environ.get("PYLLM_API_KEY")):
        print(f"pyllm serve: warning: listening on {args.host} without --api-key: anyone who can reach this "
              f"port can use the model", file=sys.stderr)
    llm, app = build(args)
    print(f"pyllm serve: {llm.name} on http://{args.host}:{args.port}/v1 ({llm.n_parallel} slots of "
          f"{llm.n_ctx} tokens, {llm.n_threads} threads)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    llm.close()
    return 0
