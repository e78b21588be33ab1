"""GPTQ and calibration: XᵀX accumulation against numpy, the solver against plain rounding on
correlated inputs, the one-layer calibration runs against the model's own forward pass, and
`pyllm quantize --method gptq|imatrix` end to end on a tiny llama that uses the real tokenizer."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

import pyllm
import pyllm.quantize as pq
from pyllm import _core
from pyllm.errors import QuantizeError
from pyllm.gguf import GGUFFile
from pyllm.model import ModelConfig
from pyllm.quantize import QuantizeOptions, quantize_file
from test_quantize import small_tensors, write_model

DATA = Path(__file__).parent / "data"
GPTQ_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]


def tid(name):
    return _core.type_from_name(name)


def correlated(rows=48, k=128, n=2048, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((k, k)) * 0.3 + np.eye(k)
    x = (rng.standard_normal((n, k)) @ mix).astype(np.float32)
    x[:, 3] = 0.0  # an input that is never active
    w = rng.standard_normal((rows, k)).astype(np.float32)
    return w, x, x.astype(np.float64).T @ x


def output_error(w, q, x):
    return float((((q.astype(np.float64) - w) @ x.T.astype(np.float64)) ** 2).sum())


# ---------------------------------------------------------------------------------------------
# XᵀX
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("isa", _core.available_isas())
@pytest.mark.parametrize("k,n,batch", [(37, 13, 5), (64, 100, 100), (130, 257, 64)])
def test_hessian_matches_numpy(k, n, batch, isa):
    """Every table's xtx_tile kernel (the reference and this CPU's SIMD) through the accumulator."""
    x = np.random.default_rng(k).standard_normal((n, k)).astype(np.float32)
    ref = x.astype(np.float64).T @ x
    for threads in (1, 2):
        h = _core.hessian(x, False, batch, threads, isa)
        assert h.shape == (k, k) and np.array_equal(h, h.T)
        assert np.allclose(h, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())
    d = _core.hessian(x, True, batch, 1)
    assert np.allclose(d, np.diag(ref), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The solver
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GPTQ_TYPES)
def test_gptq_beats_rounding_on_correlated_inputs(name):
    w, x, h = correlated()
    t = tid(name)
    k = w.shape[1]
    rtn = output_error(w, _core.dequantize(t, _core.quantize(t, w), k), x)
    for act_order in (False, True):
        for search in (False, True):
            q, damp = _core.gptq_quantize(t, w, h, 0.01, 64, act_order, search, 2)
            assert q.shape == (w.shape[0], _core.quantize(t, w[:1]).shape[1]) and damp == pytest.approx(0.01)
            deq = _core.dequantize(t, q, k)
            assert np.isfinite(deq).all()
            assert output_error(w, deq, x) < 0.7 * rtn, (act_order, search)


@pytest.mark.parametrize("name", GPTQ_TYPES)
def test_gptq_with_identity_hessian_is_rounding_on_reference_scales(name):
    # No correlations: nothing to feed forward, so each weight rounds to the nearest level of its
    # block, whose scale (and min) the reference quantizer chose.
    w = np.random.default_rng(1).standard_normal((8, 96)).astype(np.float32)
    t = tid(name)
    q, _ = _core.gptq_quantize(t, w, np.eye(96), 0.0, 32, False, False, 1)
    ref = _core.quantize(t, w)
    bs = ref.shape[1] // 3
    head = 4 if name in ("Q4_1", "Q5_1") else 2
    for b in range(3):
        assert np.array_equal(q[:, b * bs:b * bs + head], ref[:, b * bs:b * bs + head])
    err = lambda z: float(((_core.dequantize(t, z, 96) - w) ** 2).sum())
    assert err(q) <= err(ref) + 1e-9


def test_gptq_blocks_are_invariant_to_block_size_without_correlations():
    w, x, h = correlated(rows=8, k=96, n=512)
    q32, _ = _core.gptq_quantize(tid("Q4_0"), w, h, 0.01, 32, False, True, 1)
    q96, _ = _core.gptq_quantize(tid("Q4_0"), w, h, 0.01, 96, False, True, 2)
    # Lazy batching only reorders the same updates: nearly all levels agree.
    assert (q32 == q96).mean() > 0.97


def test_gptq_raises_when_statistics_cannot_be_factored():
    h = -1000.0 * np.ones((32, 32))
    np.fill_diagonal(h, 1.0)
    with pytest.raises(QuantizeError, match="positive definite"):
        _core.gptq_quantize(tid("Q4_0"), np.ones((2, 32), np.float32), h, 0.01, 32, False, False, 1)
    with pytest.raises(QuantizeError, match="cannot target"):
        _core.gptq_quantize(tid("Q4_K"), np.ones((2, 256), np.float32), np.eye(256), 0.01, 32, False, False, 1)


# ---------------------------------------------------------------------------------------------
# A tiny llama with the real tokenizer
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(smollm2_path, tmp_path_factory):
    real = GGUFFile(smollm2_path)
    md = [(k, v, real.metadata[k]) for k, v in real.metadata_types.items() if k.startswith("tokenizer.")]
    md += [("llama.context_length", "UINT32", 512), ("llama.embedding_length", "UINT32", 64),
           ("llama.feed_forward_length", "UINT32", 96), ("llama.rope.dimension_count", "UINT32", 16),
           ("llama.attention.layer_norm_rms_epsilon", "FLOAT32", 1e-5), ("llama.vocab_size", "UINT32", 49152),
           ("general.name", "STRING", "tiny")]
    t = small_tensors(seed=3, n_vocab=49152)
    rng = np.random.default_rng(4)
    for name in t:
        if name.endswith("norm.weight"):
            t[name] = (1 + 0.1 * rng.standard_normal(t[name].shape)).astype(np.float32)
    return write_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", t, md)


def layer_dict(gf, layer):
    p = f"blk.{layer}."
    return {"blk.0." + k[len(p):]: (v["type"], list(v["shape"]), gf.tensor_bytes(k))
            for k, v in gf.tensors.items() if k.startswith(p)}


def test_calibration_statistics_are_the_layer_inputs(tiny_model):
    gf = GGUFFile(tiny_model)
    cfg = dataclasses.asdict(ModelConfig.from_metadata(gf.metadata))
    hidden = np.random.default_rng(5).standard_normal((2 * 16, 64)).astype(np.float32)
    out, stats, n = _core.calibrate_layer(cfg, layer_dict(gf, 0), hidden, 16, 2, "full")
    assert n == 32 and set(stats) == {"attn_qkv", "attn_output", "ffn_gate_up", "ffn_down"}
    assert stats["attn_output"].shape == (64, 64) and stats["ffn_down"].shape == (96, 96)
    norm = gf.tensor_array("blk.0.attn_norm.weight")
    xn = hidden / np.sqrt((hidden.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * norm
    assert np.allclose(stats["attn_qkv"], xn.T @ xn, rtol=1e-4, atol=1e-3)
    out2, diag, _ = _core.calibrate_layer(cfg, layer_dict(gf, 0), hidden, 16, 1, "diag")
    assert np.array_equal(out, out2)                      # capturing does not change the layer
    assert np.allclose(diag["ffn_down"], np.diag(stats["ffn_down"]), rtol=1e-5)
    out3, none, _ = _core.calibrate_layer(cfg, layer_dict(gf, 0), hidden, 16, 1, "none")
    assert none == {} and np.array_equal(out, out3)


def test_layer_runs_reproduce_the_forward_pass(tiny_model):
    # Layer by layer over the stored stream, then the output head in numpy = the model's logits.
    gf = GGUFFile(tiny_model)
    cfg = ModelConfig.from_metadata(gf.metadata)
    ids = [5, 900, 17, 4321, 88, 12, 3000, 7]
    hidden = gf.tensor_array("token_embd.weight")[ids].astype(np.float32)
    for layer in range(cfg.n_layer):
        hidden, _, _ = _core.calibrate_layer(dataclasses.asdict(cfg), layer_dict(gf, layer), hidden, len(ids), 1, "none")
    xn = hidden / np.sqrt((hidden.astype(np.float64) ** 2).mean(-1, keepdims=True) + cfg.rms_eps)
    xn = xn * gf.tensor_array("output_norm.weight")
    logits = xn @ gf.tensor_array("token_embd.weight").T
    with pyllm.Model(tiny_model, n_ctx=32) as m:
        ref = m.logits(ids)
    assert np.allclose(logits, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text((DATA / "wikitext_head.txt").read_text(encoding="utf-8") * 3, encoding="utf-8")
    return path


def test_gptq_and_imatrix_end_to_end(tiny_model, calib_file, tmp_path):
    # What calibration optimises: each matrix's output error on the activations it sees,
    # tr((W - Q) H (W - Q)ᵀ) with H = XᵀX from the original model on the calibration text.
    base = GGUFFile(tiny_model)
    cfg = ModelConfig.from_metadata(base.metadata)
    ids = pq.calibration_tokens(pyllm.Model(tiny_model, n_ctx=64).tokenizer,
                                calib_file.read_text(encoding="utf-8"), 256, 64)
    hidden = base.tensor_array("token_embd.weight")[ids.reshape(-1)].astype(np.float32)
    stats = []
    for layer in range(cfg.n_layer):
        hidden, st, _ = _core.calibrate_layer(dataclasses.asdict(cfg), layer_dict(base, layer), hidden, 64, 2, "full")
        stats.append(st)
    site = {"attn_q": "attn_qkv", "attn_k": "attn_qkv", "attn_v": "attn_qkv", "attn_output": "attn_output",
            "ffn_gate": "ffn_gate_up", "ffn_up": "ffn_gate_up", "ffn_down": "ffn_down"}
    err = {}
    for method in ("rtn", "imatrix", "gptq"):
        out = tmp_path / f"{method}.gguf"
        opts = QuantizeOptions(method=method, calib=str(calib_file) if method != "rtn" else None,
                               calib_tokens=256, calib_ctx=64, threads=2)
        rep = quantize_file(tiny_model, out, "q4_0", opts)
        gf = GGUFFile(out)
        md = gf.metadata
        assert md["pyllm.quantize.method"] == method
        if method != "rtn":
            assert rep.calib_tokens == md["pyllm.quantize.calib.tokens"] == 256
            assert md["pyllm.quantize.calib.ctx"] == 64 and len(md["pyllm.quantize.calib.sha256"]) == 64
            assert rep.methods["blk.1.ffn_down.weight"] == method
        total = 0.0
        for layer in range(cfg.n_layer):
            for m, s in site.items():
                name = f"blk.{layer}.{m}.weight"
                assert gf.tensors[name]["type_name"] == "Q4_0"
                d = gf.tensor_array(name).astype(np.float64) - base.tensor_array(name)
                total += float(np.einsum("ij,jk,ik->", d, stats[layer][s], d))
        err[method] = total
        with pyllm.Model(out, n_ctx=64) as m:
            assert np.isfinite(m.logits([1, 2, 3])).all()
    assert err["gptq"] < 0.7 * err["rtn"], err
    assert err["imatrix"] < err["rtn"], err


def test_calibration_needs_text(tiny_model, tmp_path):
    with pytest.raises(QuantizeError, match="--calib"):
        quantize_file(tiny_model, tmp_path / "o.gguf", "q4_0", QuantizeOptions(method="gptq"))
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    with pytest.raises(QuantizeError, match="calibration text has"):
        quantize_file(tiny_model, tmp_path / "o.gguf", "q4_0", QuantizeOptions(method="gptq", calib=str(short)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]


def test_nan_refused_before_calibration(tmp_path, calib_file, smollm2_path):
    real = GGUFFile(smollm2_path)
    md = [(k, v, real.metadata[k]) for k, v in real.metadata_types.items() if k.startswith("tokenizer.")]
    md += [("llama.context_length", "UINT32", 512), ("llama.embedding_length", "UINT32", 64),
           ("llama.feed_forward_length", "UINT32", 96), ("llama.vocab_size", "UINT32", 49152)]
    t = small_tensors(seed=3, n_vocab=49152)
    t["blk.1.attn_k.weight"][2, 9] = np.inf
    src = write_model(tmp_path / "inf.gguf", t, md)
    for method in ("imatrix", "gptq"):
        opts = QuantizeOptions(method=method, calib=str(calib_file), calib_tokens=128, calib_ctx=64)
        with pytest.raises(QuantizeError, match=r"blk\.1\.attn_k\.weight.*inf.*row 2, column 9"):
            quantize_file(src, tmp_path / "o.gguf", "q4_0", opts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inf.gguf"]
