"""Perplexity and KL-divergence (pyllm.perplexity): the arithmetic on a small deterministic fake
model, and llama-perplexity's number on the real model (tests/data/reference.json)."""
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pyllm.perplexity import SavedLogprobs, log_softmax, main, perplexity

DATA = Path(__file__).parent / "data"


class FakeModel:
    """Logits that depend on the current and previous token (so chunking matters), no network."""

    def __init__(self, n_vocab=64, seed=0, n_ctx=64, wobble=0.0):
        rng = np.random.default_rng(seed)
        self.n_vocab, self.n_ctx, self.n_threads = n_vocab, n_ctx, 1
        self.a = rng.standard_normal((n_vocab, n_vocab)) * 2
        self.b = rng.standard_normal((n_vocab, n_vocab))
        self.a += wobble * rng.standard_normal((n_vocab, n_vocab))
        self.tokenizer = SimpleNamespace(add_bos=False, bos_id=None)
        self.calls = []

    def tokenize(self, text, add_bos=False):
        return [ord(c) % self.n_vocab for c in text]

    def logits(self, ids):
        ids = np.asarray(ids)
        self.calls.append(len(ids))
        prev = np.concatenate([[0], ids[:-1]])
        return (self.a[ids] + 0.5 * self.b[prev]).astype(np.float32)


TEXT = "".join(chr(32 + (i * 7919 % 89)) for i in range(1000))


