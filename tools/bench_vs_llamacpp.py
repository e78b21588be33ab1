#!/usr/bin/env python3
"""pyllm against llama.cpp (through llama-cpp-python) on the same GGUF files, same threads, same
prefill/decode lengths, in one run:
    python3 tools/bench_vs_llamacpp.py MODEL... [-t 2 -p 256 -n 64 -r 3 --rounds 3] [--variants Q4_0,Q8_0]
Each round runs `pyllm bench` and tools/llamacpp_bench.py once per model, each in a fresh process,
alternating which goes first, because a shared host drifts by ±15% over minutes; the table shows
the median over rounds of each side's per-round mean, and the ratio pyllm / llama.cpp.
llama-cpp-python lives in its own environment (default ~/.cache/pyllm-peer/venv, or
$PYLLM_PEER_VENV), created here when missing (`pip install llama-cpp-python==0.3.36 numpy`, which
builds llama.cpp from source: about 15 minutes on 2 cores).
--variants also benchmarks the first MODEL requantized by llama.cpp's own quantizer to each type.
--quantize Q4_0,Q8_0,Q4_K_M times round-to-nearest quantization of the first MODEL to each type by
`pyllm quantize` and by llama.cpp's quantizer (llama_model_quantize, its llama-quantize), each a
fresh process, alternating, 2 threads each."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEER_SCRIPT = REPO / "tools" / "llamacpp_bench.py"
PEER_VERSION = "0.3.36"
FIGURES = [("pp_tok_s", "engine pp"), ("tg_tok_s", "engine tg"),
           ("user_pp_tok_s", "user pp"), ("user_tg_tok_s", "user tg")]


# --- environments

def peer_python() -> str:
    venv = Path(os.environ.get("PYLLM_PEER_VENV", Path.home() / ".cache" / "pyllm-peer" / "venv"))
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import llama_cpp"],
                                          capture_output=True).returncode == 0:
        return str(python)
    print(f"setting up llama-cpp-python {PEER_VERSION} in {venv} (builds llama.cpp; slow, once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"llama-cpp-python=={PEER_VERSION}", "numpy"],
                   check=True)
    return str(python)


def pyllm_env() -> dict:
    env = dict(os.environ)
    # Run this checkout's pyllm when it is built in place (tools/dev_build.sh); else the installed one.
    if any((REPO / "pyllm").glob("_core*.so")) or any((REPO / "pyllm").glob("_core*.pyd")):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_json(cmd: list[str], env: dict | None = None) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the two sides

def run_pyllm(model: str, a, text_file: str) -> dict:
    return run_json([sys.executable, "-m", "pyllm", "bench", model, "-p", str(a.n_prompt), "-n", str(a.n_gen),
                     "-t", str(a.threads), "-r", str(a.reps), "-o", "json", "--text", text_file], pyllm_env())


def run_llamacpp(python: str, model: str, a, text_file: str) -> dict:
    return run_json([python, str(PEER_SCRIPT), model, "--threads", str(a.threads), "--pp", str(a.n_prompt),
                     "--tg", str(a.n_gen), "--reps", str(a.reps), "--text", text_file])


def make_variants(python: str, model: str, types: list[str], out_dir: Path) -> list[str]:
    paths = []
    for t in types:
        dst = out_dir / f"{Path(model).stem}.requant-{t}.gguf"
        if not dst.exists():
            print(f"quantizing {Path(model).name} to {t} with llama.cpp", file=sys.stderr)
            subprocess.run([python, str(PEER_SCRIPT), "quantize", model, str(dst), t], check=True,
                           capture_output=True)
        paths.append(str(dst))
    return paths


def time_quantize(python: str, model: str, types: list[str], rounds: int, threads: int) -> str:
    import time
    lines = ["| quantize to | pyllm s | llama.cpp s | llama.cpp time / pyllm time |", "|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for t in types:
            times: dict[str, list[float]] = {"pyllm": [], "llama.cpp": []}
            for rnd in range(rounds):
                for side in (["pyllm", "llama.cpp"] if rnd % 2 == 0 else ["llama.cpp", "pyllm"]):
                    dst = os.path.join(tmp, f"{side}-{t}.gguf")
                    cmd = ([sys.executable, "-m", "pyllm", "quantize", model, dst, t, "--allow-requantize",
                            "--threads", str(threads)] if side == "pyllm"
                           else [python, str(PEER_SCRIPT), "quantize", model, dst, t])
                    t0 = time.perf_counter()
                    subprocess.run(cmd, check=True, capture_output=True, env=pyllm_env() if side == "pyllm" else None)
                    times[side].append(time.perf_counter() - t0)
                    os.unlink(dst)
            ours, theirs = statistics.median(times["pyllm"]), statistics.median(times["llama.cpp"])
            print(f"quantize {t}: pyllm {times['pyllm']}, llama.cpp {times['llama.cpp']}", file=sys.stderr, flush=True)
            lines.append(f"| {t} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f}× |")
    return "\n".join(lines)


# --- report

def median_of(runs: list[dict], key: str) -> float | None:
    xs = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def table(results: dict[str, dict[str, list[dict]]]) -> str:
    lines = ["| model | figure | pyllm | llama.cpp | ratio |", "|---|---|---:|---:|---:|"]
    for model, sides in results.items():
        name = Path(model).name
        for key, label in FIGURES:
            ours, theirs = median_of(sides["pyllm"], key), median_of(sides["llama.cpp"], key)
            if ours is None or theirs is None:
                continue
            lines.append(f"| {name} | {label} tok/s | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}× |")
        ours, theirs = median_of(sides["pyllm"], "load_s"), median_of(sides["llama.cpp"], "load_s")
        lines.append(f"| {name} | load to first token, ms | {ours * 1e3:.0f} | {theirs * 1e3:.0f} | {ours / theirs:.2f}× |")
        ours, theirs = median_of(sides["pyllm"], "peak_rss_bytes"), median_of(sides["llama.cpp"], "peak_rss_bytes")
        lines.append(f"| {name} | peak RSS, MiB | {ours / 2**20:.0f} | {theirs / 2**20:.0f} | {ours / theirs:.2f}× |")
        frac = median_of(sides["pyllm"], "decode_bandwidth_fraction")
        bw = median_of(sides["pyllm"], "read_bandwidth_bytes_s")
        if frac is not None:
            lines.append(f"| {name} | pyllm decode / read bandwidth ({bw / 1e9:.1f} GB/s) | {100 * frac:.0f}% | | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help=".gguf files")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--n-prompt", type=int, default=256)
    ap.add_argument("-n", "--n-gen", type=int, default=64)
    ap.add_argument("-r", "--reps", type=int, default=3, help="repetitions inside each process")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (fresh processes each)")
    ap.add_argument("--variants", default="", help="e.g. Q4_0,Q8_0,F16: requantize the first model with llama.cpp")
    ap.add_argument("--variants-dir", default=str(Path.home() / ".cache" / "pyllm" / "bench"))
    ap.add_argument("--quantize", default="", help="e.g. Q4_0,Q8_0,Q4_K_M: also time quantizing the first model")
    ap.add_argument("--json", help="also write every raw run here")
    ap.add_argument("--synthetic", default="", help="e.g. llama-1b: also the random-weight model of that shape "
                    "(pyllm/synthetic.py; made once by pyllm, quantized by `pyllm quantize`), in each --synthetic-types")
    ap.add_argument("--synthetic-types", default="Q4_K_M", help="e.g. Q4_K_M,Q4_0,Q8_0 (default Q4_K_M)")
    a = ap.parse_args()

    python = peer_python()
    models = [str(Path(m).resolve()) for m in a.models]
    if a.synthetic:
        sys.path.insert(0, str(REPO))
        from pyllm import synthetic
        for t in (t.strip() for t in a.synthetic_types.split(",") if t.strip()):
            models.append(str(synthetic.ensure(a.synthetic, t, log=lambda s: print(s, file=sys.stderr))))
    if not models:
        ap.error("give .gguf files or --synthetic")
    if a.variants:
        out_dir = Path(a.variants_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        models += make_variants(python, models[0], [t.strip() for t in a.variants.split(",") if t.strip()], out_dir)

    sys.path.insert(0, str(REPO))
    from pyllm.bench import PROSE  # the same real-text prompt for both sides
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(PROSE * (1 + a.n_prompt // 250))
        text_file = f.name

    results: dict[str, dict[str, list[dict]]] = {m: {"pyllm": [], "llama.cpp": []} for m in models}
    try:
        for rnd in range(a.rounds):
            for i, model in enumerate(models):
                order = ["pyllm", "llama.cpp"] if (rnd + i) % 2 == 0 else ["llama.cpp", "pyllm"]
                for side in order:
                    r = run_pyllm(model, a, text_file) if side == "pyllm" else run_llamacpp(python, model, a, text_file)
                    results[model][side].append(r)
                    print(f"round {rnd + 1}/{a.rounds} {Path(model).name} {side}: "
                          + ", ".join(f"{label} {r[k]:.1f}" for k, label in FIGURES if r.get(k) is not None),
                          file=sys.stderr, flush=True)
    finally:
        os.unlink(text_file)

    print(f"{a.threads} threads, pp {a.n_prompt}, tg {a.n_gen}; median over {a.rounds} alternating rounds "
          f"of {a.reps}-repetition means; {platform.machine()} {os.cpu_count()} CPUs, {cpu_name()}")
    print(table(results))
    if a.quantize:
        print()
        print(time_quantize(python, models[0], [t.strip() for t in a.quantize.split(",") if t.strip()],
                            max(2, a.rounds), a.threads))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
