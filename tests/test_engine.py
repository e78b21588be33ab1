"""The generation engine (pyllm/generate/engine.py) under concurrency, through the public Python API.

Issue 13's cases: a stream finished on another thread once raised 'cannot release un-acquired
lock'; two streams consumed alternately on one thread corrupted each other; an unfinished stream
blocked every other caller. Every output here is compared with the same request's output when
run alone (greedy, or seeded sampling): a slot's evaluation does not depend on what the others do
(the kernels are batch-invariant: a prompt evaluated in chunks gives the same logits as in one go).
"""
import gc
import inspect
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pyllm
from pyllm import _core
from pyllm.generate.engine import DEFAULT_SAMPLING, QueueFullError, SamplingParams

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colors are",
    "My favourite food is",
    "In 1969, astronauts",
    "The best way to learn a language is",
    "Water boils at",
]
N_TOKENS = 12


@pytest.fixture(scope="module")
def model(smollm2_path):
    with pyllm.Model(smollm2_path, n_ctx=256, n_parallel=4) as m:
        yield m


@pytest.fixture(scope="module")
def alone(model):
    """Each prompt's greedy output when it runs alone (the reference)."""
    return {p: model.generate(p, max_tokens=N_TOKENS, temperature=0) for p in PROMPTS}


def test_eight_threads_each_get_their_own_greedy_output(model, alone):
    results, errors = {}, []
    barrier = threading.Barrier(len(PROMPTS))

    def work(prompt):
        try:
            barrier.wait()
            results[prompt] = model.generate(prompt, max_tokens=N_TOKENS, temperature=0)
        except Exception as e:  # pragma: no cover - shows in the assert
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert results == alone
    # More requests than slots: some waited, and the engine never made more slots than asked.
    assert sum(s is not None for s in model.engine.slots) <= 4


def test_seeded_sampling_is_the_same_under_concurrency(model):
    """Each request has its own sampler and seed: sampling is as reproducible as greedy."""
    kw = dict(max_tokens=N_TOKENS, temperature=0.9, seed=1234)
    ref = [model.generate(p, **kw) for p in PROMPTS[:4]]
    streams = [model.generate(p, stream=True, **kw) for p in PROMPTS[:4]]
    outs = [[] for _ in streams]
    live = list(range(len(streams)))
    while live:   # round-robin on one thread
        for i in list(live):
            piece = next(streams[i], None)
            if piece is None:
                live.remove(i)
            else:
                outs[i].append(piece)
    assert ["".join(o) for o in outs] == ref


def test_two_streams_consumed_alternately_on_one_thread(model, alone):
    a = model.generate(PROMPTS[0], max_tokens=N_TOKENS, temperature=0, stream=True)
    b = model.generate(PROMPTS[1], max_tokens=N_TOKENS, temperature=0, stream=True)
    out_a, out_b = [], []
    for x, y in zip(a, b):
        out_a.append(x)
        out_b.append(y)
    out_a.extend(a)
    out_b.extend(b)
    assert "".join(out_a) == alone[PROMPTS[0]]
    assert "".join(out_b) == alone[PROMPTS[1]]


def test_interleaved_streams_with_a_single_slot_do_not_deadlock(smollm2_path):
    """One slot: the second stream waits in the queue while the first runs to its end into its
    own queue, so reading the second one first cannot deadlock."""
    with pyllm.Model(smollm2_path, n_ctx=128, n_parallel=1) as m:
        ref = [m.generate(p, max_tokens=8, temperature=0) for p in PROMPTS[:2]]
        a = m.generate(PROMPTS[0], max_tokens=8, temperature=0, stream=True)
        b = m.generate(PROMPTS[1], max_tokens=8, temperature=0, stream=True)
        assert "".join(b) == ref[1]
        assert "".join(a) == ref[0]


def test_stream_started_on_one_thread_finished_on_another(model, alone):
    stream = model.generate(PROMPTS[2], max_tokens=N_TOKENS, temperature=0, stream=True)
    first = next(stream)
    rest, errors = [], []

    def finish():
        try:
            rest.extend(stream)
        except Exception as e:  # pragma: no cover - the old RLock raised here
            errors.append(e)

    t = threading.Thread(target=finish)
    t.start()
    t.join(60)
    assert not errors
    assert first + "".join(rest) == alone[PROMPTS[2]]
    # And the model is still usable from this thread and others.
    assert model.generate(PROMPTS[3], max_tokens=N_TOKENS, temperature=0) == alone[PROMPTS[3]]


