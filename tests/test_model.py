"""Model API behaviour and the runtime faults of docs/RELIABILITY.md (cases 19-24)."""
import _thread
import threading
import time

import numpy as np
import pytest

import pyllm
from pyllm import ContextOverflowError, InvalidTokenError


@pytest.fixture(scope="module")
def model(smollm2_path):
    with pyllm.Model(smollm2_path, n_ctx=128) as m:
        yield m


def test_metadata_and_config(model):
    assert model.config.arch == "llama"
    assert model.config.n_layer == 30 and model.config.n_head == 9 and model.config.n_head_kv == 3
    assert model.metadata["tokenizer.ggml.pre"] == "smollm"
    assert model.n_vocab == 49152


def test_logits_shape_and_prefix_consistency(model):
    ids = model.tokenize("The quick brown fox jumps over the lazy dog.")
    full = model.logits(ids)
    assert full.shape == (len(ids), model.n_vocab) and full.dtype == np.float32
    assert np.isfinite(full).all()
    # Causality: the logits of a prefix do not depend on what follows it.
    part = model.logits(ids[:4])
    np.testing.assert_allclose(part, full[:4], rtol=0, atol=1e-3)


def test_prompt_longer_than_context_raises_before_compute(model):
    ids = [100] * (model.n_ctx + 1)
    with pytest.raises(ContextOverflowError) as e:
        model.generate(ids, max_tokens=1)
    assert str(model.n_ctx + 1) in str(e.value) and str(model.n_ctx) in str(e.value)
    with pytest.raises(ContextOverflowError):
        model.logits(ids)
    assert isinstance(e.value, ValueError)


def test_generation_at_the_limit_ends_with_length(model):
    ids = [100] * (model.n_ctx - 3)
    info = pyllm.Completion()
    out = list(model.generate_tokens(ids, max_tokens=50, sampling=pyllm.SamplingParams(temperature=0), info=info))
    assert info.finish_reason == "length"
    assert len(out) <= 4


def test_max_tokens_and_finish_reason(model):
    info = pyllm.Completion()
    text = model.generate("Once upon a time", max_tokens=5, temperature=0, info=info)
    assert info.finish_reason == "length" and len(info.token_ids) == 5
    assert text == model.detokenize(info.token_ids)


def test_stream_concatenation_equals_full_text(model):
    full = model.generate("Once upon a time", max_tokens=12, temperature=0)
    pieces = list(model.generate("Once upon a time", max_tokens=12, temperature=0, stream=True))
    assert "".join(pieces) == full and len(pieces) > 1


def test_seed_makes_sampling_reproducible(model):
    a = model.generate("The weather today", max_tokens=10, temperature=1.0, seed=42)
    b = model.generate("The weather today", max_tokens=10, temperature=1.0, seed=42)
    assert a == b


def test_stop_string_is_held_back_and_never_leaks(model):
    full = model.generate("The capital of France is", max_tokens=12, temperature=0)
    assert "." in full
    cut = model.generate("The capital of France is", max_tokens=12, temperature=0, stop=["."])
    assert cut == full[:full.index(".")]
    assert "".join(model.generate("The capital of France is", max_tokens=12, temperature=0, stop=["."], stream=True)) == cut


def test_invalid_token_ids(model):
    with pytest.raises(InvalidTokenError):
        model.detokenize([-1])
    with pytest.raises(InvalidTokenError):
        model.detokenize([model.n_vocab])
    with pytest.raises(InvalidTokenError):
        model.logits([1, model.n_vocab])
    with pytest.raises(InvalidTokenError):
        model.generate([5, -3], max_tokens=1)


def test_prompts_with_broken_text_do_not_crash(model):
    for prompt in ["\udcff lone surrogate", "nul \x00 byte", "\ud83d half emoji", b"\xff\xfe broken utf-8"]:
        ids = model.tokenize(prompt)
        assert all(0 <= i < model.n_vocab for i in ids)
        model.generate(ids or [1], max_tokens=2, temperature=0)


def test_prefix_reuse_evaluates_only_new_tokens(model):
    info = pyllm.Completion()
    model.generate("Hello there, my friend", max_tokens=3, temperature=0, info=info)
    info2 = pyllm.Completion()
    model.generate("Hello there, my friend. How", max_tokens=3, temperature=0, info=info2)
    assert info2.n_reused_tokens >= len(model.tokenize("Hello there, my friend")) - 1
    # Reuse gives the same result as a cold cache.
    warm = model.generate("Hello there, my friend. How", max_tokens=6, temperature=0)
    model.logits([1])  # reset the cache to something unrelated
    cold = model.generate("Hello there, my friend. How", max_tokens=6, temperature=0)
    assert warm == cold


