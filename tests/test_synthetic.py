"""The random-weight benchmark models (pyllm/synthetic.py), on a tiny shape: the F16 file is a real
Llama GGUF that loads and gives finite, input-dependent logits; it is made once; `pyllm quantize`
turns it into Q4_K_M with the K-quant types at 256-multiple widths; unknown names are refused."""
import os

import numpy as np
import pytest

import pyllm
from pyllm import synthetic
from pyllm.errors import QuantizeError
from pyllm.gguf import GGUFFile

TINY = synthetic.Shape(n_embd=256, n_layer=2, n_ff=512, n_head=4, n_head_kv=2, tied=True)


def test_shapes_are_the_real_ones():
    # Llama-3.2-1B / 3B / Llama-3.1-8B's config.json figures.
    assert synthetic.SHAPES["llama-1b"] == synthetic.Shape(2048, 16, 8192, 32, 8, True)
    assert synthetic.SHAPES["llama-3b"] == synthetic.Shape(3072, 28, 8192, 24, 8, True)
    assert synthetic.SHAPES["llama-8b"] == synthetic.Shape(4096, 32, 14336, 32, 8, False)


def test_tiny_synthetic_model_is_made_once_quantizes_and_runs(tmp_path, monkeypatch, smollm2_path):
    monkeypatch.setenv("PYLLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(synthetic.SHAPES, "tiny", TINY)
    path = synthetic.ensure("tiny", "Q4_K_M", tokenizer_src=smollm2_path)
    f16 = tmp_path / "synthetic" / "tiny.F16.gguf"
    assert path == tmp_path / "synthetic" / "tiny.Q4_K_M.gguf" and f16.exists()
    with GGUFFile(f16) as gf:
        assert gf.get("llama.embedding_length") == 256 and gf.get("llama.block_count") == 2
        assert len(gf.get("tokenizer.ggml.tokens")) == 49152
        w = gf.tensor_array("blk.1.ffn_down.weight").astype(np.float32)
        assert w.shape == (256, 512) and abs(w.std() * np.sqrt(512) - 1.0) < 0.05  # N(0, 1/fan_in)
    with GGUFFile(path) as gf:
        types = {name: info["type"] for name, info in gf.tensors.items()}
    assert types["blk.0.attn_q.weight"] == 12 and types["blk.1.ffn_down.weight"] == 14  # Q4_K; Q6_K in the last layer (llama.cpp's use_more_bits)
    # Made once: a second call reuses both files.
    stamps = (f16.stat().st_mtime_ns, path.stat().st_mtime_ns)
    assert synthetic.ensure("tiny", "Q4_K_M", tokenizer_src=smollm2_path) == path
    assert (f16.stat().st_mtime_ns, path.stat().st_mtime_ns) == stamps
    for p in (f16, path):
        m = pyllm.Model(str(p), n_threads=1)
        a, b = m.logits(m.tokenize("Hello there")), m.logits(m.tokenize("A different prompt"))
        assert np.isfinite(a).all() and np.isfinite(b).all()
        assert not np.allclose(a[-1], b[-1])  # the logits depend on the input
        m.close()


def test_unknown_shape_and_type_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLLM_CACHE_DIR", str(tmp_path))
    with pytest.raises(synthetic.SyntheticError, match="llama-1b"):
        synthetic.ensure("llama-70b")
    with pytest.raises(QuantizeError, match="Q9_Z"):
        synthetic.ensure("llama-1b", "Q9_Z")
    assert not (tmp_path / "synthetic").exists() or not any((tmp_path / "synthetic").iterdir())


def test_k_quant_model_repacks_and_matches_the_file_layout(tmp_path, monkeypatch, smollm2_path):
    """At 256-multiple widths Q4_K_M's Q4_K and Q6_K matrices (the tied Q6_K output/embedding
    included) are repacked to the x8 layout where the ISA has it, changing only the float summation
    order: logits agree with the file-layout run (bound as tests/test_model.py's x8 check)."""
    from pyllm import _core
    monkeypatch.setenv("PYLLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(synthetic.SHAPES, "tiny", TINY)
    path = synthetic.ensure("tiny", "Q4_K_M", tokenizer_src=smollm2_path)
    with pyllm.Model(str(path), n_ctx=64, n_threads=2) as m:
        ids = m.tokenize("The capital of France is Paris, and the capital of Italy is")
        repacked, weight_bytes = m.repacked_bytes, m.weight_bytes
        got = m.logits(ids)
    monkeypatch.setenv("PYLLM_REPACK", "0")
    with pyllm.Model(str(path), n_ctx=64, n_threads=2) as m:
        want = m.logits(ids)
    if {12, 14} <= set(_core.x8_types(_core.isa())):
        assert repacked > 0.95 * weight_bytes
    if _core.isa() == "ref":
        np.testing.assert_array_equal(got, want)
    assert (np.abs(got - want).max(1) / want.std()).max() < 0.3
