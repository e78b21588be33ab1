"""Writes tiny random llama-family GGUF models (any weight type) with the `gguf` package, and a
float64 numpy reference forward pass for them. Used by tests/test_tiny_models.py; run directly
to write one:  python tools/make_tiny_gguf.py OUT.gguf --type Q4_0 [--arch qwen2]"""
from __future__ import annotations

import argparse

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

# Tensors whose rows must be a multiple of 256 for the K-quants: every width here is.
DIMS = dict(n_vocab=320, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_layer=2)


def _bytes_tokens():
    # A tiny byte-level BPE vocabulary: the 256 byte symbols, a few merges, specials.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    symbols = [chr(c) for _, c in sorted(zip(bs, cs))]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "a n"]
    tokens = symbols + [m.replace(" ", "") for m in merges]
    tokens += ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens += [f"<extra_{i}>" for i in range(DIMS["n_vocab"] - len(tokens))]
    types = [1] * (len(symbols) + len(merges)) + [3, 3, 3] + [4] * (DIMS["n_vocab"] - len(symbols) - len(merges) - 3)
    return tokens, types, merges


def _quantize(w: np.ndarray, qtype: T) -> np.ndarray:
    if qtype == T.F32:
        return w.astype(np.float32)
    if qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS):
        from pyllm import _core
        return _core.quantize(int(qtype), w.reshape(-1, w.shape[-1]).astype(np.float32)).reshape(w.shape[0], -1)
    return gguf.quants.quantize(w.astype(np.float32), qtype)