def test_ctrl_c_during_generation_returns_promptly_and_model_stays_usable(model):
    baseline = model.generate("One two three", max_tokens=6, temperature=0)
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        while True:  # a generation can end (end of text, full context) before the timer fires
            for _ in model.generate("Count forever:", max_tokens=10_000, temperature=0, stream=True):
                pass
    assert time.monotonic() - start < 30  # generous: only checks that it came back at all
    timer.cancel()
    assert model.generate("One two three", max_tokens=6, temperature=0) == baseline


def test_ctrl_c_during_prompt_processing(model):
    timer = threading.Timer(0.05, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in range(200):
                model.logits(list(range(100, 100 + model.n_ctx)))
    finally:
        timer.cancel()
    assert model.logits([1, 2, 3]).shape == (3, model.n_vocab)


def test_calls_from_several_threads_are_serialized(model):
    expected = model.generate("Hello", max_tokens=4, temperature=0)
    results, errors = [], []

    def work():
        try:
            results.append(model.generate("Hello", max_tokens=4, temperature=0))
        except Exception as e:  # pragma: no cover - a failure shows up in the assert
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [expected] * 4


def test_absurd_context_is_refused_up_front(smollm2_path):
    with pytest.raises(ValueError, match="n_ctx"):
        pyllm.Model(smollm2_path, n_ctx=50_000_000)


def test_unknown_model_name(tmp_path):
    with pytest.raises(pyllm.ModelNotFoundError):
        pyllm.Model("no-such-model")


def test_unsupported_architecture(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "gpt9.gguf"
    w = gguf.GGUFWriter(str(path), "gpt9")
    w.add_tensor("x", np.zeros(32, np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(pyllm.UnsupportedModelError, match="gpt9.*llama"):
        pyllm.Model(path)


def test_system_info():
    info = pyllm.system_info()
    assert info["isa"] in info["available_isas"] and info["default_threads"] >= 1


def test_repacked_weights_match_the_file_layout(smollm2_path, monkeypatch):
    """Load-time x8 repacking (Q4_1 layers, the tied Q8_0 embedding/output) changes only the float
    summation order, so logits agree with the file-layout run as closely as two ISAs' plain kernels
    do (~0.1 std after 30 layers of 8-bit activation rounding); the reference ISA's are identical."""
    from pyllm import _core
    with pyllm.Model(smollm2_path, n_ctx=64, n_threads=2) as m:
        ids = m.tokenize("The capital of France is Paris, and the capital of Italy is")
        repacked, weight_bytes = m.repacked_bytes, m.weight_bytes
        got = m.logits(ids)
    monkeypatch.setenv("PYLLM_REPACK", "0")
    with pyllm.Model(smollm2_path, n_ctx=64, n_threads=2) as m:
        assert m.repacked_bytes == 0
        want = m.logits(ids)
    if not _core.x8_types(_core.isa()):
        assert repacked == 0
        return
    assert repacked > 0.95 * weight_bytes  # every matrix, the tied output included
    if _core.isa() == "ref":
        np.testing.assert_array_equal(got, want)
    assert (np.abs(got - want).max(1) / want.std()).max() < 0.3
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.05 * want.std()
    assert (got.argmax(1) == want.argmax(1))[clear].all()


def test_long_context_decode_step_matches_prefill(smollm2_path):
    """A decode step at a long context splits each KV head's positions across threads and merges
    the partial softmaxes; its logits must agree with the batched (unsplit) evaluation."""
    with pyllm.Model(smollm2_path, n_ctx=1024, n_threads=2) as m:
        ids = m.tokenize(" ".join(["The quick brown fox jumps over the lazy dog."] * 60))[:700]
        full = m.logits(ids)
        m.context().truncate(0)
        m.context().eval(np.array(ids[:-3], np.int32), False)
        steps = np.stack([m.context().eval(np.array([t], np.int32), False) for t in ids[-3:]])
    err = np.abs(steps - full[-3:]).max(1) / full[-3:].std()
    assert err.max() < 0.1, err
    assert (steps.argmax(1) == full[-3:].argmax(1)).all()


def test_load_errors_come_out_in_the_sequential_order(smollm2_path, monkeypatch):
    """The weights load on a second thread while the tokenizer is built: an error of either
    reaches the caller as its own typed exception, the tokenizer's first, as a sequential load
    would meet them."""
    from pyllm import _core, model as pm
    from pyllm.errors import TokenizerError

    class BadWeights:
        def __getattr__(self, name):
            return getattr(_core, name)

        def Model(self, *args, **kwargs):
            raise pyllm.GGUFError("tensor 'blk.0.attn_q.weight' has a bad shape")

    monkeypatch.setattr(pm, "_core", BadWeights())
    with pytest.raises(pyllm.GGUFError, match="blk.0.attn_q.weight"):
        pyllm.Model(smollm2_path, n_ctx=64)

    def bad_tokenizer(md):
        raise TokenizerError("tokenizer metadata: bad merges")
    monkeypatch.setattr(pm.Tokenizer, "from_metadata", staticmethod(bad_tokenizer))
    with pytest.raises(TokenizerError, match="bad merges"):
        pyllm.Model(smollm2_path, n_ctx=64)
