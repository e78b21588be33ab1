#!/usr/bin/env python3
"""Micro-benchmark of the GEMM kernels, one thread, per ISA and weight type.

Decode shapes (n_tok = 1) report GB/s of weight bytes streamed; the prefill shape (n_tok = 256)
reports GFLOP/s (2*rows*k*n_tok per call). K-quants need k % 256 == 0: they run at k = 768. Each number is the best of several timed repeats, and it
includes quantizing the activations (as the model's matmul does). Types the ISA repacks get a second line, isa/x8: the row-interleaved
layout the model uses (repacked once, outside the timing). SmolLM2-135M's shapes: hidden 576,
q/o 576x576, ffn 1536x576, vocab 49152x576.

    PYTHONPATH=. python3 tools/kernel_bench.py [--types Q4_0,Q8_0] [--isas ref,avx2] [--quick] [--llama-1b]

--llama-1b uses Llama-3.2-1B's shapes instead (k a multiple of 256, so K-quants run at their real
widths): decode ffn 8192x2048 and down 2048x8192, prefill 8192x2048 x 256 tokens.
"""
import argparse
import time

import numpy as np

from pyllm import _core

DECODE_SHAPES = [(1536, 576), (49152, 576)]
PREFILL_SHAPE = (1536, 576, 256)
DEFAULT_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def best_time(fn, min_total=0.25, repeats=5):
    fn()  # warm caches and page in
    best = float("inf")
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_total / repeats:
                break
        best = min(best, dt / n)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES))
    ap.add_argument("--isas", default=",".join(_core.available_isas()))
    ap.add_argument("--quick", action="store_true", help="shorter timing, skip ref prefill")
    ap.add_argument("--llama-1b", action="store_true", help="Llama-3.2-1B's matrix shapes")
    args = ap.parse_args()
    global DECODE_SHAPES, PREFILL_SHAPE
    if args.llama_1b:
        DECODE_SHAPES, PREFILL_SHAPE = [(8192, 2048), (2048, 8192)], (8192, 2048, 256)
    isas = [i for i in args.isas.split(",") if i]
    rng = np.random.default_rng(0)
    print(f"cpu: {_core.cpu_features()}")
    head = f"{'type':6} {'isa':10}" + "".join(f" {f'{r}x{k} GB/s':>15}" for r, k in DECODE_SHAPES)
    head += f" {'prefill GFLOP/s':>16}"
    print(head)
    for name in args.types.split(","):
        tid = _core.type_from_name(name)
        info = _core.type_info(tid)
        if not info["has_quantizer"]:
            continue
        bs = info["block_size"]
        fit = lambda k: -(-k // bs) * bs  # noqa: E731  (k rounded up to whole blocks)
        weights = {}
        for rows, k in DECODE_SHAPES + [PREFILL_SHAPE[:2]]:
            k = fit(k)
            if (rows, k) not in weights:
                try:
                    weights[(rows, k)] = _core.quantize(tid, rng.standard_normal((rows, k)).astype(np.float32) * 0.02)
                except Exception as e:  # a type whose reference quantizer is missing in this build
                    print(f"{name:6} skipped: {e}")
                    break
        if len(weights) < len({(r, fit(k)) for r, k in DECODE_SHAPES + [PREFILL_SHAPE[:2]]}):
            continue
        for isa in isas:
            # The plain file layout, and the x8 layout the model repacks to where the ISA has it.
            for x8 in (False, True) if tid in _core.x8_types(isa) else (False,):
                if x8:
                    packed = {shape: _core.repack_x8(isa, tid, w, shape[1]) for shape, w in weights.items()}
                    mm = lambda w, k, x: _core.matmul_x8(isa, tid, packed[(w.shape[0], k)], k, x, packed=True)  # noqa: E731
                else:
                    mm = lambda w, k, x: _core.matmul(isa, tid, w, k, x)  # noqa: E731
                cells = []
                for rows, k in DECODE_SHAPES:
                    k = fit(k)
                    w = weights[(rows, k)]
                    x = rng.standard_normal((1, k)).astype(np.float32)
                    dt = best_time(lambda: mm(w, k, x), 0.1 if args.quick else 0.4)
                    cells.append(f" {w.nbytes / dt / 1e9:15.2f}")
                rows, k, n_tok = PREFILL_SHAPE
                k = fit(k)
                if isa == "ref" and args.quick:
                    cells.append(f" {'-':>16}")
                else:
                    w = weights[(rows, k)]
                    x = rng.standard_normal((n_tok, k)).astype(np.float32)
                    dt = best_time(lambda: mm(w, k, x), 0.2 if args.quick else 0.6, 3)
                    cells.append(f" {2 * rows * k * n_tok / dt / 1e9:16.1f}")
                label = isa + ("/x8" if x8 else "")
                print(f"{name:6} {label:10}" + "".join(cells) + ("" if fit(576) == 576 or args.llama_1b else f"   (k={fit(576)})"), flush=True)

if __name__ == "__main__":
    main()
