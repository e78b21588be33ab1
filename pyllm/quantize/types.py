"""Quantization types and mixes: what a TYPE argument means (llama.cpp's llama_ftype values, stored
in `general.file_type`), and which tensor gets which type (llama.cpp's llama_tensor_get_type rules,
e.g. Q4_K_M's Q6_K for half of attn_v/ffn_down, and the fallbacks for rows that do not fit
256-blocks). Block sizes and capabilities come from the C++ type-traits table (`_core.type_info`).

Not here: converting tensors (pipeline.py, C++ csrc/quant), calibration (calibration.py).
"""
from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import Iterable

from pyllm import _core
from pyllm.errors import QuantizeError

# ---------------------------------------------------------------------------------------------
# File types: what TYPE means (llama.cpp's llama_ftype values, stored in general.file_type)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileType:
    name: str
    ftype: int          # general.file_type (llama_ftype)
    default: str        # the tensor type most tensors get
    note: str = ""      # for --help; mixes say what they mix


FILE_TYPES = {ft.name: ft for ft in [
    FileType("F32", 0, "F32"),
    FileType("F16", 1, "F16"),
    FileType("BF16", 32, "BF16"),
    FileType("Q8_0", 7, "Q8_0"),
    FileType("Q5_1", 9, "Q5_1"),
    FileType("Q5_0", 8, "Q5_0"),
    FileType("Q4_1", 3, "Q4_1"),
    FileType("Q4_0", 2, "Q4_0"),
    FileType("Q6_K", 18, "Q6_K"),
    FileType("Q5_K_M", 17, "Q5_K", "mix: Q5_K, Q6_K for half of attn_v/ffn_down"),
    FileType("Q5_K_S", 16, "Q5_K", "mix: Q5_K"),
    FileType("Q4_K_M", 15, "Q4_K", "mix: Q4_K, Q6_K for half of attn_v/ffn_down"),
    FileType("Q4_K_S", 14, "Q4_K", "mix: Q4_K, Q5_K for the first attn_v/ffn_down"),
    FileType("Q3_K_L", 13, "Q3_K", "mix: Q3_K, Q5_K for attn_v/attn_output/ffn_down"),
    FileType("Q3_K_M", 12, "Q3_K", "mix: Q3_K, Q4_K/Q5_K for attn_v/attn_output/ffn_down"),
    FileType("Q3_K_S", 11, "Q3_K", "mix: Q3_K"),
    FileType("Q2_K", 10, "Q2_K", "mix: Q2_K, Q3_K/Q4_K for attn_v/attn_output/ffn_down"),
    FileType("IQ4_NL", 25, "IQ4_NL", "mix: IQ4_NL, Q5_K for the first ffn_down"),
    FileType("IQ4_XS", 30, "IQ4_XS", "mix: IQ4_XS (IQ4_NL for rows not a multiple of 256), Q5_K for the first ffn_down"),
]}
# llama-quantize's aliases: a bare K type means its _M mix.
ALIASES = {"Q5_K": "Q5_K_M", "Q4_K": "Q4_K_M", "Q3_K": "Q3_K_M"}

METHODS = ("rtn", "imatrix", "gptq")
# Capabilities come from the C++ type-traits table: GPTQ on the block grid, importance-weighted rounding.
GPTQ_TYPES = tuple(_core.type_info(t)["name"] for t in _core.known_types() if _core.type_info(t)["gptq"])
WEIGHTED_TYPES = tuple(_core.type_info(t)["name"] for t in _core.known_types() if _core.type_info(t)["weighted"])


def type_id(name: str) -> int:
    return _core.type_from_name(name)


def type_name(tid: int) -> str:
    return _core.type_info(tid)["name"]


def bits_per_weight(name: str) -> float:
    info = _core.type_info(type_id(name))
    return info["type_size"] * 8 / info["block_size"]


def file_type(name: str) -> FileType:
    key = name.strip().upper()
    key = ALIASES.get(key, key)
    if key not in FILE_TYPES:
        raise QuantizeError(f"unknown type {name!r}; valid types: {', '.join(valid_type_names())}")
    return FILE_TYPES[key]


def valid_type_names() -> list[str]:
    return list(FILE_TYPES) + list(ALIASES)


