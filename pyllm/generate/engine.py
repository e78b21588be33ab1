"""The generation engine: one scheduler thread owns every forward pass of a model.

Callers (Model.generate and generate_tokens, the OpenAI-shaped functions in completions.py, the
HTTP server) submit a `Request` and read its tokens from the request's own queue, from any
thread, at any pace, interleaved with other streams, or not at all: closing or dropping a
`TokenStream` cancels its request and frees its slot. No lock is ever held across a stream.

Slots: the engine runs up to `n_slots` sequences at once, each in its own `_core.Context` (its own
KV cache) on the same weights. Each scheduler iteration decodes one token for every decoding slot
in one batched forward pass (`_decode_step`: continuous batching, the weights read once per step),
advances speculative and job tasks one step each, and prefills one chunk of the oldest new prompt
(small chunks while others decode, so running streams keep flowing). A new request takes the free
slot whose cached tokens share the longest prefix with its prompt, and evaluates only the rest.

All slots run on one thread pool and one set of forward buffers (slot 0's): the machine sees
n_threads busy threads, as with one Context, however many slots there are, and a slot's memory
is its KV cache.

One source of truth for sampling settings: `SamplingParams`' defaults are read from the C++
sampler (`_core.sampler_defaults()`, sampling/sampler.h); every Python signature that takes a
sampling setting uses them, and `make_sampler` is the one place a `_core.Sampler` is built.

Not here: text (detokenizing, stop strings, OpenAI shapes: completions.py), the HTTP layer
(server.py), the forward pass (csrc/model).
"""
from __future__ import annotations

import collections
import math
import signal
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from pyllm import _core, _validate
from pyllm.errors import ContextOverflowError, QueueFullError  # noqa: F401 (QueueFullError: re-exported)

# ---------------------------------------------------------------------------------------------
# Sampling settings
# ---------------------------------------------------------------------------------------------

_DEFAULTS = _core.sampler_defaults()


def _f(x: float) -> float:
    return round(float(x), 6)   # C++ float 0.8f -> 0.8, not 0.800000011920929


@dataclass
class SamplingParams:
    """The sampler chain's settings; the defaults are the C++ sampler's (sampling/sampler.h)."""
    temperature: float = _f(_DEFAULTS["temperature"])
    top_k: int = int(_DEFAULTS["top_k"])
    top_p: float = _f(_DEFAULTS["top_p"])
    min_p: float = _f(_DEFAULTS["min_p"])
    repeat_penalty: float = _f(_DEFAULTS["repeat_penalty"])
    presence_penalty: float = _f(_DEFAULTS["presence_penalty"])
    frequency_penalty: float = _f(_DEFAULTS["frequency_penalty"])
    penalty_last_n: int = int(_DEFAULTS["penalty_last_n"])
    seed: int | None = None   # None or -1: random


DEFAULT_SAMPLING = SamplingParams()


def make_sampler(n_vocab: int, params: SamplingParams, seed: int | None = None) -> _core.Sampler:
    """The one place a sampler is built from SamplingParams (generation and speculation both).
    `seed` overrides params.seed (already validated); otherwise params.seed is checked here."""
    seed = _validate.seed(params.seed) if seed is None else seed
    top_k = _validate.integer("top_k", params.top_k, -_validate.INT32_MAX, _validate.INT32_MAX)
    penalty_last_n = _validate.integer("penalty_last_n", params.penalty_last_n, -1, _validate.INT32_MAX)
    for name in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty"):
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    return _core.Sampler(n_vocab, temperature=params.temperature, top_k=top_k, top_p=params.top_p,
                         min_p=params.min_p, repeat_penalty=params.repeat_penalty,
                         presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty,
                         penalty_last_n=penalty_last_n, seed=seed)


@dataclass
class Completion:
    """What one generation produced (filled in as it streams)."""
    text: str = ""
    token_ids: list[int] | None = None
    finish_reason: str | None = None  # "stop" (end-of-generation token or stop string) or "length"
    n_prompt_tokens: int = 0
    n_reused_tokens: int = 0          # prompt tokens found already in the KV cache
    # With logprobs requested: one (logprob, [(id, logprob), ...top]) per generated token, the
    # log-probabilities of the model's own distribution (log-softmax of the logits).
    logprobs: list | None = None


