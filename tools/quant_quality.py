"""The quantization quality table of issue 4: for each type and method, perplexity, mean and
99th-percentile KL-divergence and top-1 agreement against a base model, and the calibration time.

Base = the model dequantized to F32 (for the shipped Q4_1 SmolLM2, the exact weights every other
file is made from). Its log-probs are computed once and kept in memory (float32, so the KL is exact).

    PYTHONPATH=. python tools/quant_quality.py --chunks 16 --calib-tokens 65536 --out /tmp/qq

Writes DIR/quality.json and prints a markdown table. Long: each evaluation is one forward pass over
chunks x 512 tokens, each gptq calibration two passes over the calibration tokens per layer.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyllm import hub  # noqa: E402
from pyllm.model import Model  # noqa: E402
from pyllm.perplexity import perplexity  # noqa: E402
from pyllm.quantize import QuantizeOptions, quantize_file  # noqa: E402


def log(msg: str) -> None:
    sys.stderr.write(time.strftime("%H:%M:%S ") + msg + "\n")
    sys.stderr.flush()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="GGUF model (default: the shipped SmolLM2 Q4_1)")
    p.add_argument("--eval", default="/work/shared/data/wikitext-2-test.txt", help="evaluation text")
    p.add_argument("--calib", default="/work/shared/data/calibration.txt", help="calibration text")
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--calib-tokens", type=int, default=65536)
    p.add_argument("--calib-ctx", type=int, default=512)
    p.add_argument("--types", default="Q4_0,Q4_1,Q5_0,Q5_1,Q8_0")
    p.add_argument("--methods", default="rtn,imatrix,gptq")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--gptq-scales", default="search", choices=("search", "minmax"))
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="/tmp/pyllm-quant-quality")
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = str(args.model or hub.pull("smollm2-135m-instruct", quiet=True))
    text = Path(args.eval).read_bytes().decode("utf-8")

    base_path = out / "base-f32.gguf"
    if not base_path.exists():
        quantize_file(src, base_path, "F32")
    base = Model(base_path, n_ctx=args.ctx, n_threads=args.threads)
    log(f"base: {base_path}, {args.chunks} chunks of {args.ctx}")
    base_res = perplexity(base, text, ctx=args.ctx, chunks=args.chunks, keep_logprobs=True,
                          progress=lambda i, n, v: log(f"  base [{i + 1}/{n}] {v:.4f}"))
    base.close()
    rows = [{"type": "F32 (base)", "method": "-", "ppl": base_res.ppl}]
    log(f"base PPL {base_res.ppl:.4f}")

    results_path = out / "quality.json"
    for tname in args.types.split(","):
        for method in args.methods.split(","):
            dst = out / f"{tname.lower()}-{method}.gguf"
            opts = QuantizeOptions(threads=args.threads, allow_requantize=True, method=method,
                                   calib=args.calib if method != "rtn" else None, calib_tokens=args.calib_tokens,
                                   calib_ctx=args.calib_ctx, damp=args.damp, act_order=args.act_order,
                                   gptq_scales=args.gptq_scales, progress=False)
            t0 = time.perf_counter()
            rep = quantize_file(src, dst, tname, opts, log)
            q_seconds = time.perf_counter() - t0
            m = Model(dst, n_ctx=args.ctx, n_threads=args.threads)
            res = perplexity(m, text, ctx=args.ctx, chunks=args.chunks, kl_base=base_res.logprobs)
            m.close()
            row = {"type": tname, "method": method, "ppl": res.ppl, "mean_kld": res.kl.mean_kld,
                   "p99_kld": res.kl.p99_kld, "same_top1": res.kl.same_top1, "delta_ppl": res.kl.delta_ppl,
                   "quantize_seconds": q_seconds, "calib_seconds": rep.calib_seconds,
                   "calib_tokens": rep.calib_tokens, "bpw": rep.bpw(), "chunks": res.n_chunks}
            rows.append(row)
            log(f"{tname} {method}: PPL {res.ppl:.3f} KLD {res.kl.mean_kld:.4f} p99 {res.kl.p99_kld:.3f} "
                f"top1 {100 * res.kl.same_top1:.1f}% quantize {q_seconds:.0f}s")
            results_path.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
            os.unlink(dst)

    print(f"| type | method | PPL | mean KLD | p99 KLD | same top-1 | bpw | calibration |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["method"] == "-":
            print(f"| {r['type']} | - | {r['ppl']:.3f} | | | | | |")
            continue
        cal = f"{r['calib_seconds']:.0f} s ({r['calib_tokens']} tok)" if r["calib_tokens"] else "-"
        print(f"| {r['type']} | {r['method']} | {r['ppl']:.3f} | {r['mean_kld']:.4f} | {r['p99_kld']:.3f} | "
              f"{100 * r['same_top1']:.1f}% | {r['bpw']:.2f} | {cal} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