def tensor_type(name: str) -> int:
    """A single tensor type by name (for --output-tensor-type etc.), case-insensitive."""
    key = name.strip().upper()
    try:
        tid = type_id(key)
    except ValueError:
        tid = None
    if tid is None or not _core.type_info(tid)["is_weight"]:
        valid = [type_name(t) for t in _core.known_types()
                 if _core.type_info(t)["has_quantizer"] and _core.type_info(t)["is_weight"]]
        raise QuantizeError(f"unknown tensor type {name!r}; valid tensor types: {', '.join(valid)}")
    return tid


def types_help() -> str:
    lines = ["types (case-insensitive; bits per weight of the main tensor type):"]
    for ft in FILE_TYPES.values():
        lines.append(f"  {ft.name:7s} {bits_per_weight(ft.default):6.3f} bpw  {ft.note}".rstrip())
    lines.append("  " + ", ".join(f"{a} = {b}" for a, b in ALIASES.items()))
    lines.append("methods: rtn (round to nearest, bit-exact with llama-quantize), imatrix (importance-"
                 f"weighted rounding, {'/'.join(WEIGHTED_TYPES)}), gptq ({'/'.join(GPTQ_TYPES)} tensors; "
                 "other types fall back to rtn)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Per-tensor type choice: llama.cpp's llama_tensor_get_type (src/llama-quant.cpp), same rules
# ---------------------------------------------------------------------------------------------

_NOT_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj",
                  "ssm_conv1d", "shortconv.conv.weight", "time_mix_first.weight", "time_mix_w0.weight",
                  "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight",
                  "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight",
                  "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
                  "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
                  ".position_embd", ".patch_embd", ".rel_pos")


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                     ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                     ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _layer_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def llama_order(names: Iterable[str]) -> list[str]:
    """llama.cpp's tensor order (its loader's map): by layer (non-layer tensors first), then name."""
    return sorted(names, key=lambda n: (_layer_of(n), n))


@dataclass
class TypeOptions:
    pure: bool = False
    leave_output_tensor: bool = False
    output_tensor_type: int | None = None
    token_embedding_type: int | None = None
    tensor_types: list[tuple[re.Pattern, int]] = field(default_factory=list)
    has_imatrix: bool = False


def _allows_quantization(name: str, n_dims: int, opts: TypeOptions, arch: str) -> bool:
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if opts.leave_output_tensor and name == "output.weight":
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    return not any(k in name for k in _NOT_QUANTIZED)


def _fallback(name: str, ncols: int, t: str) -> str:
    """llama.cpp's tensor_type_fallback: K-quants need rows of a multiple of 256."""
    if ncols % _core.type_info(type_id(t))["block_size"] == 0:
        return t
    fb = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}.get(t)
    if fb is None:
        raise QuantizeError(f"tensor {name!r} has rows of {ncols} weights, not a multiple of {t}'s block, "
                            f"and llama.cpp defines no fallback for {t}")
    if ncols % _core.type_info(type_id(fb))["block_size"]:
        fb = "F16"
    return fb


def fallback_summary(fallbacks: dict[str, tuple[str, str]], n_quantized: int) -> str:
    """What llama-quantize says when K-quant rows do not fit: how many tensors fell back, from
    which type to which, and what that costs in bits per weight."""
    counts = collections.Counter(fallbacks.values())
    parts = [f"{n} {want} -> {used} ({bits_per_weight(want):.2f} -> {bits_per_weight(used):.2f} bpw)"
             for (want, used), n in counts.most_common()]
    block = {want: _core.type_info(type_id(want))["block_size"] for want, _ in counts}
    blocks = ", ".join(f"{want}'s {b}" for want, b in block.items())
    return (f"warning: {len(fallbacks)} of {n_quantized} quantized tensors have rows that are not a multiple "
            f"of the type's block ({blocks}) and fell back: {'; '.join(parts)}")


