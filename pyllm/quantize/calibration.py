"""Calibration for `--method imatrix` and `--method gptq`: the calibration text tokenized and cut
into sequences, then layer by layer through pyllm's own forward pass (C++ `calibrate_layer`),
collecting XᵀX at each matrix's input (its diagonal for imatrix, the whole matrix for GPTQ) and
quantizing that layer's matrices with it; GPTQ calibrates each layer on the outputs of the
already-quantized layers before it.

Not here: the GPTQ solver and the weighted rounding (C++: csrc/quant/gptq, weighted).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from pyllm import _core
from pyllm.errors import QuantizeError
from pyllm.progress import Progress
from pyllm.quantize.pipeline import assert_finite, shape_rows
from pyllm.quantize.types import GPTQ_TYPES, WEIGHTED_TYPES, type_name

if TYPE_CHECKING:
    from pyllm.quantize.pipeline import QuantizeOptions

_SITE = {"attn_q": "attn_qkv", "attn_k": "attn_qkv", "attn_v": "attn_qkv", "attn_output": "attn_output",
         "ffn_gate": "ffn_gate_up", "ffn_up": "ffn_gate_up", "ffn_down": "ffn_down"}
_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def calibration_tokens(tokenizer, text: str, n_tokens: int, ctx: int) -> np.ndarray:
    """(n_seq, ctx) token ids: the text tokenized whole, cut into sequences (a BOS at each start
    when the model wants one, as llama-imatrix does)."""
    ids = tokenizer.tokenize(text, add_special=False)
    n_seq = min(len(ids), n_tokens) // ctx
    if n_seq < 1:
        raise QuantizeError(f"the calibration text has {len(ids)} tokens; at least --calib-ctx={ctx} are needed")
    arr = np.asarray(ids[: n_seq * ctx], np.int32).reshape(n_seq, ctx)
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        arr[:, 0] = tokenizer.bos_id
    return arr


def calibrate(gf, targets: dict[str, int], opts: "QuantizeOptions", threads: int, log) -> tuple[dict, int]:
    from pyllm.model import ModelConfig
    from pyllm.tokenizer import Tokenizer
    md, tensors = gf.metadata, gf.tensors
    cfg = ModelConfig.from_metadata(md)
    cfg_dict = dataclasses.asdict(cfg)
    tok = Tokenizer.from_metadata(md)
    with open(opts.calib, "rb") as f:
        text = f.read().decode("utf-8")
    ids = calibration_tokens(tok, text, opts.calib_tokens, opts.calib_ctx)
    n_seq, ctx = ids.shape
    log(f"calibration: {n_seq} sequences of {ctx} tokens, method {opts.method}")

    # The residual stream entering layer 0: embedding rows of the calibration tokens.
    assert_finite(gf, "token_embd.weight", threads)
    emb = tensors["token_embd.weight"]
    rows, n = shape_rows(emb)
    raw = gf.tensor_bytes("token_embd.weight").reshape(rows, -1)
    flat = ids.reshape(-1)
    hidden = _core.dequantize(emb["type"], np.ascontiguousarray(raw[flat]), n)

    out: dict[str, np.ndarray] = {}
    used: dict[str, str] = {}   # tensor -> the method that made it
    capture = "full" if opts.method == "gptq" else "diag"
    bar = Progress(cfg.n_layer, "calibrating", opts.progress)
    for layer in range(cfg.n_layer):
        prefix = f"blk.{layer}."
        names = [k for k in tensors if k.startswith(prefix)]
        for k in names:  # a NaN would spread through the layer's statistics: name it here
            assert_finite(gf, k, threads)
        src_layer = {"blk.0." + k[len(prefix):]: (tensors[k]["type"], list(tensors[k]["shape"]), gf.tensor_bytes(k))
                     for k in names}
        hidden_next, stats, n_samples = _core.calibrate_layer(cfg_dict, src_layer, hidden, ctx, threads, capture)
        quant_layer = dict(src_layer)
        for m in _MATRICES:
            name = prefix + m + ".weight"
            if name not in tensors:
                continue
            info, tid = tensors[name], targets[name]
            tname = type_name(tid)
            r, k = shape_rows(info)
            stat = stats[_SITE[m]]
            diag = np.diagonal(stat) if stat.ndim == 2 else stat
            importance = (diag / max(1, n_samples)).astype(np.float32)
            # A floor keeps ggml's weighted search away from all-zero weights in a block.
            importance = np.maximum(importance, 1e-8 * float(importance.mean()) + 1e-30)
            raw_w = gf.tensor_bytes(name).reshape(r, -1)
            if opts.method == "gptq" and tname in GPTQ_TYPES:
                w = _core.dequantize(info["type"], raw_w, k)
                if not np.isfinite(w).all():
                    bad = np.argwhere(~np.isfinite(w))[0]
                    raise QuantizeError(f"tensor {name!r} holds a non-finite value at row {bad[0]}, column {bad[1]}; "
                                        f"refusing to quantize it")
                q, _ = _core.gptq_quantize(tid, w, stat, opts.damp, opts.block, opts.act_order,
                                           opts.gptq_scales == "search", threads)
                used[name] = "gptq"
            elif tname in WEIGHTED_TYPES:
                q = _core.convert_rows(name, info["type"], raw_w, k, tid, threads, importance)
                used[name] = "imatrix"
            elif tid == info["type"]:
                q = np.asarray(raw_w)
                used[name] = "copy"
            else:
                q = _core.convert_rows(name, info["type"], raw_w, k, tid, threads)
                used[name] = "rtn"
            out[name] = q
            quant_layer["blk.0." + m + ".weight"] = (tid, list(info["shape"]), q)
        if opts.method == "gptq":
            # GPTQ's sequential mode: the next layer calibrates on this layer's quantized outputs.
            hidden, _, _ = _core.calibrate_layer(cfg_dict, quant_layer, hidden, ctx, threads, "none")
        else:
            hidden = hidden_next   # llama-imatrix's statistics: activations of the original model
        bar.update(layer + 1, f"layer {layer}")
    bar.close()
    return out, used, int(ids.size)