def make_tiny_model(path, weight_type: str = "F32", arch: str = "llama", seed: int = 0,
                    raw_types: dict[str, str] | None = None) -> None:
    """raw_types: tensor name -> a ggml type name whose blocks are written as random bytes (for
    files of types pyllm reads but does not run, e.g. IQ2_XXS)."""
    rng = np.random.default_rng(seed)
    d = DIMS
    hd = d["n_embd"] // d["n_head"]
    qtype = T[weight_type]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(d["n_layer"]); w.add_context_length(256); w.add_embedding_length(d["n_embd"])
    w.add_feed_forward_length(d["n_ff"]); w.add_head_count(d["n_head"]); w.add_head_count_kv(d["n_head_kv"])
    w.add_rope_dimension_count(hd); w.add_rope_freq_base(10000.0); w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(d["n_vocab"])
    tokens, types, merges = _bytes_tokens()
    w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("default")
    w.add_token_list(tokens); w.add_token_types(types); w.add_token_merges(merges)
    w.add_bos_token_id(d["n_vocab"] - 1); w.add_eos_token_id(tokens.index("<|im_end|>")); w.add_add_bos_token(False)

    def mat(name, rows, cols, scale=None):
        if raw_types and name in raw_types:
            rt = T[raw_types[name]]
            block, size = gguf.constants.GGML_QUANT_SIZES[rt]
            w.add_tensor(name, rng.integers(0, 256, (rows, cols // block * size), dtype=np.uint8), raw_dtype=rt)
            return
        x = rng.standard_normal((rows, cols)) * (scale or 1.0 / np.sqrt(cols))
        q = _quantize(x, qtype)
        if qtype in (T.F32, T.F16):
            w.add_tensor(name, q)  # the writer takes float arrays as they are
        else:  # raw block bytes, (rows, bytes per row)
            w.add_tensor(name, np.ascontiguousarray(q).view(np.uint8), raw_dtype=qtype)

    def vec(name, n, base=1.0, spread=0.1):
        w.add_tensor(name, (base + spread * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", d["n_vocab"], d["n_embd"], scale=1.0)
    vec("output_norm.weight", d["n_embd"])
    mat("output.weight", d["n_vocab"], d["n_embd"])
    nq, nkv = d["n_head"] * hd, d["n_head_kv"] * hd
    for l in range(d["n_layer"]):
        p = f"blk.{l}."
        vec(p + "attn_norm.weight", d["n_embd"])
        mat(p + "attn_q.weight", nq, d["n_embd"])
        mat(p + "attn_k.weight", nkv, d["n_embd"])
        mat(p + "attn_v.weight", nkv, d["n_embd"])
        if arch == "qwen2":
            vec(p + "attn_q.bias", nq, 0.0, 0.5); vec(p + "attn_k.bias", nkv, 0.0, 0.5); vec(p + "attn_v.bias", nkv, 0.0, 0.5)
        mat(p + "attn_output.weight", d["n_embd"], nq)
        vec(p + "ffn_norm.weight", d["n_embd"])
        mat(p + "ffn_gate.weight", d["n_ff"], d["n_embd"])
        mat(p + "ffn_up.weight", d["n_ff"], d["n_embd"])
        mat(p + "ffn_down.weight", d["n_embd"], d["n_ff"])
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def _act_quant(x: np.ndarray, wtype: T) -> np.ndarray:
    """What a quantized matmul sees of its input: rows quantized to the weight type's 8-bit
    partner (Q8_0/Q8_1: blocks of 32, f16 scale; Q8_K: blocks of 256, f32 scale), dequantized."""
    if wtype in (T.F32, T.F16, T.BF16):
        return x
    x32 = x.astype(np.float32)
    if wtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS):
        b = x32.reshape(-1, 256)
        idx = np.abs(b).argmax(1)
        mx = b[np.arange(len(b)), idx]
        iscale = np.where(mx != 0, np.float32(-127) / np.where(mx != 0, mx, 1), 0).astype(np.float32)
        q = np.minimum(127, np.rint(iscale[:, None] * b))
        d = np.where(iscale != 0, np.float32(1) / np.where(iscale != 0, iscale, 1), 0).astype(np.float32)
        return (q * d[:, None]).reshape(x.shape).astype(np.float64)
    q, d = _q8_blocks(x32)
    return (q * d.astype(np.float16).astype(np.float32)[..., None]).reshape(x.shape).astype(np.float64)


def _q8_blocks(x32: np.ndarray):
    """Q8_0/Q8_1 rounding of float32 rows: (q (rows, n_blocks, 32), d as float32 (rows, n_blocks))."""
    b = x32.reshape(len(x32), -1, 32)
    d = np.abs(b).max(-1) / np.float32(127)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    v = b * inv[..., None]
    q = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))  # roundf: half away from zero
    return q, d


def reference_logits(path, ids, emulate_activation_quantization: bool = True) -> np.ndarray:
    """Float64 forward pass straight from the formulas (F32 cache). With emulation on, each
    matmul input is first rounded to the 8-bit activation format pyllm and llama.cpp use."""
    r = gguf.GGUFReader(str(path))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    W, wtype, mins = {}, {}, {}
    for t in r.tensors:
        if emulate_activation_quantization and t.tensor_type in (T.Q4_1, T.Q5_1):
            rows = int(t.shape[1])
            raw = np.ascontiguousarray(t.data).reshape(rows, -1, 20 if t.tensor_type == T.Q4_1 else 24)
            mins[t.name] = raw[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float64)  # (rows, n_blocks)
        wtype[t.name] = T(t.tensor_type) if emulate_activation_quantization else T.F32
        data = t.data.view(np.uint8) if t.tensor_type == T.BF16 else t.data
        W[t.name] = gguf.quants.dequantize(data, t.tensor_type).astype(np.float64).reshape([int(x) for x in reversed(t.shape)])
    d = DIMS
    hd = d["n_embd"] // d["n_head"]
    group = d["n_head"] // d["n_head_kv"]
    n = len(ids)
    neox = arch == "qwen2"

    def mm(x, name):  # x @ W[name].T with W's activation rounding
        xq = _act_quant(x, wtype[name])
        out = xq @ W[name].T
        if name in mins:
            # Q4_1/Q5_1 . Q8_1: the weights' offset m meets the activation block's sum through
            # s = f16(d * sum(q)), stored rounded in the Q8_1 block; apply that rounding too.
            # s is computed from the unrounded f32 scale, the q's dequantize with its f16 rounding.
            q, d = _q8_blocks(x.astype(np.float32))
            qsum = q.sum(-1)
            used = (qsum * d).astype(np.float16).astype(np.float64)                 # (n, n_blocks)
            exact = qsum * d.astype(np.float16).astype(np.float64)
            out += (used - exact) @ mins[name].T
        return out

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * g

    def rope(x, n_heads):  # x (n, n_heads*hd)
        x = x.reshape(n, n_heads, hd).copy()
        inv = 10000.0 ** (-np.arange(0, hd, 2) / hd)
        ang = np.arange(n)[:, None] * inv[None, :]          # (n, hd/2)
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if neox:
            a, b = x[..., :hd // 2].copy(), x[..., hd // 2:].copy()
            x[..., :hd // 2], x[..., hd // 2:] = a * c - b * s, a * s + b * c
        else:
            a, b = x[..., 0::2].copy(), x[..., 1::2].copy()
            x[..., 0::2], x[..., 1::2] = a * c - b * s, a * s + b * c
        return x

    x = W["token_embd.weight"][ids]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(d["n_layer"]):
        p = f"blk.{l}."
        h = rms(x, W[p + "attn_norm.weight"])
        q = mm(h, p + "attn_q.weight") + W.get(p + "attn_q.bias", 0)
        k = mm(h, p + "attn_k.weight") + W.get(p + "attn_k.bias", 0)
        v = (mm(h, p + "attn_v.weight") + W.get(p + "attn_v.bias", 0)).reshape(n, d["n_head_kv"], hd)
        q, k = rope(q, d["n_head"]), rope(k, d["n_head_kv"])
        if emulate_activation_quantization:  # the KV cache holds f16
            k = k.astype(np.float16).astype(np.float64)
            v = v.astype(np.float16).astype(np.float64)
        out = np.zeros((n, d["n_head"], hd))
        for hh in range(d["n_head"]):
            g = hh // group
            att = q[:, hh] @ k[:, g].T / np.sqrt(hd) + mask
            att = np.exp(att - att.max(1, keepdims=True))
            out[:, hh] = (att / att.sum(1, keepdims=True)) @ v[:, g]
        x = x + mm(out.reshape(n, -1), p + "attn_output.weight")
        h = rms(x, W[p + "ffn_norm.weight"])
        gt, up = mm(h, p + "ffn_gate.weight"), mm(h, p + "ffn_up.weight")
        x = x + mm(gt / (1 + np.exp(-gt)) * up, p + "ffn_down.weight")
    return mm(rms(x, W["output_norm.weight"]), "output.weight")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out"); ap.add_argument("--type", default="F32"); ap.add_argument("--arch", default="llama")
    a = ap.parse_args()
    make_tiny_model(a.out, a.type, a.arch)
