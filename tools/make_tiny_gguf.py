"""Writes tiny random GGUF models of every dense family pyllm runs (any weight type) with the
`gguf` package, and a float64 numpy reference forward pass for them, written from the formulas
(not from pyllm's code). Used by tests/test_tiny_models.py; run directly to write one:
  python tools/make_tiny_gguf.py OUT.gguf --type Q4_0 [--arch qwen2] [--variant yarn]

Families (FAMILIES): llama, qwen2, qwen3, gemma2, gemma3, phi3. Variants (VARIANTS) add rope
scaling to any of them: "rope_freqs" (llama3's rope_freqs.weight divisors), "yarn" (YaRN,
factor 4 over an original context of 16), "linear" (factor 2)."""
from __future__ import annotations

import argparse

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

# Tensors whose rows must be a multiple of 256 for the K-quants: every width here is.
DIMS = dict(n_vocab=320, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_layer=2)
FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
VARIANTS = (None, "rope_freqs", "yarn", "linear")
# The windowed families' window, short enough for the test prompts to cross it.
SLIDING_WINDOW = 4
# phi3's LongRoPE: the long factors apply when the context is longer than this.
PHI3_ORIG_CTX = 32


CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def byte_bpe_vocab(n_vocab: int = DIMS["n_vocab"], specials=CHATML_SPECIALS) -> tuple[list[str], list[int], list[str]]:
    """A tiny byte-level BPE vocabulary of n_vocab tokens: the 256 byte symbols in GPT-2's
    alphabet, a few merges, the control tokens `specials`, then user-defined <extra_i> fillers.
    Returns (tokens, token types, merges). Shared with tools/make_arch_fixtures.py."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    symbols = [chr(c) for _, c in sorted(zip(bs, cs))]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "a n"]
    tokens = symbols + [m.replace(" ", "") for m in merges] + list(specials)
    n_fill = n_vocab - len(tokens)
    tokens += [f"<extra_{i}>" for i in range(n_fill)]
    types = [1] * (len(symbols) + len(merges)) + [3] * len(specials) + [4] * n_fill
    return tokens, types, merges


def add_byte_bpe_tokenizer(w: "gguf.GGUFWriter", tokens: list[str], types: list[int], merges: list[str],
                           bos_id: int) -> None:
    """The tokenizer metadata of a byte_bpe_vocab (pre-tokenizer "default", EOS <|im_end|>, no
    BOS added), in the order both fixture writers have always written it (their bytes are pinned)."""
    w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("default")
    w.add_token_list(tokens); w.add_token_types(types); w.add_token_merges(merges)
    w.add_bos_token_id(bos_id); w.add_eos_token_id(tokens.index("<|im_end|>")); w.add_add_bos_token(False)


def _quantize(w: np.ndarray, qtype: T) -> np.ndarray:
    if qtype == T.F32:
        return w.astype(np.float32)
    if qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS):
        from pyllm import _core
        return _core.quantize(int(qtype), w.reshape(-1, w.shape[-1]).astype(np.float32)).reshape(w.shape[0], -1)
    return gguf.quants.quantize(w.astype(np.float32), qtype)


def make_tiny_model(path, weight_type: str = "F32", arch: str = "llama", seed: int = 0,
                    raw_types: dict[str, str] | None = None, variant: str | None = None,
                    sliding_window: int = SLIDING_WINDOW, extra_kv: dict | None = None,
                    skip_tensors: frozenset = frozenset(), misshapen: frozenset = frozenset()) -> None:
    """raw_types: tensor name -> a ggml type name whose blocks are written as random bytes (for
    files of types pyllm reads but does not run, e.g. IQ2_XXS). variant: one of VARIANTS.
    sliding_window: gemma2/gemma3's window (their layer 0 is windowed, layer 1 global).
    For the bad-file tests: extra_kv, key -> (value, GGUFValueType), set or overwritten last;
    skip_tensors are left out; misshapen tensors get 8 rows (or elements) too many."""
    assert arch in FAMILIES and variant in VARIANTS, (arch, variant)
    rng = np.random.default_rng(seed)
    d = DIMS
    hd = d["n_embd"] // d["n_head"]
    qtype = T[weight_type]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(d["n_layer"]); w.add_context_length(256); w.add_embedding_length(d["n_embd"])
    w.add_feed_forward_length(d["n_ff"]); w.add_head_count(d["n_head"]); w.add_head_count_kv(d["n_head_kv"])
    w.add_rope_dimension_count(hd); w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(1e6 if arch == "gemma3" else 10000.0)  # gemma3's windowed layers: 10000
    w.add_vocab_size(d["n_vocab"])
    if arch in ("gemma2", "gemma3"):
        w.add_key_length(hd); w.add_value_length(hd)
        w.add_sliding_window(sliding_window)
        w.add_uint32(f"{arch}.attention.sliding_window_pattern", 2)  # layer 0 windowed, 1 global
    if arch == "gemma2":
        w.add_float32(f"{arch}.attn_logit_softcapping", 2.0)   # small: random scores reach it
        w.add_float32(f"{arch}.final_logit_softcapping", 3.0)
    if arch == "phi3":
        w.add_uint32(f"{arch}.rope.scaling.original_context_length", PHI3_ORIG_CTX)
        w.add_float32(f"{arch}.rope.scaling.attn_factor", 1.1902380714238083)
    if variant == "yarn":
        w.add_string(f"{arch}.rope.scaling.type", "yarn"); w.add_float32(f"{arch}.rope.scaling.factor", 4.0)
        w.add_uint32(f"{arch}.rope.scaling.original_context_length", 16)
    elif variant == "linear":
        w.add_string(f"{arch}.rope.scaling.type", "linear"); w.add_float32(f"{arch}.rope.scaling.factor", 2.0)
    tokens, types, merges = byte_bpe_vocab(d["n_vocab"])
    add_byte_bpe_tokenizer(w, tokens, types, merges, bos_id=d["n_vocab"] - 1)

    def mat(name, rows, cols, scale=None):
        if name in skip_tensors:
            return
        rows += 8 if name in misshapen else 0
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
        if name in skip_tensors:
            return
        n += 8 if name in misshapen else 0
        w.add_tensor(name, (base + spread * rng.standard_normal(n)).astype(np.float32))

    gemma = arch in ("gemma2", "gemma3")
    # gemma scales the embeddings by sqrt(n_embd): smaller rows keep the stream's size alike.
    mat("token_embd.weight", d["n_vocab"], d["n_embd"], scale=1.0 / np.sqrt(d["n_embd"]) if gemma else 1.0)
    vec("output_norm.weight", d["n_embd"])
    if arch != "gemma2":  # gemma2 always ties the output to the embeddings
        mat("output.weight", d["n_vocab"], d["n_embd"])
    nq, nkv = d["n_head"] * hd, d["n_head_kv"] * hd
    if variant == "rope_freqs":  # llama3-style: 1 for the fast dims, up to 8 for the slow ones
        w.add_tensor("rope_freqs.weight", np.geomspace(1.0, 8.0, hd // 2).astype(np.float32))
    if arch == "phi3":
        w.add_tensor("rope_factors_long.weight", np.geomspace(1.0, 6.0, hd // 2).astype(np.float32))
        w.add_tensor("rope_factors_short.weight", np.geomspace(1.0, 1.5, hd // 2).astype(np.float32))
    for l in range(d["n_layer"]):
        p = f"blk.{l}."
        vec(p + "attn_norm.weight", d["n_embd"])
        if arch == "phi3":
            mat(p + "attn_qkv.weight", nq + 2 * nkv, d["n_embd"])
        else:
            mat(p + "attn_q.weight", nq, d["n_embd"])
            mat(p + "attn_k.weight", nkv, d["n_embd"])
            mat(p + "attn_v.weight", nkv, d["n_embd"])
        if arch == "qwen2":
            vec(p + "attn_q.bias", nq, 0.0, 0.5); vec(p + "attn_k.bias", nkv, 0.0, 0.5); vec(p + "attn_v.bias", nkv, 0.0, 0.5)
        if arch in ("qwen3", "gemma3"):
            vec(p + "attn_q_norm.weight", hd); vec(p + "attn_k_norm.weight", hd)
        mat(p + "attn_output.weight", d["n_embd"], nq)
        if gemma:
            vec(p + "post_attention_norm.weight", d["n_embd"])
        vec(p + "ffn_norm.weight", d["n_embd"])
        if arch == "phi3":
            mat(p + "ffn_up.weight", 2 * d["n_ff"], d["n_embd"])
        else:
            mat(p + "ffn_gate.weight", d["n_ff"], d["n_embd"])
            mat(p + "ffn_up.weight", d["n_ff"], d["n_embd"])
        mat(p + "ffn_down.weight", d["n_embd"], d["n_ff"])
        if gemma:
            vec(p + "post_ffw_norm.weight", d["n_embd"])
    for key, (value, vtype) in (extra_kv or {}).items():
        w.add_key_value(key, value, vtype)
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


def _field(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        return default
    v = f.parts[-1]
    return bytes(v).decode() if f.types[-1] == gguf.GGUFValueType.STRING else v[0].item()


def rope_angles(n_pos: int, n_rot: int, base: float, freq_scale: float = 1.0, factors=None,
                yarn_orig_ctx: int | None = None, attn_factor: float = 1.0):
    """(angles (n_pos, n_rot/2), magnitude) of rope from the formulas: theta_i = p * base^(-2i/n_rot)
    / factors[i] * freq_scale. YaRN (yarn_orig_ctx given): dims that turn more than beta_fast=32
    times over the original context keep the unscaled angle, fewer than beta_slow=1 the scaled
    one, a linear ramp between (over i = dim pair index, between the floor/ceil correction dims);
    the magnitude is 1 + 0.1 ln(1/freq_scale) (the final attn_factor that llama.cpp computes
    for plain YaRN files cancels to 1). Without YaRN the magnitude is attn_factor (LongRoPE)."""
    i = np.arange(n_rot // 2)
    extrap = np.arange(n_pos)[:, None] * base ** (-2.0 * i / n_rot)[None, :]
    if factors is not None:
        extrap = extrap / np.asarray(factors, np.float64)[None, :]
    interp = extrap * freq_scale
    if yarn_orig_ctx is None:
        return interp, attn_factor
    corr = lambda beta: n_rot * np.log(yarn_orig_ctx / (beta * 2 * np.pi)) / (2 * np.log(base))
    lo, hi = max(0.0, np.floor(corr(32.0))), min(n_rot - 1.0, np.ceil(corr(1.0)))
    ramp = 1 - np.clip((i - lo) / max(0.001, hi - lo), 0, 1)  # 1: extrapolate, 0: interpolate
    return interp * (1 - ramp) + extrap * ramp, 1 + 0.1 * np.log(1 / freq_scale)


def _gelu_tanh(x, emulate: bool):
    """GELU's tanh form; emulating ggml's CPU backend: the input rounded to f16, the output too,
    identity at or above 10 and 0 at or below -10."""
    xr = x.astype(np.float16).astype(np.float64) if emulate else x
    g = 0.5 * xr * (1 + np.tanh(np.sqrt(2 / np.pi) * (xr + 0.044715 * xr ** 3)))
    if emulate:
        g = np.where(x >= 10, x, np.where(x <= -10, 0.0, g.astype(np.float16).astype(np.float64)))
    return g


def reference_logits(path, ids, emulate_activation_quantization: bool = True, n_ctx: int = 64) -> np.ndarray:
    """Float64 forward pass straight from the formulas (F32 cache). With emulation on, each
    matmul input is first rounded to the 8-bit activation format pyllm and llama.cpp use.
    n_ctx: the context the model runs with (phi3 picks its LongRoPE factors by it)."""
    r = gguf.GGUFReader(str(path))
    arch = _field(r, "general.architecture")
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
    nq, nkv, ff = d["n_head"] * hd, d["n_head_kv"] * hd, d["n_ff"]
    neox = arch != "llama"
    gemma = arch in ("gemma2", "gemma3")
    # Fused tensors (phi3) are the separate ones, stacked by rows.
    for l in range(d["n_layer"]):
        p = f"blk.{l}."
        if p + "attn_qkv.weight" in W:
            qkv = W.pop(p + "attn_qkv.weight"); t = wtype[p + "attn_qkv.weight"]
            W[p + "attn_q.weight"], W[p + "attn_k.weight"], W[p + "attn_v.weight"] = qkv[:nq], qkv[nq:nq + nkv], qkv[nq + nkv:]
            for s in ("q", "k", "v"):
                wtype[p + f"attn_{s}.weight"] = t
        if p + "ffn_gate.weight" not in W:
            gu = W.pop(p + "ffn_up.weight")
            W[p + "ffn_gate.weight"], W[p + "ffn_up.weight"] = gu[:ff], gu[ff:]
            wtype[p + "ffn_gate.weight"] = wtype[p + "ffn_up.weight"]
    if "output.weight" not in W:
        W["output.weight"], wtype["output.weight"] = W["token_embd.weight"], wtype["token_embd.weight"]

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

    # Rope: the global layers', and gemma's windowed layers' (their own base, no scaling).
    base = float(_field(r, f"{arch}.rope.freq_base", 10000.0))
    scaling = _field(r, f"{arch}.rope.scaling.type", "linear")
    factor = float(_field(r, f"{arch}.rope.scaling.factor", 1.0))
    orig = _field(r, f"{arch}.rope.scaling.original_context_length")
    factors = W.get("rope_freqs.weight")
    if "rope_factors_long.weight" in W:
        factors = W["rope_factors_long.weight"] if n_ctx > orig else W["rope_factors_short.weight"]
    angles = rope_angles(n, hd, base, 1 / factor, factors, orig if scaling == "yarn" else None,
                         float(_field(r, f"{arch}.rope.scaling.attn_factor", 1.0)))
    window = _field(r, f"{arch}.attention.sliding_window", 0)
    pattern = _field(r, f"{arch}.attention.sliding_window_pattern", 6 if arch == "gemma3" else 2)
    angles_swa = rope_angles(n, hd, 10000.0) if arch == "gemma3" else angles
    attn_cap = _field(r, f"{arch}.attn_logit_softcapping", 0.0)
    final_cap = _field(r, f"{arch}.final_logit_softcapping", 0.0)

    def rope(x, n_heads, ang):  # x (n, n_heads*hd)
        ang, mag = ang
        x = x.reshape(n, n_heads, hd).copy()
        c, s = (mag * np.cos(ang))[:, None, :], (mag * np.sin(ang))[:, None, :]
        if neox:
            a, b = x[..., :hd // 2].copy(), x[..., hd // 2:].copy()
            x[..., :hd // 2], x[..., hd // 2:] = a * c - b * s, a * s + b * c
        else:
            a, b = x[..., 0::2].copy(), x[..., 1::2].copy()
            x[..., 0::2], x[..., 1::2] = a * c - b * s, a * s + b * c
        return x

    x = W["token_embd.weight"][ids]
    if gemma:
        x = x * np.float32(np.sqrt(np.float32(d["n_embd"])))
    pos = np.arange(n)
    for l in range(d["n_layer"]):
        p = f"blk.{l}."
        swa = window > 0 and gemma and l % pattern < pattern - 1
        visible = pos[None, :] <= pos[:, None]
        if swa:
            visible &= pos[:, None] - pos[None, :] < window
        mask = np.where(visible, 0.0, -np.inf)
        h = rms(x, W[p + "attn_norm.weight"])
        q = mm(h, p + "attn_q.weight") + W.get(p + "attn_q.bias", 0)
        k = mm(h, p + "attn_k.weight") + W.get(p + "attn_k.bias", 0)
        v = (mm(h, p + "attn_v.weight") + W.get(p + "attn_v.bias", 0)).reshape(n, d["n_head_kv"], hd)
        if p + "attn_q_norm.weight" in W:  # each head normed on its own
            q = rms(q.reshape(n, -1, hd), W[p + "attn_q_norm.weight"]).reshape(n, -1)
            k = rms(k.reshape(n, -1, hd), W[p + "attn_k_norm.weight"]).reshape(n, -1)
        ang = angles_swa if swa else angles
        q, k = rope(q, d["n_head"], ang), rope(k, d["n_head_kv"], ang)
        if emulate_activation_quantization:  # the KV cache holds f16
            k = k.astype(np.float16).astype(np.float64)
            v = v.astype(np.float16).astype(np.float64)
        out = np.zeros((n, d["n_head"], hd))
        for hh in range(d["n_head"]):
            g = hh // group
            att = q[:, hh] @ k[:, g].T / np.sqrt(hd)
            if attn_cap:
                att = attn_cap * np.tanh(att / attn_cap)
            att = att + mask
            att = np.exp(att - att.max(1, keepdims=True))
            out[:, hh] = (att / att.sum(1, keepdims=True)) @ v[:, g]
        o = mm(out.reshape(n, -1), p + "attn_output.weight")
        if gemma:
            o = rms(o, W[p + "post_attention_norm.weight"])
        x = x + o
        h = rms(x, W[p + "ffn_norm.weight"])
        gt, up = mm(h, p + "ffn_gate.weight"), mm(h, p + "ffn_up.weight")
        act = _gelu_tanh(gt, emulate_activation_quantization) if gemma else gt / (1 + np.exp(-gt))
        f = mm(act * up, p + "ffn_down.weight")
        if gemma:
            f = rms(f, W[p + "post_ffw_norm.weight"])
        x = x + f
    logits = mm(rms(x, W["output_norm.weight"]), "output.weight")
    if final_cap:
        logits = final_cap * np.tanh(logits / final_cap)
    return logits


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out"); ap.add_argument("--type", default="F32"); ap.add_argument("--arch", default="llama")
    ap.add_argument("--variant", choices=[v for v in VARIANTS if v])
    a = ap.parse_args()
    make_tiny_model(a.out, a.type, a.arch, variant=a.variant)
