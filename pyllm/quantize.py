"""`pyllm quantize`: convert a GGUF model to another tensor type, round-to-nearest (bit-exact with
llama.cpp's llama-quantize, including its per-tensor mixes such as Q4_K_M), importance-weighted
(`--method imatrix`), or with GPTQ (`--method gptq`) calibrated through pyllm's own forward pass.

The output is written to a temporary file next to the destination and renamed at the end: an
error, a full disk or Ctrl-C leaves no partial file, and the input is only ever read.

Not here: the quantizers themselves (C++: csrc/quant), the forward pass (csrc/model), the
measurement of quality (pyllm.perplexity).
"""
from __future__ import annotations

import argparse
import dataclasses
import collections
import hashlib
import itertools
import os
import re
import stat
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

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


# ---------------------------------------------------------------------------------------------
# GGUF writing (our own: streams tensor data, keeps every metadata value's type)
# ---------------------------------------------------------------------------------------------

# Value type ids from the C++ reader's table (gguf/gguf.h); here only their struct formats.
_VALUE_TYPES = _core.gguf_value_types()
_SCALARS = {name: (_VALUE_TYPES[name], fmt) for name, fmt in (
    ("UINT8", "<B"), ("INT8", "<b"), ("UINT16", "<H"), ("INT16", "<h"), ("UINT32", "<I"), ("INT32", "<i"),
    ("FLOAT32", "<f"), ("BOOL", "<?"), ("UINT64", "<Q"), ("INT64", "<q"), ("FLOAT64", "<d"))}
_STRING, _ARRAY = _VALUE_TYPES["STRING"], _VALUE_TYPES["ARRAY"]
_U64 = struct.Struct("<Q")


def _gguf_string(s: str | bytes) -> bytes:
    b = s if isinstance(s, bytes) else s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _infer_type(v: Any) -> str:
    if isinstance(v, bool):
        return "BOOL"
    if isinstance(v, int):
        return "INT32" if -2**31 <= v < 2**31 else "INT64"
    if isinstance(v, float):
        return "FLOAT32"
    if isinstance(v, (str, bytes)):
        return "STRING"
    if isinstance(v, np.ndarray):  # the reader's big numeric arrays
        return "ARRAY[" + {"?": "BOOL", "b": "INT8", "B": "UINT8", "h": "INT16", "H": "UINT16", "i": "INT32",
                           "I": "UINT32", "q": "INT64", "Q": "UINT64", "l": "INT64", "L": "UINT64",
                           "f": "FLOAT32", "d": "FLOAT64"}[v.dtype.char] + "]"
    if isinstance(v, list):
        return "ARRAY[" + (_infer_type(v[0]) if v else "INT32") + "]"
    raise QuantizeError(f"cannot store metadata value {v!r}")


def _value_type_id(vtype: str) -> int:
    if vtype == "STRING":
        return _STRING
    if vtype.startswith("ARRAY"):
        return _ARRAY
    return _SCALARS[vtype][0]


def _encode_value(vtype: str, v: Any) -> bytes:
    """The bytes of a value (without its type id), given our reader's type description."""
    if vtype == "STRING":
        return _gguf_string(v)
    if vtype in _SCALARS:
        return struct.pack(_SCALARS[vtype][1], v)
    if not vtype.startswith("ARRAY"):
        raise QuantizeError(f"unknown metadata type {vtype}")
    inner = vtype[6:-1] if vtype.startswith("ARRAY[") else ""
    if inner in ("", "ARRAY"):  # nested arrays whose element types our reader could not name
        inner = _infer_type(v[0]) if v else "INT32"
        if inner.startswith("ARRAY"):  # each item carries its own element type and count
            return struct.pack("<IQ", _ARRAY, len(v)) + b"".join(_encode_value(_infer_type(x), x) for x in v)
    head = struct.pack("<IQ", _value_type_id(inner), len(v))
    if inner in _SCALARS:
        if isinstance(v, np.ndarray):  # the reader's big numeric arrays: no per-element packing
            return head + np.ascontiguousarray(v, dtype=np.dtype(_SCALARS[inner][1])).tobytes()
        return head + struct.pack("<" + _SCALARS[inner][1][1] * len(v), *v)
    if inner == "STRING":  # a vocabulary: ~100k strings, so no Python-level loop per item
        items = [x if isinstance(x, bytes) else x.encode("utf-8") for x in v]
        lengths = map(_U64.pack, map(len, items))
        return head + b"".join(itertools.chain.from_iterable(zip(lengths, items)))
    return head + b"".join(_encode_value(inner, item) for item in v)


