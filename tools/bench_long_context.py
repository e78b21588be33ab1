#!/usr/bin/env python3
"""Decode speed with a long context, pyllm against llama.cpp's llama-bench, side by side:
    python3 tools/bench_long_context.py [MODEL] [-d 2048,8192] [--cache-types f16,q8_0] [-t 2 -n 32 -r 2 --rounds 2]
For each depth (tokens already cached, llama-bench's -d) and KV cache type (-ctk/-ctv, both), each
round runs `pyllm bench -p 0 -n N -d D` and `llama-bench -p 0 -n N -d D` once, each a fresh process,
alternating which goes first (a shared host drifts by +-15% over minutes); the table shows the median
over rounds of each side's mean decode tok/s, the ratio, and pyllm's KV cache size at the depth.
llama-bench is looked up in $PYLLM_LLAMA_BENCH, else in llama-cpp-python's vendored build under
~/.cache/pyllm-peer (see tools/bench_vs_llamacpp.py); a quantized V cache runs it with -fa on
(llama.cpp needs flash attention for one), f16 with its default (-fa auto)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEER_BIN = (Path.home() / ".cache" / "pyllm-peer" / "build" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
            / "build" / "bin")


def llama_bench() -> Path:
    path = Path(os.environ.get("PYLLM_LLAMA_BENCH", PEER_BIN / "llama-bench"))
    if not path.exists():
        sys.exit(f"llama-bench not found at {path}: set PYLLM_LLAMA_BENCH")
    return path


def run_pyllm(model: str, depth: int, cache: str, a) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pyllm", "bench", model, "-p", "0", "-n", str(a.n_gen), "-d", str(depth),
           "--cache-type", cache, "-t", str(a.threads), "-r", str(a.reps), "--no-user", "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    r = json.loads(proc.stdout)
    return {"tg": r["tg_tok_s"], "kv_mib": r["kv_used_bytes"] / 2**20}


def run_llamacpp(model: str, depth: int, cache: str, a) -> dict:
    exe = llama_bench()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(exe.parent), env.get("LD_LIBRARY_PATH")]))
    cmd = [str(exe), "-m", model, "-p", "0", "-n", str(a.n_gen), "-d", str(depth), "-ctk", cache, "-ctv", cache,
           "-t", str(a.threads), "-r", str(a.reps), "-o", "json"]
    if cache != "f16":
        cmd += ["-fa", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    rows = json.loads(proc.stdout)
    return {"tg": rows[0]["avg_ts"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=str(Path.home() / ".cache" / "pyllm" / "models" /
                                                    "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("-d", "--depths", default="2048,8192")
    ap.add_argument("--cache-types", default="f16,q8_0")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("-r", "--reps", type=int, default=2, help="repetitions inside each process")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    depths = [int(d) for d in a.depths.split(",")]
    caches = a.cache_types.split(",")
    res: dict = {}
    for rnd in range(a.rounds):
        for depth in depths:
            for cache in caches:
                sides = [("pyllm", run_pyllm), ("llama.cpp", run_llamacpp)]
                if rnd % 2:
                    sides.reverse()
                for name, fn in sides:
                    r = fn(a.model, depth, cache, a)
                    res.setdefault((depth, cache), {}).setdefault(name, []).append(r)
                    print(f"round {rnd + 1} d{depth} {cache} {name}: {r['tg']:.1f} tok/s", file=sys.stderr)
    print("| depth | KV cache | pyllm tg tok/s | llama.cpp tg tok/s | ratio | pyllm KV memory |")
    print("|---:|---|---:|---:|---:|---:|")
    for depth in depths:
        for cache in caches:
            r = res[(depth, cache)]
            p = statistics.median(x["tg"] for x in r["pyllm"])
            q = statistics.median(x["tg"] for x in r["llama.cpp"])
            kv = r["pyllm"][0]["kv_mib"]
            print(f"| {depth} | {cache} | {p:.1f} | {q:.1f} | **{p / q:.2f}x** | {kv:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