def direct_nll(model, ids, ctx):
    out = []
    for c in range(len(ids) // ctx):
        chunk = ids[c * ctx:(c + 1) * ctx]
        lp = log_softmax(model.logits(chunk))
        for j in range(ctx // 2, ctx - 1):
            out.append(-lp[j, chunk[j + 1]])
    return np.array(out)


def test_perplexity_is_llama_perplexity_arithmetic():
    m = FakeModel()
    ids = m.tokenize(TEXT)
    res = perplexity(m, TEXT, ctx=32, chunks=5)
    nll = direct_nll(m, ids[:5 * 32], 32)
    assert res.n_chunks == 5 and res.n_scored == 5 * 15 == len(nll)
    assert m.calls == [32] * 5 + [32] * 5        # one evaluation per chunk (plus ours above)
    assert res.ppl == pytest.approx(math.exp(nll.mean()), rel=1e-12)
    assert res.ppl_running[0] == pytest.approx(math.exp(nll[:15].mean()), rel=1e-12)
    assert len(res.ppl_running) == 5 and res.kl is None
    # Chunks beyond the text are not invented.
    assert perplexity(m, TEXT, ctx=32).n_chunks == len(ids) // 32


def test_kl_against_itself_is_zero_and_against_another_is_exact():
    m, other = FakeModel(), FakeModel(wobble=0.3)
    same = perplexity(m, TEXT, ctx=32, chunks=4, kl_base=FakeModel())
    assert same.kl.mean_kld == pytest.approx(0.0, abs=1e-12) and same.kl.same_top1 == 1.0
    assert same.kl.delta_ppl == pytest.approx(0.0, abs=1e-9)
    res = perplexity(other, TEXT, ctx=32, chunks=4, kl_base=m)
    ids = m.tokenize(TEXT)[:4 * 32]
    p_all, q_all, top = [], [], []
    for c in range(4):
        chunk = ids[c * 32:(c + 1) * 32]
        p = log_softmax(m.logits(chunk))[16:31]
        q = log_softmax(other.logits(chunk))[16:31]
        p_all.append((np.exp(p) * (p - q)).sum(-1))
        top.append(p.argmax(-1) == q.argmax(-1))
    kld = np.concatenate(p_all)
    assert res.kl.mean_kld == pytest.approx(kld.mean(), rel=1e-9)
    assert res.kl.p99_kld == pytest.approx(np.percentile(kld, 99), rel=1e-9)
    assert res.kl.same_top1 == pytest.approx(np.concatenate(top).mean())
    assert res.kl.base_ppl == pytest.approx(perplexity(m, TEXT, ctx=32, chunks=4).ppl)
    assert 0 < res.kl.same_top1 < 1 and res.kl.mean_kld > 0.01 and res.kl.exact


def test_saved_base_top_k_and_full(tmp_path):
    base, m = FakeModel(), FakeModel(wobble=0.3)
    exact = perplexity(m, TEXT, ctx=32, chunks=4, kl_base=base).kl
    for k in (0, 8, 64):
        path = tmp_path / f"base{k}.npz"
        b = perplexity(base, TEXT, ctx=32, chunks=4, save_logprobs=path, top_k=k)
        got = perplexity(m, TEXT, ctx=32, chunks=4, kl_base=str(path)).kl
        assert got.base_ppl == pytest.approx(b.ppl, rel=1e-6)
        assert got.same_top1 == exact.same_top1
        if k == 0:    # float16 log-probs: close to exact
            assert got.exact and got.mean_kld == pytest.approx(exact.mean_kld, rel=1e-2)
        elif k == 64:  # every token kept: exact up to float32
            assert got.mean_kld == pytest.approx(exact.mean_kld, rel=1e-5)
        else:          # top-k plus a rest bucket: a lower bound, and not a loose one here
            assert not got.exact and 0.5 * exact.mean_kld < got.mean_kld <= exact.mean_kld + 1e-9
    kept = perplexity(base, TEXT, ctx=32, chunks=4, keep_logprobs=True).logprobs
    assert isinstance(kept, SavedLogprobs)
    assert perplexity(m, TEXT, ctx=32, chunks=4, kl_base=kept).kl.mean_kld == pytest.approx(exact.mean_kld, rel=1e-6)
    with pytest.raises(ValueError, match="same text"):
        perplexity(m, TEXT[5:], ctx=32, chunks=4, kl_base=str(tmp_path / "base8.npz"))


def test_bad_arguments():
    m = FakeModel(n_ctx=16)
    with pytest.raises(ValueError, match="n_ctx"):
        perplexity(m, TEXT, ctx=32)
    with pytest.raises(ValueError, match="at least"):
        perplexity(FakeModel(), "short", ctx=32)
    with pytest.raises(ValueError, match="even"):
        perplexity(FakeModel(), TEXT, ctx=31)


def test_real_model_matches_llama_cpp_two_chunks(smollm2_path, fixture_json):
    # llama-perplexity's running value after 2 chunks of 512 on the same text, within 1%.
    import pyllm
    ref = fixture_json("reference.json")
    text = (DATA / "wikitext2_test_16x512.txt").read_bytes().decode("utf-8")
    with pyllm.Model(smollm2_path, n_ctx=512) as m:
        ids = m.tokenize(text)
        assert ids[:64] == ref["corpus_tokens_first_64"]
        res = perplexity(m, ids, ctx=512, chunks=2)
    assert res.n_scored == 2 * 255
    assert res.ppl_running[0] == pytest.approx(ref["ppl_running"][0], rel=0.01)
    assert res.ppl == pytest.approx(ref["ppl_running"][1], rel=0.01)


# 16 chunks of 512 tokens: ~15 s on 2 cores now, so part of the default run.
def test_real_model_matches_llama_cpp_sixteen_chunks(smollm2_path, fixture_json, capsys):
    ref = fixture_json("reference.json")
    rc = main([str(smollm2_path), "-f", str(DATA / "wikitext2_test_16x512.txt"), "--chunks", "16", "--json"])
    assert rc == 0
    import json
    out = json.loads(capsys.readouterr().out)
    assert out["n_chunks"] == 16
    assert out["ppl"] == pytest.approx(ref["ppl"], rel=0.01)
    assert np.allclose(out["ppl_running"], ref["ppl_running"], rtol=0.01)


from test_quantize_gptq import tiny_model  # noqa: E402,F401  (a small real GGUF llama)


def test_command_line_with_saved_base(tiny_model, tmp_path, capsys):
    import json
    text = DATA / "wikitext_head.txt"
    base = tmp_path / "base.npz"
    assert main([str(tiny_model), "-f", str(text), "--ctx", "64", "--chunks", "3", "--save-logprobs", str(base),
                 "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["n_chunks"] == 3 and first["n_scored"] == 3 * 31 and "kl" not in first
    assert main([str(tiny_model), "-f", str(text), "--ctx", "64", "--chunks", "3", "--kl-base", str(base)]) == 0
    out = capsys.readouterr().out
    assert f"perplexity: {first['ppl']:.4f}" in out
    assert re.search(r"mean KLD: 0\.0000", out) and "same top-1 token: 100.00%" in out