@dataclass
class OutTensor:
    name: str
    shape: list[int]
    type: int
    nbytes: int
    produce: Callable[[], Any]   # returns a buffer of nbytes


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def write_gguf(f, metadata: list[tuple[str, str, Any]], tensors: list[OutTensor], alignment: int,
               on_tensor: Callable[[int, OutTensor], None] | None = None, workers: int = 1) -> int:
    """Writes a GGUF v3 file to the open binary file f; returns the bytes written. With workers > 1
    the tensors are produced ahead on that many threads (produce releases the GIL in C++) while
    earlier ones are written, in file order."""
    header = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    for key, vtype, value in metadata:
        header.append(_gguf_string(key) + struct.pack("<I", _value_type_id(vtype)) + _encode_value(vtype, value))
    offset = 0
    for t in tensors:
        header.append(_gguf_string(t.name) + struct.pack("<I", len(t.shape)) +
                      struct.pack(f"<{len(t.shape)}Q", *t.shape) + struct.pack("<IQ", t.type, offset))
        offset = _align(offset + t.nbytes, alignment)
    blob = b"".join(header)
    f.write(blob)
    pos = len(blob)
    pad = _align(pos, alignment) - pos
    f.write(b"\0" * pad)
    pos += pad
    for i, (t, buf) in enumerate(zip(tensors, _produced(tensors, workers))):
        data = memoryview(buf).cast("B")
        if data.nbytes != t.nbytes:
            raise QuantizeError(f"tensor {t.name!r}: produced {data.nbytes} bytes, expected {t.nbytes}")
        f.write(data)
        pad = _align(t.nbytes, alignment) - t.nbytes
        f.write(b"\0" * pad)
        pos += t.nbytes + pad
        if on_tensor:
            on_tensor(i, t)
    return pos


def _produced(tensors: list[OutTensor], workers: int, max_ahead_bytes: int = 256 << 20) -> Iterable[Any]:
    """Each tensor's data, in order. With several workers, later tensors are produced while an
    earlier one is still being made or written: up to 16 per worker, and 256 MiB, ahead (one big
    tensor, a vocabulary matrix say, then does not hold up the many small ones behind it)."""
    if workers <= 1:
        for t in tensors:
            yield t.produce()
        return
    from concurrent.futures import ThreadPoolExecutor
    pending: list = []  # futures, in file order
    ahead_bytes = 0
    nxt = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="pyllm-quantize") as pool:
        try:
            for i in range(len(tensors)):
                while nxt < len(tensors) and (nxt == i or (len(pending) < 16 * workers and
                                                          ahead_bytes + tensors[nxt].nbytes <= max_ahead_bytes)):
                    pending.append(pool.submit(tensors[nxt].produce))
                    ahead_bytes += tensors[nxt].nbytes
                    nxt += 1
                data = pending.pop(0).result()
                ahead_bytes -= tensors[i].nbytes
                yield data
        finally:  # an error or Ctrl-C: drop what has not started, wait for what has
            for fut in pending:
                fut.cancel()


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------