def _wait_for(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_abandoned_stream_frees_its_slot(smollm2_path):
    """A stream read once and dropped (and one never read) is cancelled: its slot serves the
    next request long before its max_tokens would have run out."""
    with pyllm.Model(smollm2_path, n_ctx=512, n_parallel=1) as m:
        expected = m.generate(PROMPTS[0], max_tokens=6, temperature=0)
        eng = m.engine
        before_tokens = eng.stats.generated_tokens
        cancelled = eng.stats.cancelled
        s = m.generate("Count from one to a thousand:", max_tokens=400, temperature=0, stream=True)
        next(s)
        del s
        gc.collect()
        m.generate("Never read", max_tokens=400, temperature=0, stream=True)   # dropped at once
        gc.collect()
        assert _wait_for(lambda: eng.stats.cancelled >= cancelled + 2)
        assert m.generate(PROMPTS[0], max_tokens=6, temperature=0) == expected
        # Far fewer than the 800 tokens the two abandoned requests asked for were generated.
        assert eng.stats.generated_tokens - before_tokens < 200
        assert eng.snapshot()["active"] == 0 and eng.snapshot()["queue_depth"] == 0


def test_closed_stream_cancels_and_the_counts_say_so(model):
    info = pyllm.Completion()
    tokens = model.generate_tokens(model.tokenize("Once upon a time, in a land far away,"), max_tokens=200,
                                   sampling=SamplingParams(temperature=0), info=info)
    got = [next(tokens) for _ in range(3)]
    tokens.close()
    assert len(got) == 3
    assert list(tokens) == []   # a closed stream is exhausted
    assert _wait_for(lambda: model.engine.snapshot()["active"] == 0)


def test_shared_prefix_is_reused_from_the_slot_that_holds_it(model):
    system = "You are a terse assistant who answers in one short sentence. " * 4
    first = pyllm.Completion()
    model.generate(system + "What is two plus two?", max_tokens=4, temperature=0, info=first)
    # Occupy other slots with unrelated work meanwhile, so the choice of slot matters.
    others = [model.generate(p, max_tokens=4, temperature=0, stream=True) for p in PROMPTS[4:6]]
    second = pyllm.Completion()
    model.generate(system + "What colour is the sky?", max_tokens=4, temperature=0, info=second)
    for s in others:
        list(s)
    n_system = len(model.tokenize(system, special=True))
    assert second.n_reused_tokens >= n_system - 2, (second.n_reused_tokens, n_system)


def test_long_prompt_prefills_in_chunks_while_others_stream(model):
    """A prompt longer than the engine's prefill chunk, submitted while another stream runs:
    both equal their outputs alone (chunked prefill changes nothing)."""
    long_prompt = "The history of the printing press begins " + "with many careful steps " * 30
    ref_long = model.generate(long_prompt, max_tokens=6, temperature=0)
    ref_short = model.generate(PROMPTS[1], max_tokens=40, temperature=0)
    short = model.generate(PROMPTS[1], max_tokens=40, temperature=0, stream=True)
    head = next(short)
    chunks_before = model.engine.prefill_chunk
    assert len(model.tokenize(long_prompt)) > chunks_before
    assert model.generate(long_prompt, max_tokens=6, temperature=0) == ref_long
    assert head + "".join(short) == ref_short


def test_logprobs_are_the_model_log_softmax(model):
    info = pyllm.Completion()
    ids = model.tokenize("The capital of France is")
    out = list(model.generate_tokens(ids, max_tokens=4, sampling=SamplingParams(temperature=0), info=info,
                                     logprobs=3))
    assert len(info.logprobs) == len(out)
    logits = model.logits(ids + out[:-1])[len(ids) - 1:]
    for row, token, (lp, top) in zip(logits, out, info.logprobs):
        ref = row.astype(np.float64) - np.log(np.exp(row - row.max()).sum()) - row.max()
        assert lp == pytest.approx(ref[token], abs=1e-4)
        assert [t for t, _ in top] == list(np.argsort(-ref, kind="stable")[:3])
        assert top[0][0] == token   # greedy picks the most likely


def test_queue_limit_raises_queue_full(smollm2_path):
    with pyllm.Model(smollm2_path, n_ctx=128, n_parallel=1, max_queue=1) as m:
        a = m.generate("Once", max_tokens=60, temperature=0, stream=True)
        next(a)   # running: the queue is empty again
        b = m.generate("Twice", max_tokens=60, temperature=0, stream=True)   # waits in the queue
        with pytest.raises(QueueFullError):
            m.generate("Thrice", max_tokens=5, temperature=0)
        a.close()
        b.close()


def test_close_ends_streams_in_flight(smollm2_path):
    m = pyllm.Model(smollm2_path, n_ctx=128)
    s = m.generate("Once upon a time", max_tokens=100, temperature=0, stream=True)
    next(s)
    m.close()
    with pytest.raises(ValueError, match="closed"):
        for _ in s:
            pass
    with pytest.raises(ValueError, match="closed"):
        m.generate("x", max_tokens=1)


def test_dropping_the_model_stops_its_engine_thread(smollm2_path):
    m = pyllm.Model(smollm2_path, n_ctx=64)
    m.generate("Hi", max_tokens=2, temperature=0)
    thread = m.engine._thread
    assert thread.is_alive()
    del m
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()


def test_sampling_defaults_have_one_source():
    """The C++ sampler's defaults are SamplingParams', which are every signature's."""
    cpp = _core.sampler_defaults()
    d = SamplingParams()
    for name, value in cpp.items():
        assert getattr(d, name) == pytest.approx(value, rel=1e-6), name
    from pyllm.chat import completions
    from pyllm.model import Model
    for fn in (Model.generate, completions.create_completion, completions.create_chat_completion):
        params = inspect.signature(fn).parameters
        for name in ("temperature", "top_k", "top_p", "min_p", "repeat_penalty"):
            assert params[name].default == getattr(DEFAULT_SAMPLING, name), (fn.__name__, name)
    from pyllm.cli import build_parser
    args = build_parser("run").parse_args(["run", "x"])
    assert (args.temperature, args.top_k, args.top_p, args.min_p) == \
        (d.temperature, d.top_k, d.top_p, d.min_p)


def test_completions_does_not_import_model():
    """No circular import: completions.py works on a Model without importing model.py."""
    code = "import sys, pyllm.chat.completions; print('pyllm.model' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(Path(pyllm.__file__).parent.parent)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --- the batched decode step (continuous batching) and the shared thread pool


def test_decode_batch_gives_each_sequence_its_own_logits_exactly(model):
    """One forward pass for three sequences at different depths equals each one's own decode
    step, bit for bit (rows never mix in the kernels), and advances each cache by one."""
    w = model._model
    lead = _core.Context(w, 64, 16, 2)
    others = [_core.Context(w, 64, 16, 0, share_with=lead) for _ in range(2)]
    ctxs = [lead] + others
    prompts = [model.tokenize(p) for p in ("The capital of France is", "Once upon", "Water boils at one hundred")]
    refs = [_core.Context(w, 64, 16, 2) for _ in ctxs]
    next_tokens = [11, 905, 28]
    expected = []
    for ref, ids, t in zip(refs, prompts, next_tokens):
        ref.eval(np.asarray(ids, np.int32), False)
        expected.append(ref.eval(np.asarray([t], np.int32), False))
    for c, ids in zip(ctxs, prompts):
        c.eval(np.asarray(ids, np.int32), False)
    greedy = [_core.Sampler(model.n_vocab, temperature=0.0) for _ in ctxs]
    sampled = lead.decode_batch(ctxs, np.asarray(next_tokens, np.int32), greedy, [None, None, None])
    for c, ids, exp, tok in zip(ctxs, prompts, expected, sampled):
        assert c.n_past == len(ids) + 1
        np.testing.assert_array_equal(c.last_logits(), exp)
        assert tok == int(np.argmax(exp))


def test_decode_batch_is_exact_where_a_step_splits_its_positions_across_threads(model):
    """The batched attention runs every (sequence, KV head, position range) in one job: at depths
    where a decode step on 2 threads splits its positions into ranges (>= 128 positions: 2..4
    ranges here) and merges their partial softmaxes, each sequence still gets exactly the logits
    of its own decode step (same ranges, same merge order)."""
    w = model._model
    lead = _core.Context(w, 512, 64, 2)
    ctxs = [lead] + [_core.Context(w, 512, 64, 0, share_with=lead) for _ in range(3)]
    rng = np.random.default_rng(7)
    prompts = [rng.integers(100, 20000, size=n).astype(np.int32) for n in (300, 20, 140, 200)]
    refs = [_core.Context(w, 512, 64, 2) for _ in ctxs]
    next_tokens = np.asarray([11, 905, 28, 42], np.int32)
    expected = []
    for ref, ids, t in zip(refs, prompts, next_tokens):
        ref.eval(ids, False)
        expected.append(ref.eval(np.asarray([t], np.int32), False))
    for c, ids in zip(ctxs, prompts):
        c.eval(ids, False)
    greedy = [_core.Sampler(model.n_vocab, temperature=0.0) for _ in ctxs]
    lead.decode_batch(ctxs, next_tokens, greedy, [None] * 4)
    for c, exp in zip(ctxs, expected):
        np.testing.assert_array_equal(c.last_logits(), exp)


def test_decode_batch_refuses_bad_batches_before_any_compute(model, smollm2_path):
    w = model._model
    a = _core.Context(w, 8, 4, 1)
    b = _core.Context(w, 8, 4, 0, share_with=a)
    s = [_core.Sampler(model.n_vocab, temperature=0.0) for _ in range(2)]
    with pytest.raises(ValueError, match="twice"):
        a.decode_batch([a, a], np.asarray([1, 2], np.int32), s, [None, None])
    with pytest.raises(ValueError, match="one entry each"):
        a.decode_batch([a, b], np.asarray([1], np.int32), s, [None, None])
    with pytest.raises(pyllm.InvalidTokenError):
        a.decode_batch([a, b], np.asarray([1, 10**6], np.int32), s, [None, None])
    b.eval(np.arange(8, dtype=np.int32), False)   # b is full
    with pytest.raises(pyllm.ContextOverflowError):
        a.decode_batch([a, b], np.asarray([1, 2], np.int32), s, [None, None])
    assert a.n_past == 0 and b.n_past == 8   # nothing moved
    other = pyllm.Model(smollm2_path, n_ctx=8)
    try:
        with pytest.raises(ValueError, match="not a Context of this model"):
            a.decode_batch([a, other._ctx], np.asarray([1, 2], np.int32), s, [None, None])
    finally:
        other.close()


def test_contexts_sharing_a_scratch_evaluated_from_two_threads_at_once_stay_exact(model, smollm2_path):
    """Contexts made with share_with use one set of forward buffers: two Python threads evaluating
    two of them at the same moment must take turns (one lock), each getting exactly the logits of
    a Context of its own; a Context of another model is refused as a partner."""
    w = model._model
    lead = _core.Context(w, 64, 16, 2)
    other = _core.Context(w, 64, 16, 0, share_with=lead)
    prompts = [np.asarray(model.tokenize(p), np.int32) for p in ("The capital of France is", "Water boils at")]
    expected = []
    for ids in prompts:
        ref = _core.Context(w, 64, 16, 2)
        expected.append([ref.eval(ids[:i + 1][-1:], False).copy() for i in range(len(ids))])
    got = [[], []]

    def run(i, ctx):
        for j in range(len(prompts[i])):
            got[i].append(ctx.eval(prompts[i][j:j + 1], False).copy())

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((lead, other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, e in zip(got, expected):
        assert len(g) == len(e)
        for a, b in zip(g, e):
            np.testing.assert_array_equal(a, b)
    second = pyllm.Model(smollm2_path, n_ctx=8)
    try:
        with pytest.raises(ValueError, match="same model"):
            _core.Context(second._model, 8, 4, 0, share_with=lead)
    finally:
        second.close()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_slots_share_one_thread_pool(smollm2_path):
    """Eight slots start no more threads than one: every slot runs on slot 0's pool (two
    cores must not be oversubscribed by idle pools spinning against the busy one)."""
    def n_threads():
        return len(list(Path("/proc/self/task").iterdir()))

    with pyllm.Model(smollm2_path, n_ctx=64, n_threads=2, n_parallel=8) as m:
        m.generate("Hi", max_tokens=1, temperature=0)   # the engine thread exists now
        before = n_threads()
        streams = [m.generate(p, max_tokens=4, temperature=0, stream=True) for p in PROMPTS]
        for s in streams:
            list(s)
        assert sum(s is not None for s in m.engine.slots) == 8
        assert n_threads() <= before   # (a background thread of the first step may have ended)


def test_a_model_dropped_mid_use_never_hangs_the_process(smollm2_path):
    """Temporaries (a Model used once and dropped, a stream left open at exit) must let the
    process exit: the engine holds no reference to its Model, and close() is safe from the
    scheduler thread itself."""
    code = f"""
import pyllm
pyllm.Model({str(smollm2_path)!r}, n_ctx=64).logits([1, 2, 3])
pyllm.Model({str(smollm2_path)!r}, n_ctx=64).generate("Hi", max_tokens=2, temperature=0, speculative="ngram")
m = pyllm.Model({str(smollm2_path)!r}, n_ctx=64, n_parallel=2)
s = m.generate("Once upon a time", max_tokens=50, temperature=0, stream=True)
next(s)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(Path(pyllm.__file__).parent.parent),
                              "HOME": str(Path.home())})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
