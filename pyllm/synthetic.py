"""Random-weight models of real laptop shapes, for benchmarks anyone can run without a download.

`ensure(name, type)` writes, once, an F16 GGUF of a known Llama shape with random weights (a
sensible scale, so activations stay finite through every layer) and SmolLM2's tokenizer metadata
taken from the default model, then quantizes it with `pyllm quantize`; both files stay in the
model cache (`<cache>/synthetic/`). The text such a model writes is noise: it is for speed only,
never for quality. The same files feed `pyllm bench --synthetic` and tools/bench_vs_llamacpp.py,
so pyllm and llama.cpp read the same bytes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pyllm import hub
from pyllm.errors import PyllmError


@dataclass(frozen=True)
class Shape:
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    tied: bool            # the output matrix is the token embedding (no output.weight)
    rope_base: float = 500000.0


# Llama-3.2-1B, Llama-3.2-3B and Llama-3.1-8B's shapes (with SmolLM2's 49152-token vocabulary).
SHAPES: dict[str, Shape] = {
    "llama-1b": Shape(n_embd=2048, n_layer=16, n_ff=8192, n_head=32, n_head_kv=8, tied=True),
    "llama-3b": Shape(n_embd=3072, n_layer=28, n_ff=8192, n_head=24, n_head_kv=8, tied=True),
    "llama-8b": Shape(n_embd=4096, n_layer=32, n_ff=14336, n_head=32, n_head_kv=8, tied=False),
}


class SyntheticError(PyllmError, ValueError):
    """An unknown synthetic model name."""


def _tokenizer_metadata(src: Path) -> list[tuple[str, str, object]]:
    from pyllm.gguf import GGUFFile
    with GGUFFile(src) as gf:
        types = gf.metadata_types
        return [(k, types[k], v) for k, v in gf.metadata.items() if k.startswith("tokenizer.")]


def _tensors(shape: Shape, n_vocab: int, seed: int):
    """(name, GGUF shape [cols, rows], type, producer) in llama.cpp's file order."""
    from pyllm.gguf import OutTensor
    F32, F16 = 0, 1
    hd = shape.n_embd // shape.n_head
    out: list[OutTensor] = []

    def matrix(name: str, cols: int, rows: int, scale: float, index: int) -> None:
        def produce() -> np.ndarray:
            rng = np.random.default_rng([seed, index])
            w = rng.standard_normal((rows, cols), dtype=np.float32)
            w *= scale
            return w.astype(np.float16)
        out.append(OutTensor(name, [cols, rows], F16, rows * cols * 2, produce))

    def norm(name: str, n: int) -> None:
        out.append(OutTensor(name, [n], F32, n * 4, lambda: np.ones(n, np.float32)))

    e, ff, kv = shape.n_embd, shape.n_ff, shape.n_head_kv * hd
    # Weights ~ N(0, 1/fan_in) keep each projection's output at the input's scale; the embedding is
    # scaled like Llama's (std ~0.02), and RMSNorm renormalizes before every matrix.
    matrix("token_embd.weight", e, n_vocab, 0.02, 0)
    norm("output_norm.weight", e)
    if not shape.tied:
        matrix("output.weight", e, n_vocab, 1.0 / np.sqrt(e), 1)
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        base = 16 * (i + 1)
        norm(p + "attn_norm.weight", e)
        matrix(p + "attn_q.weight", e, e, 1.0 / np.sqrt(e), base + 0)
        matrix(p + "attn_k.weight", e, kv, 1.0 / np.sqrt(e), base + 1)
        matrix(p + "attn_v.weight", e, kv, 1.0 / np.sqrt(e), base + 2)
        matrix(p + "attn_output.weight", e, e, 1.0 / np.sqrt(e), base + 3)
        norm(p + "ffn_norm.weight", e)
        matrix(p + "ffn_gate.weight", e, ff, 1.0 / np.sqrt(e), base + 4)
        matrix(p + "ffn_up.weight", e, ff, 1.0 / np.sqrt(e), base + 5)
        matrix(p + "ffn_down.weight", ff, e, 1.0 / np.sqrt(ff), base + 6)
    return out


def write_f16(name: str, shape: Shape, dst: Path, tokenizer_src: Path, seed: int = 0, workers: int = 1) -> None:
    """Writes the F16 GGUF of `shape` to dst (atomically)."""
    from pyllm.gguf import write_atomically, write_gguf
    tok = _tokenizer_metadata(tokenizer_src)
    vocab = next(v for k, _, v in tok if k == "tokenizer.ggml.tokens")
    n_vocab = len(vocab)
    hd = shape.n_embd // shape.n_head
    md: list[tuple[str, str, object]] = [
        ("general.architecture", "STRING", "llama"),
        ("general.type", "STRING", "model"),
        ("general.name", "STRING", f"synthetic {name} (random weights)"),
        ("llama.block_count", "UINT32", shape.n_layer),
        ("llama.context_length", "UINT32", 8192),
        ("llama.embedding_length", "UINT32", shape.n_embd),
        ("llama.feed_forward_length", "UINT32", shape.n_ff),
        ("llama.attention.head_count", "UINT32", shape.n_head),
        ("llama.attention.head_count_kv", "UINT32", shape.n_head_kv),
        ("llama.rope.freq_base", "FLOAT32", shape.rope_base),
        ("llama.attention.layer_norm_rms_epsilon", "FLOAT32", 1e-5),
        ("general.file_type", "UINT32", 1),
        ("llama.vocab_size", "UINT32", n_vocab),
        ("llama.rope.dimension_count", "UINT32", hd),
    ] + tok
    tensors = _tensors(shape, n_vocab, seed)
    write_atomically(os.fspath(dst), lambda f: write_gguf(f, md, tensors, 32, workers=workers))


def ensure(name: str, type_name: str = "Q4_K_M", log: Callable[[str], None] | None = None,
           tokenizer_src: Path | None = None) -> Path:
    """The path of the synthetic model `name` quantized to `type_name` (F16: unquantized), made
    once in the cache. The tokenizer comes from tokenizer_src (default: the default model)."""
    if name not in SHAPES:
        raise SyntheticError(f"unknown synthetic model {name!r}; choose one of {', '.join(SHAPES)}")
    from pyllm import quantize
    log = log or (lambda s: None)
    type_name = type_name.upper()
    quantize.file_type(type_name)  # raises QuantizeError for an unknown type, before any work
    folder = hub.cache_dir() / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    f16 = folder / f"{name}.F16.gguf"
    if not f16.exists():
        log(f"writing {f16} (random weights, once)")
        write_f16(name, SHAPES[name], f16, tokenizer_src or hub.resolve(hub.DEFAULT_MODEL), workers=2)
    if type_name == "F16":
        return f16
    out = folder / f"{name}.{type_name}.gguf"
    if not out.exists():
        log(f"quantizing to {out} (once)")
        quantize.quantize_file(f16, out, type_name)
    return out