# ---------------------------------------------------------------------------------------------
# Requests and streams
# ---------------------------------------------------------------------------------------------

_END = object()   # the last item of a request's queue

QUEUED, PREFILL, DECODE, TASK, DONE = "queued", "prefill", "decode", "task", "done"


class Request:
    """One generation (or job) in the engine. The scheduler thread writes its state and pushes
    its output; any other thread reads the output (`get`, `poll`) and may `cancel` it."""

    def __init__(self, ids: list[int], limit: int, sampler=None, constraint=None, top_logprobs: int | None = None,
                 task: Callable | None = None, info: Completion | None = None):
        self.ids = ids
        self.limit = limit                 # tokens it may still produce (budget and context)
        self.sampler = sampler
        self.constraint = constraint
        self.top_logprobs = top_logprobs   # None: no logprobs; k >= 0: the sampled one and k best
        self.task_factory = task           # task(slot, request) -> generator, run on the scheduler
        self.task = None
        self.info = info if info is not None else Completion()
        self.state = QUEUED
        self.slot = None
        self.pending: list[int] | None = None  # prompt tokens still to evaluate, or the last sampled token
        self.produced = 0
        self.result = None                 # a task's return value
        self.error: BaseException | None = None
        self.cancelled = False
        self.notify: Callable[[], None] | None = None   # called (scheduler thread) after each push
        self.t_submit = time.monotonic()
        self.t_first: float | None = None
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition(threading.Lock())

    # --- the scheduler's side

    def push(self, item) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()
        notify = self.notify
        if notify is not None:
            try:
                notify()
            except Exception:   # a consumer's loop that is gone (server shutdown): nothing to tell
                pass

    def finish(self, reason: str | None = None, error: BaseException | None = None) -> None:
        if reason is not None and self.info.finish_reason is None:
            self.info.finish_reason = reason
        self.error = error
        self.state = DONE
        self.push(_END)

    # --- the consumer's side

    def cancel(self) -> None:
        """Stops the request at the scheduler's next step; its slot is freed. Idempotent."""
        self.cancelled = True

    @property
    def finished(self) -> bool:
        return self.state == DONE

    def poll(self):
        """The next item without waiting: a token (or (token, logprob entry)), _END, or None."""
        with self._cond:
            return self._items.popleft() if self._items else None

    def get(self):
        """The next item, waiting for it. Waits in short slices so Ctrl-C reaches the main thread."""
        with self._cond:
            while not self._items:
                self._cond.wait(0.1)
            return self._items.popleft()


class TokenStream:
    """An iterator over a request's generated token ids (end-of-generation tokens excluded), for
    any thread. close(), or dropping the last reference, cancels the request."""

    def __init__(self, engine: "Engine", request: Request):
        self._engine = engine
        self.request = request
        self.info = request.info

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> int:
        r = self.request
        if r is None:
            raise StopIteration
        try:
            item = r.get()
        except BaseException:   # Ctrl-C while waiting: the generation stops too
            self.close()
            raise
        if item is _END:
            self.request = None
            if r.error is not None:
                raise r.error
            raise StopIteration
        token, lp = item
        if lp is not None:
            if self.info.logprobs is None:
                self.info.logprobs = []
            self.info.logprobs.append(lp)
        return token

    def close(self) -> None:
        r = self.request
        if r is not None:
            r.cancel()
            self.request = None
            self._engine._wake_up()

    def __del__(self):
        self.close()


def _log_softmax_entry(logits: np.ndarray, token: int, k: int):
    """(logprob of token, [(id, logprob) of the k most likely]) under softmax(logits)."""
    x = logits.astype(np.float64)
    m = x.max()
    lse = m + math.log(np.exp(x - m).sum())
    top = []
    if k > 0:
        idx = np.argpartition(-x, min(k, x.size - 1))[:k]
        idx = idx[np.argsort(-x[idx], kind="stable")]
        top = [(int(i), float(x[i] - lse)) for i in idx]
    return float(x[token] - lse), top


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