class Progress:
    """A one-line bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total: int, label: str, enabled: bool | None = None):
        self.total, self.label = max(1, total), label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()

    def update(self, done: int, what: str = "") -> None:
        if not self.enabled:
            return
        frac = min(1.0, done / self.total)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{self.label} [{bar:30s}] {100 * frac:5.1f}% {what[:40]:40s}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write(f"\r{self.label} done in {time.perf_counter() - self.t0:.1f} s" + " " * 60 + "\n")
            sys.stderr.flush()


# ---------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------

@dataclass
class QuantizeOptions:
    threads: int | None = None
    types: TypeOptions = field(default_factory=TypeOptions)
    allow_requantize: bool = False
    dry_run: bool = False
    method: str = "rtn"
    calib: str | None = None
    calib_tokens: int = 65536
    calib_ctx: int = 512
    damp: float = 0.01
    block: int = 128
    act_order: bool = True             # GPTQ columns by decreasing H_jj, static groups
    gptq_scales: str = "search"        # "search" (importance-weighted fit) or "minmax" (reference rule)
    progress: bool | None = None       # None: when stderr is a terminal


@dataclass
class QuantizeReport:
    types: dict[str, str]              # tensor -> type name written
    methods: dict[str, str]            # tensor -> rtn | imatrix | gptq | copy
    input_bytes: int
    output_bytes: int
    n_params: int
    seconds: float
    calib_seconds: float = 0.0
    calib_tokens: int = 0
    fallbacks: dict[str, tuple[str, str]] = field(default_factory=dict)  # tensor -> (wanted, used)

    def bpw(self) -> float:
        return 8 * self.output_bytes / max(1, self.n_params)


def _shape_rows(info: dict) -> tuple[int, int]:
    n = info["shape"][0]
    return info["n_elements"] // n, n


def _tensor_nbytes(tid: int, info: dict) -> int:
    rows, n = _shape_rows(info)
    ti = _core.type_info(tid)
    if n % ti["block_size"]:
        raise QuantizeError(f"tensor {info['name']!r}: rows of {n} do not fit {ti['name']} blocks of {ti['block_size']}")
    return rows * (n // ti["block_size"]) * ti["type_size"]


def _assert_finite(gf, name: str, threads: int) -> None:
    """Raises QuantizeError naming the tensor, row and column of its first NaN/inf (the decoder
    reports it), in slices of rows so that memory stays bounded."""
    info = gf.tensors[name]
    rows, n = _shape_rows(info)
    raw = gf.tensor_bytes(name).reshape(rows, -1)
    step = max(1, (1 << 22) // n)
    for r0 in range(0, rows, step):
        try:
            _core.convert_rows(name, info["type"], raw[r0:r0 + step], n, type_id("F32"), threads)
        except QuantizeError as e:
            msg = str(e)
            m = re.search(r"at row (\d+)", msg)
            if m and r0:
                msg = msg.replace(m.group(0), f"at row {int(m.group(1)) + r0}")
            raise QuantizeError(msg) from None


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _check_output_kind(dst: str) -> None:
    """The output may be new or an existing regular file (a symlink is followed to its target):
    never a device, FIFO, socket or directory, which the rename at the end would replace."""
    try:
        mode = os.stat(dst).st_mode  # follows symlinks
    except FileNotFoundError:
        return
    except OSError as e:
        raise QuantizeError(f"cannot check the output {dst!r}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise QuantizeError(f"output {dst!r} exists and is {kind}; pyllm writes only new or regular files")


def _check_paths(src: str, dst: str) -> None:
    if not os.path.isfile(src):
        raise QuantizeError(f"input {src!r} is not a file")
    _check_output_kind(dst)
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise QuantizeError(f"output {dst!r} is the input file; choose another output path")
    if os.path.realpath(src) == os.path.realpath(dst):
        raise QuantizeError(f"output {dst!r} is the input file; choose another output path")
    d = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(d):
        raise QuantizeError(f"output directory {d!r} does not exist")


def quantize_file(src: str | os.PathLike, dst: str | os.PathLike, type_name_: str,
                  opts: QuantizeOptions | None = None, log: Callable[[str], None] | None = None) -> QuantizeReport:
    """Quantizes the GGUF file src to dst (see the module doc). Raises QuantizeError, OSError or
    KeyboardInterrupt; in every case dst is left as it was and no temporary file remains."""
    from pyllm.gguffile import GGUFFile
    opts = opts or QuantizeOptions()
    log = log or (lambda s: None)
    src, dst = os.fspath(src), os.fspath(dst)
    ft = file_type(type_name_)
    if opts.method not in METHODS:
        raise QuantizeError(f"unknown method {opts.method!r}; choose one of {', '.join(METHODS)}")
    if opts.method != "rtn" and not opts.calib:
        raise QuantizeError(f"--method {opts.method} needs calibration text: --calib FILE.txt")
    if not opts.dry_run:
        _check_paths(src, dst)
    threads = opts.threads or _core.default_threads()
    t_start = time.perf_counter()
    gf = GGUFFile(src)
    try:
        md = gf.metadata
        tensors = gf.tensors
        if not tensors:
            raise QuantizeError(f"{src} holds no tensors: there is nothing to quantize")
        for name, info in tensors.items():
            if not info["supported"]:
                raise QuantizeError(f"tensor {name!r} has type {info['type_name']}, which pyllm cannot read "
                                    f"the values of; quantize from the F16/F32 original instead")
        topts = dataclasses.replace(opts.types, has_imatrix=opts.types.has_imatrix or opts.method == "imatrix")
        fallbacks: dict[str, tuple[str, str]] = {}
        targets = choose_types(tensors, md, ft, topts, fallbacks)
        if fallbacks:
            log(fallback_summary(fallbacks, sum(1 for t in targets.values() if _core.type_info(t)["is_quantized"])))
        order = llama_order(tensors)

        # Refuse before any work: a quantized input is only requantized on request.
        if not opts.allow_requantize and not opts.dry_run:
            for name in order:
                src_t, dst_t = tensors[name]["type"], targets[name]
                if src_t != dst_t and dst_t != type_id("F32") and _core.type_info(src_t)["is_quantized"]:
                    raise QuantizeError(
                        f"{src} is already quantized (tensor {name!r} is {type_name(src_t)}); requantizing "
                        f"loses quality compared with quantizing the original weights. Pass --allow-requantize "
                        f"to do it anyway.")

        out_tensors = []
        methods = {}
        for name in order:
            info = tensors[name]
            tid = targets[name]
            out_tensors.append(OutTensor(name, list(info["shape"]), tid, _tensor_nbytes(tid, info), lambda: b""))
            methods[name] = "copy" if tid == info["type"] else "rtn"
        report = QuantizeReport(types={t.name: type_name(t.type) for t in out_tensors}, methods=methods,
                                input_bytes=sum(t["nbytes"] for t in tensors.values()),
                                output_bytes=sum(t.nbytes for t in out_tensors),
                                n_params=sum(t["n_elements"] for t in tensors.values()), seconds=0.0,
                                fallbacks=fallbacks)
        if opts.dry_run:
            report.seconds = time.perf_counter() - t_start
            return report

        # Calibrated tensors are computed first (layer by layer), the rest while writing.
        calibrated: dict[str, np.ndarray] = {}
        if opts.method != "rtn":
            t_cal = time.perf_counter()
            calibrated, used, n_tok = _calibrate(gf, targets, opts, threads, log)
            report.calib_seconds = time.perf_counter() - t_cal
            report.calib_tokens = n_tok
            methods.update(used)

        def producer(name: str, tid: int):
            def produce():
                if name in calibrated:
                    return calibrated.pop(name)
                info = tensors[name]
                raw = gf.tensor_bytes(name)
                if tid == info["type"]:
                    _assert_finite(gf, name, 1)
                    return raw
                rows, n = _shape_rows(info)
                # One thread per tensor: tensors are converted `threads` at a time (write_gguf).
                return _core.convert_rows(name, info["type"], raw.reshape(rows, -1), n, tid, 1)
            return produce

        for t in out_tensors:
            t.produce = producer(t.name, t.type)
        metadata = _output_metadata(gf, ft, opts, report, src)
        alignment = int(md.get("general.alignment", 32))
        bar = Progress(len(out_tensors), "writing", opts.progress)
        _write_atomically(dst, lambda f: write_gguf(f, metadata, out_tensors, alignment,
                                                    lambda i, t: bar.update(i + 1, t.name), workers=threads))
        bar.close()
        report.seconds = time.perf_counter() - t_start
        return report
    finally:
        gf.close()


def _output_metadata(gf, ft: FileType, opts: QuantizeOptions, report: QuantizeReport, src: str):
    from pyllm import __version__
    md, mt = gf.metadata, gf.metadata_types
    out = []
    skip = {"general.file_type", "general.quantization_version", "split.no", "split.count", "split.tensors.count"}
    for key, vtype in mt.items():
        if key in skip or key.startswith("pyllm.quantize."):
            continue
        out.append((key, vtype, md[key]))
    out.append(("general.quantization_version", "UINT32", 2))
    out.append(("general.file_type", "UINT32", ft.ftype))
    prov = [("pyllm.quantize.version", "STRING", __version__),
            ("pyllm.quantize.type", "STRING", ft.name),
            ("pyllm.quantize.method", "STRING", opts.method),
            ("pyllm.quantize.source", "STRING", os.path.basename(src))]
    if opts.method != "rtn":
        with open(opts.calib, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        prov += [("pyllm.quantize.calib.file", "STRING", os.path.basename(opts.calib)),
                 ("pyllm.quantize.calib.sha256", "STRING", digest),
                 ("pyllm.quantize.calib.tokens", "UINT32", report.calib_tokens),
                 ("pyllm.quantize.calib.ctx", "UINT32", opts.calib_ctx)]
    if opts.method == "gptq":
        prov += [("pyllm.quantize.gptq.damp", "FLOAT32", opts.damp),
                 ("pyllm.quantize.gptq.block", "UINT32", opts.block),
                 ("pyllm.quantize.gptq.act_order", "BOOL", opts.act_order),
                 ("pyllm.quantize.gptq.scales", "STRING", opts.gptq_scales)]
    return out + prov


def _write_atomically(dst: str, write: Callable[[Any], Any]) -> None:
    """Writes through a temporary file in dst's directory, fsyncs, then renames it over dst. On any
    failure (disk full, Ctrl-C, ...) the temporary file is removed and dst is untouched. A
    symlink dst is followed: its target is replaced, in the target's directory."""
    dst = os.path.realpath(dst)
    d = os.path.dirname(dst)
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(dst) + ".", suffix=".part")
    except OSError as e:
        raise QuantizeError(f"cannot create the output in {d!r}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_umask())
        _check_output_kind(dst)  # again: something else may have appeared there meanwhile
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ---------------------------------------------------------------------------------------------
# Calibration: imatrix and GPTQ, layer by layer through pyllm's own forward pass
# ---------------------------------------------------------------------------------------------

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


def _calibrate(gf, targets: dict[str, int], opts: QuantizeOptions, threads: int, log) -> tuple[dict, int]:
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
    _assert_finite(gf, "token_embd.weight", threads)
    emb = tensors["token_embd.weight"]
    rows, n = _shape_rows(emb)
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
            _assert_finite(gf, k, threads)
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
            r, k = _shape_rows(info)
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


# ---------------------------------------------------------------------------------------------
# Command line: `pyllm quantize IN.gguf OUT.gguf TYPE`
# ---------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = types_help()
    p.add_argument("input", help="GGUF model to read (never modified)")
    p.add_argument("output", help="GGUF file to write")
    p.add_argument("type", help="target type (see the list below)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: physical cores)")
    p.add_argument("--pure", action="store_true", help="one type for every tensor (no mix rules)")
    p.add_argument("--leave-output-tensor", action="store_true", help="keep output.weight as it is")
    p.add_argument("--output-tensor-type", metavar="T", help="type of output.weight")
    p.add_argument("--token-embedding-type", metavar="T", help="type of token_embd.weight")
    p.add_argument("--tensor-type", action="append", default=[], metavar="REGEX=T",
                   help="type of the tensors whose name matches REGEX (repeatable; first match wins)")
    p.add_argument("--dry-run", action="store_true", help="print each tensor's type and the output size; write nothing")
    p.add_argument("--allow-requantize", action="store_true", help="accept an input that is already quantized")
    p.add_argument("--method", choices=METHODS, default="rtn", help="rounding method (default rtn)")
    p.add_argument("--calib", metavar="FILE.txt", help="calibration text for imatrix and gptq")
    p.add_argument("--calib-tokens", type=int, default=65536, help="calibration tokens (default 65536)")
    p.add_argument("--calib-ctx", type=int, default=512, help="tokens per calibration sequence (default 512)")
    p.add_argument("--damp", type=float, default=0.01, help="GPTQ damping, fraction of mean(diag H) (default 0.01)")
    p.add_argument("--block", type=int, default=128, help="GPTQ lazy-update block, a multiple of 32 (default 128)")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=True,
                   help="GPTQ: solve columns by decreasing activation energy, block scales fixed from the "
                        "original weights (static groups); on by default: on SmolLM2 Q4_0 it cuts the "
                        "KL-divergence of plain GPTQ by a third")
    p.add_argument("--gptq-scales", choices=("search", "minmax"), default="search",
                   help="GPTQ block scales: importance-weighted search (default) or the reference min/max rule")


