#!/usr/bin/env python3
"""Aggregate decode throughput of `pyllm serve` against llama.cpp's `llama-server -np N`, with 1, 4,
8 and 16 concurrent streams, on the same model and the same requests (a benchmark, not a test).

Each round starts one server, warms it up, sends for each concurrency N a batch of N concurrent
/v1/completions requests (distinct short prompts, temperature 0, max_tokens M, ignore_eos so every
stream runs to M tokens on both servers), and stops it; the servers alternate round by round (the
machine is shared and noisy). Aggregate tok/s = completion tokens of the batch / its wall time
(prompts are ~10 tokens, so this is decode). Prints the median over rounds and the ratios.

    python3 tools/bench_serve.py [MODEL] --streams 1,4,8,16 -n 64 --rounds 3 -t 2

On a loaded 2-core machine llama-server's -t 2 collapses (its threads wait for each other while
other processes hold the cores: 10 tok/s where -t 1 gives 33); compare at -t 1 there too.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PEER_BIN = Path.home() / ".cache/pyllm-peer/build/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin"
PROMPTS = [f"Story number {i}: Once upon a time, in a small village by the sea," for i in range(64)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, model: str, n_parallel: int, ctx: int, threads: int, extra: list[str] = ()):
    port = free_port()
    if kind == "pyllm":
        cmd = [sys.executable, "-m", "pyllm", "serve", model, "--port", str(port), "--parallel", str(n_parallel),
               "--ctx", str(ctx), "-t", str(threads), "--log-level", "warning"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
    else:
        cmd = [str(PEER_BIN / "llama-server"), "-m", model, "--port", str(port), "--host", "127.0.0.1",
               "-np", str(n_parallel), "-c", str(ctx * n_parallel), "-t", str(threads), "-tb", str(threads),
               "--log-disable", *extra]
        env = dict(os.environ, LD_LIBRARY_PATH=str(PEER_BIN))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{kind} server did not come up")
        time.sleep(0.2)


async def batch(url: str, n: int, max_tokens: int) -> tuple[int, float]:
    """n concurrent requests; (completion tokens, wall seconds)."""
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=n)) as c:
        async def one(i):
            r = await c.post("/v1/completions", json={"prompt": PROMPTS[i], "max_tokens": max_tokens,
                                                      "temperature": 0, "ignore_eos": True})
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]
        t0 = time.perf_counter()
        tokens = await asyncio.gather(*(one(i) for i in range(n)))
        return sum(tokens), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default=str(Path.home() / ".cache/pyllm/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--streams", default="1,4,8,16")
    ap.add_argument("-n", "--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512, help="context per slot")
    ap.add_argument("--servers", default="pyllm,llama")
    ap.add_argument("--llama-args", default="", help="extra llama-server arguments (e.g. '--poll 0')")
    args = ap.parse_args()
    streams = [int(s) for s in args.streams.split(",")]
    kinds = args.servers.split(",")
    n_parallel = max(streams)
    rates: dict = {(k, n): [] for k in kinds for n in streams}
    for rnd in range(args.rounds):
        order = kinds if rnd % 2 == 0 else kinds[::-1]
        for kind in order:
            proc, url = start(kind, args.model, n_parallel, args.ctx, args.threads,
                              args.llama_args.split() if kind == "llama" else ())
            try:
                asyncio.run(batch(url, 2, 8))   # warm-up
                for n in streams:
                    tokens, wall = asyncio.run(batch(url, n, args.max_tokens))
                    rates[(kind, n)].append(tokens / wall)
                    print(f"round {rnd + 1} {kind:6s} {n:3d} streams: {tokens / wall:7.1f} tok/s "
                          f"({tokens} tokens, {wall:.2f} s)", flush=True)
            finally:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(f"\nmedian of {args.rounds} rounds, {args.max_tokens} tokens per stream, {args.threads} threads, "
          f"-np {n_parallel}, llama-server args {args.llama_args!r}:")
    head = "| streams | " + " | ".join(f"{k} tok/s" for k in kinds) + (" | pyllm / llama |" if len(kinds) == 2 else " |")
    print(head)
    print("|" + "---:|" * (head.count("|") - 1))
    base = {k: statistics.median(rates[(k, streams[0])]) for k in kinds}
    for n in streams:
        med = {k: statistics.median(rates[(k, n)]) for k in kinds}
        cells = " | ".join(f"{med[k]:.1f} ({med[k] / base[k]:.2f}x)" for k in kinds)
        ratio = f" | {med['pyllm'] / med['llama']:.2f}x |" if len(kinds) == 2 else " |"
        print(f"| {n} | {cells}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
