"""Writes tiny random-weight GGUF files for the architectures of issue 11, named as llama.cpp's
converter (convert_hf_to_gguf.py) names tensors and metadata keys, and records llama.cpp's logits
for a fixed token sequence per file (llama-cpp-python 0.3.36 in the peer venv).

Not a model converter and not a reference forward pass: the logits come from llama.cpp.

    python3 tools/make_arch_fixtures.py write DIR      # the GGUFs (deterministic from the seed)
    ~/.cache/pyllm-peer/venv/bin/python tools/make_arch_fixtures.py logits DIR   # llama.cpp's logits

tests/data/arch/README.md says what each file exercises and the measured cross-build tolerance.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys

import numpy as np

N_VOCAB = 320


# name -> spec. n_prompt tokens are evaluated; logits are kept for `keep` positions (all if None).
SPECS = {
    # llama 3.x: rope_freqs.weight (llama3 rope scaling factors), positions past 4096
    "llama3_ropefreqs": dict(arch="llama", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128,
                             ctx=8192, rope_base=500000.0, rope_freqs=True, n_prompt=4160, keep=64),
    "llama_yarn": dict(arch="llama", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, ctx=1024,
                       rope_base=10000.0, yarn=(4.0, 256), n_prompt=600, keep=64),
    "qwen2_yarn": dict(arch="qwen2", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, ctx=1024,
                       rope_base=1000000.0, yarn=(4.0, 256), bias=True, n_prompt=600, keep=64),
    "qwen3": dict(arch="qwen3", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, head_dim=32,
                  ctx=512, rope_base=1000000.0, qk_norm=True, n_prompt=48),
    # gemma3: 6 layers so that llama.cpp's default pattern (every 6th layer global) has one global
    # layer; sliding window 16 < the 80-token prompt.
    "gemma3": dict(arch="gemma3", n_layer=6, n_embd=64, n_head=4, n_head_kv=1, n_ff=128, head_dim=32,
                   ctx=512, rope_base=1000000.0, swa=16, n_prompt=80, tied=True),
    # the same shape with every matrix in Q8_0 (norms F32), as llama-quantize writes a Q8_0 file
    "gemma3_q8_0": dict(arch="gemma3", n_layer=6, n_embd=64, n_head=4, n_head_kv=1, n_ff=128, head_dim=32,
                        ctx=512, rope_base=1000000.0, swa=16, n_prompt=80, tied=True, qtype="Q8_0"),
    "phi3": dict(arch="phi3", n_layer=2, n_embd=64, n_head=4, n_head_kv=4, n_ff=128, ctx=512,
                 rope_base=10000.0, n_prompt=48),
    "mixtral": dict(arch="llama", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96, ctx=512,
                    rope_base=1000000.0, experts=(8, 2), n_prompt=48),
    "qwen2moe": dict(arch="qwen2moe", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96, ctx=512,
                     rope_base=1000000.0, bias=True, experts=(4, 2), n_ff_exp=32, n_ff_shexp=64, n_prompt=48),
    "qwen3moe": dict(arch="qwen3moe", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96, head_dim=32,
                     ctx=512, rope_base=1000000.0, qk_norm=True, experts=(8, 2), n_ff_exp=32, n_prompt=48),
    # olmoe's k norm spans all of K ({n_embd}), so n_head_kv == n_head as in OLMoE
    "olmoe": dict(arch="olmoe", n_layer=2, n_embd=64, n_head=4, n_head_kv=4, n_ff=32, ctx=512,
                  rope_base=10000.0, qk_norm="full", experts=(8, 2), n_prompt=48),
}


def prompt_ids(name: str) -> list[int]:
    rng = np.random.default_rng(abs(hash(name)) % 1 if False else int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
    return [int(t) for t in rng.integers(0, 261, SPECS[name]["n_prompt"])]  # bytes + merges, no specials


def llama3_rope_factors(head_dim: int, base: float, factor=8.0, low=1.0, high=4.0, orig=4096) -> np.ndarray:
    # convert_hf_to_gguf.py LlamaModel.generate_extra_tensors (rope_type llama3)
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low_wl, high_wl = orig / low, orig / high
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(1)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (orig / wl - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write(name: str, path: str) -> None:
    import gguf
    # make_tiny_gguf imports gguf, which the peer's venv (where `logits` runs) may lack: import here.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_tiny_gguf import CHATML_SPECIALS, add_byte_bpe_tokenizer, byte_bpe_vocab
    s = SPECS[name]
    rng = np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
    arch, E, L = s["arch"], s["n_embd"], s["n_layer"]
    H, HKV = s["n_head"], s["n_head_kv"]
    hd = s.get("head_dim", E // H)
    nq, nkv = H * hd, HKV * hd
    w = gguf.GGUFWriter(path, arch)
    # (a name containing "phi3" makes llama.cpp look up SPM tokens "</s>", "<unk>", "<s>" that this
    # byte-level vocabulary lacks)
    w.add_name(f"tiny-{name}".replace("phi3", "phi-three"))
    w.add_block_count(L); w.add_context_length(s["ctx"]); w.add_embedding_length(E)
    w.add_feed_forward_length(s["n_ff"]); w.add_head_count(H); w.add_head_count_kv(HKV)
    w.add_rope_freq_base(s["rope_base"]); w.add_layer_norm_rms_eps(1e-6 if arch == "gemma3" else 1e-5)
    if "head_dim" in s:
        w.add_key_length(hd); w.add_value_length(hd)
    if arch in ("llama", "phi3"):
        w.add_rope_dimension_count(hd)
    if arch == "llama":
        w.add_vocab_size(N_VOCAB)
    if arch == "gemma3":
        w.add_sliding_window(s["swa"])
    if arch == "phi3":
        w.add_uint32(f"{arch}.rope.scaling.original_context_length", s["ctx"])
    if "yarn" in s:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(s["yarn"][0]); w.add_rope_scaling_orig_ctx_len(s["yarn"][1])
    if "experts" in s:
        w.add_expert_count(s["experts"][0]); w.add_expert_used_count(s["experts"][1])
        if "n_ff_exp" in s:
            w.add_expert_feed_forward_length(s["n_ff_exp"])
        if "n_ff_shexp" in s:
            w.add_expert_shared_feed_forward_length(s["n_ff_shexp"])
    # make_tiny_gguf.py's tiny byte-level BPE vocabulary plus phi3's <|end|>, which llama.cpp
    # looks up for a model named phi3: llama.cpp needs some vocabulary; the fixtures feed token ids.
    tokens, types, merges = byte_bpe_vocab(N_VOCAB, CHATML_SPECIALS + ("<|end|>",))
    add_byte_bpe_tokenizer(w, tokens, types, merges, bos_id=tokens.index("<|endoftext|>"))

    f16 = s.get("f16", False)

    def mat(nm, *shape, scale=None):  # numpy shape (.., rows, cols); GGUF shape is reversed
        x = rng.standard_normal(shape) * (scale or 1.0 / np.sqrt(shape[-1]))
        if s.get("qtype"):
            qt = gguf.GGMLQuantizationType[s["qtype"]]
            w.add_tensor(nm, gguf.quants.quantize(x.astype(np.float32), qt), raw_dtype=qt)
            return
        w.add_tensor(nm, x.astype(np.float16 if f16 else np.float32))

    def vec(nm, n, base=1.0, spread=0.1):
        w.add_tensor(nm, (base + spread * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", N_VOCAB, E, scale=1.0)
    vec("output_norm.weight", E)
    if not s.get("tied"):
        mat("output.weight", N_VOCAB, E)
    if s.get("rope_freqs"):
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(hd, s["rope_base"]))
    for l in range(L):
        p = f"blk.{l}."
        vec(p + "attn_norm.weight", E)
        if arch == "phi3":
            mat(p + "attn_qkv.weight", nq + 2 * nkv, E)
        else:
            mat(p + "attn_q.weight", nq, E); mat(p + "attn_k.weight", nkv, E); mat(p + "attn_v.weight", nkv, E)
        if s.get("bias"):
            vec(p + "attn_q.bias", nq, 0.0, 0.5); vec(p + "attn_k.bias", nkv, 0.0, 0.5); vec(p + "attn_v.bias", nkv, 0.0, 0.5)
        if s.get("qk_norm") == "full":
            vec(p + "attn_q_norm.weight", nq); vec(p + "attn_k_norm.weight", nkv)
        elif s.get("qk_norm") or arch == "gemma3":
            vec(p + "attn_q_norm.weight", hd); vec(p + "attn_k_norm.weight", hd)
        mat(p + "attn_output.weight", E, nq)
        if arch == "gemma3":
            vec(p + "post_attention_norm.weight", E)
        vec(p + "ffn_norm.weight", E)
        if "experts" in s:
            ne = s["experts"][0]
            ff = s.get("n_ff_exp", s["n_ff"])
            mat(p + "ffn_gate_inp.weight", ne, E, scale=1.0)
            mat(p + "ffn_gate_exps.weight", ne, ff, E)
            mat(p + "ffn_up_exps.weight", ne, ff, E)
            mat(p + "ffn_down_exps.weight", ne, E, ff)
            if "n_ff_shexp" in s:
                vec(p + "ffn_gate_inp_shexp.weight", E, 0.0, 0.3)
                mat(p + "ffn_gate_shexp.weight", s["n_ff_shexp"], E)
                mat(p + "ffn_up_shexp.weight", s["n_ff_shexp"], E)
                mat(p + "ffn_down_shexp.weight", E, s["n_ff_shexp"])
        elif arch == "phi3":
            mat(p + "ffn_up.weight", 2 * s["n_ff"], E)
            mat(p + "ffn_down.weight", E, s["n_ff"])
        else:
            mat(p + "ffn_gate.weight", s["n_ff"], E); mat(p + "ffn_up.weight", s["n_ff"], E)
            mat(p + "ffn_down.weight", E, s["n_ff"])
        if arch == "gemma3":
            vec(p + "post_ffw_norm.weight", E)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def llamacpp_logits(path: str, ids: list[int], n_ctx: int, n_threads=2, n_batch=512, flash_attn=False) -> np.ndarray:
    import llama_cpp
    m = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                        n_threads=n_threads, logits_all=True, verbose=False, flash_attn=flash_attn)
    m.eval(ids)
    out = np.array(m.scores[:len(ids)], dtype=np.float32)
    m.close()
    return out


def flash_attn_spread(name: str, path: str, ids: list[int], ctx: int, ref: np.ndarray) -> dict:
    """llama.cpp's own spread between its two attention paths: the fixtures come from the default
    one, which rounds the softmax probabilities to F16 before P.V; flash attention keeps them in
    F32 (as pyllm does). Measured over the kept positions."""
    try:
        fa = llamacpp_logits(path, ids, ctx, flash_attn=True)
    except RuntimeError as e:  # llama.cpp refuses some shapes with flash attention
        print(name, "flash attention:", e, flush=True)
        return {}
    pos = kept(name, len(ids))
    return dict(flash_attn_vs_not=float(np.abs(fa[pos] - ref[pos]).max()))


def kept(name: str, n: int) -> np.ndarray:
    keep = SPECS[name].get("keep")
    return np.arange(n) if keep is None else np.arange(n - keep, n)


if __name__ == "__main__":
    cmd, out = sys.argv[1], sys.argv[2]
    names = sys.argv[3:] or list(SPECS)
    os.makedirs(out, exist_ok=True)
    if cmd == "write":
        sums = {}
        for nm in names:
            write(nm, os.path.join(out, nm + ".gguf"))
            sums[nm] = hashlib.sha256(open(os.path.join(out, nm + ".gguf"), "rb").read()).hexdigest()
            print(nm, os.path.getsize(os.path.join(out, nm + ".gguf")), sums[nm])
        spath = os.path.join(out, "gguf_sha256.json")
        old = json.load(open(spath)) if os.path.exists(spath) else {}
        with open(spath, "w") as f:
            json.dump({**old, **sums}, f, indent=1, sort_keys=True)
    elif cmd == "logits":
        tpath = os.path.join(out, "tolerance.json")
        tol = json.load(open(tpath)) if os.path.exists(tpath) else {}
        for nm in names:
            ids = prompt_ids(nm)
            path = os.path.join(out, nm + ".gguf")
            ctx = min(SPECS[nm]["ctx"], 8192)
            ref = llamacpp_logits(path, ids, ctx)
            pos = kept(nm, len(ids))
            np.savez_compressed(os.path.join(out, nm + ".npz"), ids=np.array(ids, np.int32),
                                positions=pos.astype(np.int32), logits=ref[pos])
            # cross-build spread: 1 thread vs 2, and batch 1 (decode one at a time) vs full
            a = llamacpp_logits(path, ids, ctx, n_threads=1)
            d_thr = float(np.abs(a - ref).max())
            small = 1 if len(ids) <= 600 else 32  # one token at a time; the 4k prompt in 32s
            b = llamacpp_logits(path, ids, ctx, n_batch=small)
            tol[nm] = dict(max_abs_logit=float(np.abs(ref).max()), threads_1_vs_2=d_thr,
                           small_batch=small, small_batch_vs_512=float(np.abs(b - ref).max()))
            tol[nm].update(flash_attn_spread(nm, path, ids, ctx, ref))
            print(nm, tol[nm], flush=True)
        with open(tpath, "w") as f:
            json.dump(tol, f, indent=1)
    elif cmd == "fa-spread":  # add only llama.cpp's flash-attention spread to tolerance.json
        tpath = os.path.join(out, "tolerance.json")
        tol = json.load(open(tpath))
        for nm in names:
            ids = prompt_ids(nm)
            path = os.path.join(out, nm + ".gguf")
            ctx = min(SPECS[nm]["ctx"], 8192)
            tol[nm].update(flash_attn_spread(nm, path, ids, ctx, llamacpp_logits(path, ids, ctx)))
            print(nm, tol[nm], flush=True)
        with open(tpath, "w") as f:
            json.dump(tol, f, indent=1)