class BanTokens:
    """A constraint that only forbids some tokens (the end-of-generation ones: llama-server's
    ignore_eos, for benchmarks that need every stream to run to max_tokens)."""

    done = False

    def __init__(self, n_vocab: int, banned):
        self._mask = np.full((n_vocab + 31) // 32, 0xFFFFFFFF, np.uint32)
        for t in banned:
            self._mask[t >> 5] &= np.uint32(~(1 << (t & 31)) & 0xFFFFFFFF)

    def mask(self) -> np.ndarray:
        return self._mask

    def advance(self, token: int) -> None:
        pass


class Slot:
    """One sequence: a Context (its KV cache) and the tokens cached in it, in order."""

    def __init__(self, index: int, ctx):
        self.index = index
        self.ctx = ctx
        self.cached: list[int] = []
        self.request: Request | None = None
        self.last_used = 0.0

    def common_prefix(self, ids: Sequence[int]) -> int:
        n = 0
        for a, b in zip(self.cached, ids):
            if a != b:
                break
            n += 1
        return n

    def reuse(self, ids: list[int]) -> int:
        """Keeps the longest cached prefix of ids (leaving at least one token to evaluate, so
        there are logits to sample from) and drops the rest; returns its length."""
        common = min(self.common_prefix(ids), len(ids) - 1, self.ctx.n_past)
        self.ctx.truncate(common)
        del self.cached[common:]
        return common

    def truncate(self, n: int) -> None:
        if n < len(self.cached) or n < self.ctx.n_past:
            self.ctx.truncate(n)
            del self.cached[n:]


@dataclass
class EngineStats:
    """Counters for /metrics (monotonic unless said otherwise)."""
    requests: int = 0
    finished: dict = field(default_factory=lambda: collections.Counter())   # by finish reason
    cancelled: int = 0
    errors: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    busy_seconds: float = 0.0


class Engine:
    """Owns the Contexts of one model's weights and the scheduler thread that runs them.

    `new_context()` makes a Context (n_ctx positions) on the shared weights. `check` is called
    before each evaluation step (the model file's identity check)."""

    PREFILL_CHUNK = 64   # prompt tokens evaluated per scheduler iteration while others decode

    def __init__(self, new_context: Callable[..., object], n_slots: int, n_ctx: int, n_vocab: int,
                 eog_ids: set[int], check: Callable[[], None] | None = None, max_queue: int | None = None,
                 prefill_chunk: int | None = None, n_batch: int = 512, batched: bool = True):
        self._new_context = new_context
        self.max_batch = max(1, min(n_batch, n_ctx))   # sequences per batched decode pass
        self.batched = batched   # False: one evaluation per slot (for A/B measurements)
        self.n_slots = _validate.integer("n_parallel", n_slots, 1, 4096)
        self.n_ctx = n_ctx
        self.n_vocab = n_vocab
        self.eog = frozenset(eog_ids)
        self._check = check
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk or self.PREFILL_CHUNK
        self.slots: list[Slot | None] = [Slot(0, new_context())] + [None] * (self.n_slots - 1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[Request] = collections.deque()
        self._active: list[Request] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stats = EngineStats()
        self._recent = collections.deque()   # (time, tokens) of the last seconds' decode steps
        _live_engines.add(self)

    def new_context(self):
        """A Context on this engine's weights that no slot owns (a draft model's private cache),
        on its own thread pool."""
        return self._new_context()

    # --- submitting

    def submit(self, request: Request) -> Request:
        with self._lock:
            if self._closed:
                raise ValueError("the model is closed")
            if self.max_queue is not None and len(self._queue) >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFullError(f"{len(self._queue)} requests are already waiting (the limit); try again later")
            self.stats.requests += 1
            self._queue.append(request)
            self._ensure_thread()
            self._wake.notify()
        return request

    def generate(self, ids: list[int], max_tokens: int | None, sampling: SamplingParams,
                 info: Completion | None = None, constraint=None, top_logprobs: int | None = None,
                 task: Callable | None = None) -> TokenStream:
        """Submits a generation of up to max_tokens tokens after `ids` (checked ids: see
        Model.check_ids) and returns its stream. max_tokens None or negative: until an
        end-of-generation token or the end of the context. `task`: a generator factory
        task(slot, request) run on the scheduler instead of the plain loop (speculation)."""
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens but the context holds {self.n_ctx} (n_ctx); "
                f"shorten the prompt (or conversation) or load the model with a larger n_ctx")
        limit = self.n_ctx - len(ids) + 1   # tokens that can be sampled before the cache is full
        if max_tokens is not None and max_tokens >= 0:
            limit = min(limit, _validate.integer("max_tokens", max_tokens, 0, _validate.INT32_MAX))
        if top_logprobs is not None:
            top_logprobs = _validate.integer("top_logprobs", top_logprobs, 0, 20)
            if task is not None:
                raise ValueError("logprobs are not available with speculative decoding")
        sampler = make_sampler(self.n_vocab, sampling) if task is None else None
        info = info if info is not None else Completion()
        info.n_prompt_tokens = len(ids)
        request = Request(list(ids), limit, sampler, constraint, top_logprobs, task, info)
        return TokenStream(self, self.submit(request))

    def run_task(self, task: Callable, ids: Sequence[int] = ()):
        """Runs task(slot, request) (a generator; its return value is the result) on the
        scheduler thread with a slot of its own, preferring the slot sharing the longest prefix
        with `ids`, and waits for it."""
        request = Request(list(ids), 0, task=task)
        self.submit(request)
        try:
            while True:
                item = request.get()
                if item is _END:
                    break
        except BaseException:
            request.cancel()
            self._wake_up()
            raise
        if request.error is not None:
            raise request.error
        return request.result

    # --- state for /metrics

    def snapshot(self) -> dict:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - 10.0:
                self._recent.popleft()
            recent = sum(n for _, n in self._recent)
            kv_used = sum(len(s.cached) for s in self.slots if s is not None)
            return {"queue_depth": len(self._queue), "active": len(self._active), "slots": self.n_slots,
                    "slots_allocated": sum(1 for s in self.slots if s is not None),
                    "kv_used_tokens": kv_used, "kv_capacity_tokens": self.n_slots * self.n_ctx,
                    "tokens_per_second": recent / 10.0}

    # --- lifecycle

    def close(self) -> None:
        """Cancels everything, stops the scheduler thread and drops the contexts. Safe from any
        thread, the scheduler's included (a Model garbage-collected there, its lock held)."""
        if self._thread is not None and threading.current_thread() is self._thread:
            self._closed = True   # the loop stops at its next check and cleans up (_shutdown)
            return
        with self._lock:
            if self._closed and self._thread is None:
                return
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            self._shutdown()

    def _shutdown(self) -> None:
        """(lock held) Ends every request and drops the contexts."""
        for r in list(self._queue) + self._active:
            if r.state != DONE:
                r.finish(error=ValueError("the model was closed"))
        self._queue.clear()
        self._active.clear()
        self.slots = [None] * self.n_slots

    def slot0(self) -> Slot:
        """Slot 0 (Model._ctx / _cached, for tools that drive a Context directly)."""
        slot = self.slots[0]
        if slot is None:
            raise ValueError("the model is closed")
        return slot

    def _wake_up(self) -> None:
        with self._lock:
            self._wake.notify()

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        # The scheduler thread must not take Ctrl-C from the main thread (Python would only set
        # a flag there): it starts with SIGINT/SIGTERM blocked, which it inherits.
        old = None
        if hasattr(signal, "pthread_sigmask"):
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._thread = threading.Thread(target=self._run, name="pyllm-engine", daemon=True)
            self._thread.start()
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    # --- the scheduler

    def _run(self) -> None:
        # Ctrl-C is for the main thread: a SIGINT taken by this thread only sets Python's flag,
        # and a main thread asleep in readline's select() would never raise KeyboardInterrupt.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while True:
            with self._lock:
                while True:
                    if self._closed:
                        self._shutdown()
                        return
                    self._reap()
                    self._admit()
                    if self._active:
                        break
                    self._wake.wait()
                active = list(self._active)
            t0 = time.perf_counter()
            try:
                if self._check is not None:
                    self._check()
            except BaseException as e:
                for r in active:
                    self._fail(r, e)
                continue
            self._iteration(active)
            self.stats.busy_seconds += time.perf_counter() - t0

    def _iteration(self, active: list[Request]) -> None:
        decoding = [r for r in active if r.state == DECODE and not r.cancelled]
        if decoding:
            self._decode_step(decoding)
        for r in active:
            if r.state == TASK and not r.cancelled:
                self._task_step(r)
        prefilling = [r for r in active if r.state == PREFILL and not r.cancelled]
        if prefilling:
            others_running = bool(decoding) or any(r.state == TASK for r in active)
            if not others_running:   # nobody waits: the oldest prompt at once
                self._prefill_step(prefilling[0], None)
                return
            # Others are streaming: at most prefill_chunk prompt tokens this step, oldest first
            # (several short prompts fit in one step).
            budget = self.prefill_chunk
            for r in prefilling:
                if budget <= 0:
                    break
                budget -= self._prefill_step(r, budget)

    def _reap(self) -> None:
        """(lock held) Drops cancelled and finished requests, freeing their slots."""
        if self._queue and any(r.cancelled for r in self._queue):
            for r in [r for r in self._queue if r.cancelled]:
                self._queue.remove(r)
                self.stats.cancelled += 1
                r.finish()
        keep = []
        for r in self._active:
            if r.cancelled and r.state != DONE:
                self.stats.cancelled += 1
                self._close_task(r)
                r.finish()
            if r.state == DONE:
                if r.slot is not None:
                    r.slot.request = None
                    r.slot.last_used = time.monotonic()
                    r.slot = None
                continue
            keep.append(r)
        self._active = keep

    def _admit(self) -> None:
        """(lock held) Gives free slots to waiting requests, oldest first: the free slot whose
        cached tokens share the longest prefix with the prompt (a new slot if none shares any)."""
        while self._queue:
            free = [i for i, s in enumerate(self.slots) if s is None or s.request is None]
            if not free:
                return
            r = self._queue.popleft()
            best, best_len = None, -1
            for i in free:
                s = self.slots[i]
                n = s.common_prefix(r.ids) if s is not None else 0
                # Ties: an unused or never-created slot (keeps others' caches), then the least recently used.
                key = (n, s is None or not s.cached, -(s.last_used if s is not None else 0.0))
                if best is None or key > best_len:
                    best, best_len = i, key
            try:
                if self.slots[best] is None:
                    # Every slot runs on slot 0's thread pool and forward buffers: one slot
                    # evaluates at a time, idle pools would only spin against the busy one, and a
                    # new slot costs only its KV cache.
                    self.slots[best] = Slot(best, self._new_context(share_with=self.slots[0].ctx))
            except BaseException as e:   # out of memory for another context: fail this one
                r.finish(error=e)
                self.stats.errors += 1
                continue
            slot = self.slots[best]
            slot.request = r
            r.slot = slot
            self._active.append(r)
            if r.task_factory is not None:
                r.state = TASK
            elif r.limit <= 0:
                reused = slot.common_prefix(r.ids)
                r.info.n_reused_tokens = min(reused, len(r.ids) - 1)
                r.finish("length")
            else:
                r.state = PREFILL

    def _fail(self, r: Request, e: BaseException) -> None:
        self.stats.errors += 1
        self._close_task(r)
        r.finish(error=e)

    @staticmethod
    def _close_task(r: Request) -> None:
        # A request's prefill generator (its task) is closed when the request ends early; a
        # failure while closing must not take the scheduler thread down with it.
        if r.task is not None:
            try:
                r.task.close()
            except BaseException:
                pass

    def _prefill_step(self, r: Request, chunk: int | None) -> int:
        """Evaluates up to `chunk` (None: all) of r's prompt tokens; the last chunk also samples
        r's first token. Returns how many tokens were evaluated."""
        slot = r.slot
        try:
            if r.pending is None:   # the first chunk: reuse the slot's cached prefix
                reused = slot.reuse(r.ids)
                r.info.n_reused_tokens = reused
                self.stats.prompt_tokens += len(r.ids)
                self.stats.reused_tokens += reused
                for t in r.ids[:reused]:
                    r.sampler.accept(t)
                r.pending = r.ids[reused:]
            if chunk is not None and len(r.pending) > chunk:
                part = r.pending[:chunk]
                slot.ctx.eval(np.asarray(part, np.int32), False)
                slot.cached.extend(part)
                for t in part:
                    r.sampler.accept(t)
                r.pending = r.pending[chunk:]
                return len(part)
            n = len(r.pending)
            self._sample_step(r)
            return n
        except BaseException as e:
            self._fail(r, e)
            return 0

    def _decode_step(self, requests: list[Request]) -> None:
        """One token for each decoding request, in one batched forward pass (the weights are read
        once per step for every slot: _core.Context.decode_batch), n_batch slots at a time. Each
        slot gets exactly the logits its own decode step would give."""
        self.stats.decode_steps += 1
        if len(requests) == 1 or not self.batched:
            for r in requests:
                try:
                    self._sample_step(r)
                except BaseException as e:
                    self._fail(r, e)
            return
        lead = self.slots[0].ctx
        for start in range(0, len(requests), self.max_batch):
            group = requests[start:start + self.max_batch]
            try:
                masks = [r.constraint.mask() if r.constraint is not None else None for r in group]
                tokens = np.asarray([r.pending[0] for r in group], np.int32)
                sampled = lead.decode_batch([r.slot.ctx for r in group], tokens, [r.sampler for r in group], masks)
            except BaseException as e:
                for r in group:   # the cache advanced iff the forward pass finished
                    if r.slot.ctx.n_past == len(r.slot.cached) + 1:
                        r.slot.cached.append(r.pending[0])
                    self._fail(r, e)
                continue
            for r, token in zip(group, sampled):
                r.slot.cached.append(r.pending[0])
                lp = None
                if r.top_logprobs is not None:
                    lp = _log_softmax_entry(r.slot.ctx.last_logits(), token, r.top_logprobs)
                self._emit(r, int(token), lp)

    def _sample_step(self, r: Request) -> None:
        """Evaluates r.pending in r's slot, samples the next token and emits it."""
        slot = r.slot
        allowed = r.constraint.mask() if r.constraint is not None else None
        token = slot.ctx.eval_sample(np.asarray(r.pending, np.int32), r.sampler, allowed)
        slot.cached.extend(r.pending)
        lp = None
        if r.top_logprobs is not None:
            lp = _log_softmax_entry(slot.ctx.last_logits(), token, r.top_logprobs)
        self._emit(r, int(token), lp)

    def _emit(self, r: Request, token: int, lp) -> None:
        now = time.monotonic()
        if r.t_first is None:
            r.t_first = now
        if token in self.eog:
            self._done(r, "stop")
            return
        r.produced += 1
        self.stats.generated_tokens += 1
        self._recent.append((now, 1))
        if r.constraint is not None:
            r.constraint.advance(token)
        r.push((token, lp))
        if r.constraint is not None and r.constraint.done:
            self._done(r, "stop")   # the grammar is complete: nothing may follow
        elif r.produced >= r.limit or r.slot.ctx.n_past >= self.n_ctx:
            self._done(r, "length")
        else:
            r.pending = [token]
            r.state = DECODE

    def _done(self, r: Request, reason: str) -> None:
        self.stats.finished[reason] += 1
        r.finish(reason)

    def _task_step(self, r: Request) -> None:
        try:
            if r.task is None:
                r.task = r.task_factory(r.slot, r)
            item = next(r.task)
            if item is not None:   # a generated token from a generation task
                r.produced += 1
                self.stats.generated_tokens += 1
                self._recent.append((time.monotonic(), 1))
                if r.t_first is None:
                    r.t_first = time.monotonic()
                r.push((int(item), None))
        except StopIteration as stop:
            r.result = stop.value
            if r.info.finish_reason is not None:
                self.stats.finished[r.info.finish_reason] += 1
            r.finish()
        except BaseException as e:
            self._fail(r, e)


# Engines still running at interpreter exit are stopped first (a daemon thread inside C++ while
# the interpreter finalizes would hang when it next takes the GIL).
_live_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def _close_all() -> None:
    for engine in list(_live_engines):
        try:
            engine.close()
        except Exception:
            pass


import atexit  # noqa: E402

atexit.register(_close_all)