def options_from_args(args: argparse.Namespace) -> QuantizeOptions:
    tt = []
    for spec in args.tensor_type:
        if "=" not in spec:
            raise QuantizeError(f"--tensor-type expects REGEX=TYPE, got {spec!r}")
        pattern, t = spec.rsplit("=", 1)
        try:
            tt.append((re.compile(pattern), tensor_type(t)))
        except re.error as e:
            raise QuantizeError(f"--tensor-type {spec!r}: bad regular expression: {e}") from e
    types = TypeOptions(pure=args.pure, leave_output_tensor=args.leave_output_tensor,
                        output_tensor_type=tensor_type(args.output_tensor_type) if args.output_tensor_type else None,
                        token_embedding_type=tensor_type(args.token_embedding_type) if args.token_embedding_type else None,
                        tensor_types=tt)
    if args.block < 32 or args.block % 32:
        raise QuantizeError(f"--block must be a positive multiple of 32, got {args.block}")
    if args.calib_ctx < 2:
        raise QuantizeError(f"--calib-ctx must be at least 2, got {args.calib_ctx}")
    return QuantizeOptions(threads=args.threads, types=types, allow_requantize=args.allow_requantize,
                           dry_run=args.dry_run, method=args.method, calib=args.calib,
                           calib_tokens=args.calib_tokens, calib_ctx=args.calib_ctx, damp=args.damp,
                           block=args.block, act_order=args.act_order, gptq_scales=args.gptq_scales)


def run(args: argparse.Namespace) -> int:
    def log(s):
        sys.stderr.write(s + "\n")
    try:
        opts = options_from_args(args)
        report = quantize_file(args.input, args.output, args.type, opts, log)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted; nothing was written\n")
        return 130
    except (QuantizeError, OSError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    if opts.dry_run:
        for name, t in report.types.items():
            print(f"{name:40s} {t}")
    mib = 1 / 2**20
    print(f"{'would write' if opts.dry_run else 'wrote ' + args.output + ':'} "
          f"{report.output_bytes * mib:.1f} MiB of tensors ({report.bpw():.2f} bits per weight; input "
          f"{report.input_bytes * mib:.1f} MiB) in {report.seconds:.1f} s"
          + (f", calibration {report.calib_seconds:.1f} s on {report.calib_tokens} tokens"
             if report.calib_tokens else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pyllm quantize", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