def choose_types(tensors: dict[str, dict], metadata: dict, ft: FileType, opts: TypeOptions,
                 fallbacks: dict[str, tuple[str, str]] | None = None) -> dict[str, int]:
    """name -> target type id for every tensor (those not quantized keep their type). Tensors
    whose rows do not fit the chosen type's blocks are recorded in `fallbacks` (when given) as
    name -> (wanted type, type used)."""
    arch = str(metadata.get("general.architecture", ""))
    n_layer = int(metadata.get(f"{arch}.block_count", 0) or 0)
    n_head = int(metadata.get(f"{arch}.attention.head_count", 1) or 1)
    n_head_kv = int(metadata.get(f"{arch}.attention.head_count_kv", n_head) or n_head)
    n_gqa = n_head // max(1, n_head_kv)
    n_expert = int(metadata.get(f"{arch}.expert_count", 0) or 0)
    falcon = arch == "falcon"
    tied = "output.weight" not in tensors
    names = llama_order(tensors)
    n_attn_v = sum(1 for n in names if _category(n) in ("attn_v", "attn_qkv", "attn_kv_b"))
    state = {"wv": 0, "down": 0}
    ftype = ft.name
    default = ft.default
    default_quantized = _core.type_info(type_id(default))["is_quantized"]

    def use_more_bits(i, n):
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

    def impl(name: str, cat: str, new: str) -> str:
        nx = tensors[name]["shape"][0]
        if cat == "output" or (tied and cat == "token_embd"):
            if opts.output_tensor_type is not None:
                return type_name(opts.output_tensor_type)
            if falcon or nx % _core.type_info(type_id(new))["block_size"]:
                return "Q8_0"
            return new if new == "Q8_0" else "Q6_K"
        if cat == "token_embd":
            return type_name(opts.token_embedding_type) if opts.token_embedding_type is not None else new
        if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
            i = state["wv"]
            if ftype == "Q2_K":
                new = "Q4_K" if n_gqa >= 4 else "Q3_K"
            elif ftype == "Q3_K_M":
                new = "Q5_K" if i < 2 else "Q4_K"
            elif ftype == "Q3_K_L":
                new = "Q5_K"
            elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n_attn_v):
                new = "Q6_K"
            elif ftype == "Q4_K_S" and i < 4:
                new = "Q5_K"
            elif ftype in ("IQ4_NL", "IQ4_XS") and n_gqa >= 4:
                new = "Q5_K"
            if n_expert == 8:
                new = "Q8_0"
            state["wv"] += 1
            return new
        if cat == "attn_k":
            return "Q8_0" if n_expert == 8 else new
        if cat == "ffn_down":
            i = state["down"] if n_expert <= 1 else _layer_of(name)
            n = n_layer
            if ftype == "Q2_K":
                new = "Q3_K"
            elif ftype == "Q3_K_M":
                new = "Q5_K" if i < n // 16 else ("Q4_K" if (not falcon or use_more_bits(i, n)) else "Q3_K")
            elif ftype == "Q3_K_L":
                new = "Q4_K" if falcon else "Q5_K"
            elif ftype == "Q4_K_M":
                if falcon:
                    new = "Q6_K" if i < n // 16 else ("Q5_K" if use_more_bits(i, n) else "Q4_K")
                elif use_more_bits(i, n):
                    new = "Q6_K"
            elif ftype in ("IQ4_NL", "IQ4_XS") and i < n // 8 and not opts.has_imatrix:
                new = "Q5_K"
            elif ftype == "Q5_K_M" and use_more_bits(i, n):
                new = "Q6_K"
            elif ftype == "Q4_K_S" and not falcon and i < n // 8:
                new = "Q5_K"
            elif ftype in ("Q4_0", "Q5_0") and opts.has_imatrix and i < n // 8:
                # llama.cpp guards the first ffn_down layers when an importance matrix is given
                new = "Q4_1" if ftype == "Q4_0" else "Q5_1"
            state["down"] += 1
            return new
        if cat == "attn_output":
            if not falcon:
                if n_expert == 8:
                    if ftype in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M", "IQ4_NL", "IQ4_XS"):
                        new = "Q5_K"
                elif ftype == "Q2_K":
                    new = "Q3_K"
                elif ftype == "Q3_K_M":
                    new = "Q4_K"
                elif ftype == "Q3_K_L":
                    new = "Q5_K"
            elif ftype == "Q3_K_L":
                new = "Q4_K"
            return new
        return new

    out = {}
    for name in names:
        info = tensors[name]
        cat = _category(name)
        if not _allows_quantization(name, len(info["shape"]), opts, arch):
            out[name] = info["type"]
            continue
        if opts.token_embedding_type is not None and cat == "token_embd":
            out[name] = opts.token_embedding_type
            continue
        if opts.output_tensor_type is not None and cat == "output":
            out[name] = opts.output_tensor_type
            continue
        new = default
        if default_quantized:
            manual = False
            for pattern, t in opts.tensor_types:
                if pattern.search(name):
                    new, manual = type_name(t), True
                    break
            if not manual and not opts.pure:
                new = impl(name, cat, new)
            used = _fallback(name, info["shape"][0], new)
            if used != new and fallbacks is not None:
                fallbacks[name] = (new, used)
            new = used
        out[name] = type_id(new)
    return out
