"""`pyllm bench`: prefill and decode speed of a model on this machine, like llama-bench, plus load
time, peak memory, and decode speed as a fraction of the machine's measured read bandwidth.

Two levels, measured in the same run:
  engine: pp = one batched evaluation of p tokens from an empty cache; tg = n single-token
          evaluations after one token (llama-bench's pp/tg; no sampling, no Python per token
          beyond the call itself).
  user:   a streamed greedy `generate` on a real-text prompt of about p tokens: pp = prompt tokens
          / time to the first text piece, tg = tokens per second after it (what a Python user feels).
This module measures; it does not judge (no thresholds).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from pyllm import _core, hub, system_info

# The user-level prompt: ordinary prose (written for this benchmark), repeated to reach p tokens.
PROSE = (
    "The harbour town woke slowly in winter. Before dawn the bakers lit their ovens, and the smell of "
    "bread drifted down the narrow streets toward the water, where fishermen checked their nets by "
    "lantern light. Most of the boats stayed tied up when the wind came from the north, because the "
    "sea beyond the breakwater turned grey and steep, and even the oldest captains had learned to "
    "respect it. On those mornings the market was quiet. A few traders set out crates of apples and "
    "potatoes, a woman sold wool socks from a folding table, and the schoolchildren hurried past with "
    "their collars turned up against the cold. The library opened at nine. Its reading room had tall "
    "windows that faced the harbour, and on clear days the light moved across the long tables as the "
    "morning went on. People came to read newspapers, to write letters, to look up the tides, or simply "
    "to sit somewhere warm. The librarian, who had worked there for thirty years, knew most visitors by "
    "name and remembered which books each of them had borrowed. In the afternoon the wind usually "
    "dropped, and the light over the water became soft and yellow. Then the town seemed to breathe "
    "again: doors opened, bicycles rattled over the cobbles, and the cafe by the ferry landing filled "
    "with people talking about the weather, the price of fuel, and the new road that the council had "
    "promised for many years but never built. "
)

DEFAULT_BANDWIDTH_BYTES = 512 << 20  # well beyond a laptop's last-level cache


# --- measurements

def _synthetic_ids(n: int, n_vocab: int) -> np.ndarray:
    # The same spread of ids as the llama.cpp side of tools/bench_vs_llamacpp.py uses.
    return np.array([((i * 7919) % 20000 + 100) % n_vocab for i in range(n)], np.int32)


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def _prompt_text(model, n_tokens: int, text: str | None) -> str:
    """About n_tokens of real text (never more), cut at a token boundary."""
    base = text if text else PROSE
    ids = model.tokenize(base, add_bos=False)
    while len(ids) < n_tokens:
        base += " " + base
        ids = model.tokenize(base, add_bos=False)
    return model.detokenize(ids[:n_tokens])


def _reset(model) -> None:
    # Start every measured run from an empty cache, so no prompt prefix is reused.
    model.reset()


def _engine_runs(model, n_prompt: int, n_gen: int, reps: int, depth: int = 0) -> tuple[list[float], list[float], float]:
    # depth: tokens already cached before each measured run (llama-bench's -d), filled once (not
    # timed) and kept; each run truncates the cache back to them. Also returns the bytes of weights
    # one decoded token read, as the context counted them (0.0 without a decode run).
    ctx = model.context()
    ids = _synthetic_ids(max(n_prompt, n_gen + 1), model.n_vocab)
    if depth:
        _reset(model)
        ctx.eval(_synthetic_ids(depth, model.n_vocab), False)
    pp, tg = [], []
    weights_per_token = 0.0
    for rep in range(reps + 1):  # the first repetition warms up (page faults, caches, pool)
        if n_prompt:
            ctx.truncate(depth)
            t0 = time.perf_counter()
            ctx.eval(ids[:n_prompt], False)
            dt = time.perf_counter() - t0
            if rep:
                pp.append(n_prompt / dt)
        if n_gen:
            ctx.truncate(depth)
            ctx.eval(ids[:1], False)
            read0 = ctx.weight_bytes_read
            t0 = time.perf_counter()
            for i in range(n_gen):
                ctx.eval(ids[i + 1:i + 2], False)
            dt = time.perf_counter() - t0
            weights_per_token = (ctx.weight_bytes_read - read0) / n_gen
            if rep:
                tg.append(n_gen / dt)
    _reset(model)
    return pp, tg, weights_per_token


def _user_runs(model, prompt: str, n_gen: int, reps: int) -> tuple[list[float], list[float], int, int]:
    from pyllm.model import Completion
    upp, utg = [], []
    n_prompt = n_out = 0
    for rep in range(reps + 1):  # the first run warms up
        _reset(model)
        info = Completion()
        t0 = time.perf_counter()
        first = None
        for _piece in model.generate(prompt, max_tokens=n_gen, temperature=0, stream=True, info=info):
            if first is None:
                first = time.perf_counter()
        t_end = time.perf_counter()
        n_prompt, n_out = info.n_prompt_tokens, len(info.token_ids or [])
        if rep and first is not None:
            upp.append(n_prompt / (first - t0))
            if n_out > 1 and t_end > first:
                utg.append((n_out - 1) / (t_end - first))
    _reset(model)
    return upp, utg, n_prompt, n_out


def weights_touched_bytes(model) -> int:
    """Bytes of the weights a dense decode step would read in full: all of them, less an untied
    token-embedding table (looked up a row per token; a tied one is read in full as the output
    matrix). A mixture-of-experts step reads less: only its routed experts."""
    weights = model.weight_bytes
    tensors = model.gguf.tensors
    if "output.weight" in tensors and "token_embd.weight" in tensors:
        weights -= tensors["token_embd.weight"]["nbytes"]
    return weights


def _model_cfg(model) -> dict:
    from dataclasses import asdict
    return asdict(model.config)


def run_bench(model_path: str | os.PathLike, n_prompt: int = 512, n_gen: int = 128, n_threads: int | None = None,
              reps: int = 5, user: bool = True, text: str | None = None,
              bandwidth_bytes: int = DEFAULT_BANDWIDTH_BYTES, depth: int = 0, cache_type: str | None = None,
              cache_type_k: str | None = None, cache_type_v: str | None = None) -> dict:
    """Runs the whole benchmark in this process and returns its figures (tok/s as mean and sd)."""
    from pyllm.model import Model
    if n_prompt < 0 or n_gen < 0 or (n_prompt == 0 and n_gen == 0):
        raise ValueError("give a positive prompt (-p) or generation (-n) length")
    if reps < 1:
        raise ValueError(f"repetitions must be at least 1, got {reps}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    path = hub.resolve(model_path)
    n_ctx = max(1024, depth + n_prompt + n_gen + 8)  # as the llama.cpp side sizes its context

    # Load to first token: construction, then one single-token evaluation (its logits ready).
    t0 = time.perf_counter()
    model = Model(path, n_ctx=n_ctx, n_threads=n_threads, cache_type=cache_type, cache_type_k=cache_type_k,
                  cache_type_v=cache_type_v)
    model.context().eval(_synthetic_ids(1, model.n_vocab), False)
    load_s = time.perf_counter() - t0
    _reset(model)

    pp, tg, weights_per_token = _engine_runs(model, n_prompt, n_gen, reps, depth)
    result: dict = {
        "model": Path(path).stem, "path": str(path), "file_bytes": Path(path).stat().st_size,
        "isa": system_info()["isa"],
        "threads": model.n_threads, "n_prompt": n_prompt, "n_gen": n_gen, "reps": reps,
        "load_s": load_s, "depth": depth,
        "cache_type_k": model.cache_type_k, "cache_type_v": model.cache_type_v, "n_ctx": model.n_ctx,
        # The KV cache at n_ctx, and at the deepest position a run reached (what is resident).
        "kv_cache_bytes": model.kv_cache_bytes,
        "kv_used_bytes": model.kv_cache_bytes * (depth + max(n_prompt, n_gen + 1)) // model.n_ctx,
    }
    if pp:
        result["pp_tok_s"], result["pp_sd"] = _mean_sd(pp)
    if tg:
        result["tg_tok_s"], result["tg_sd"] = _mean_sd(tg)

    if user and n_gen:
        prompt = _prompt_text(model, max(n_prompt, 1), text)
        upp, utg, n_user_prompt, n_user_out = _user_runs(model, prompt, n_gen, reps)
        result["user_prompt_tokens"], result["user_generated_tokens"] = n_user_prompt, n_user_out
        if upp:
            result["user_pp_tok_s"], result["user_pp_sd"] = _mean_sd(upp)
        if utg:
            result["user_tg_tok_s"], result["user_tg_sd"] = _mean_sd(utg)

    # Peak memory before the bandwidth buffer exists, so it is the model's alone.
    result["peak_rss_bytes"] = _peak_rss_bytes()

    rates = _core.read_bandwidth(int(bandwidth_bytes), model.n_threads, 5)["bytes_per_s"]
    result["read_bandwidth_bytes_s"] = max(rates)  # the best pass, as STREAM reports
    if tg:
        # The tg run decodes at positions 1..n, so on average it reads (n + 2) / 2 cached positions.
        # Bytes a decode step reads: the weights, as counted by the context during the decode run
        # (for a mixture of experts, only the experts its router chose), plus the cached keys and
        # values; tg decodes at positions 1..n, so on average it reads (n + 2) / 2 of them.
        kv_per_position = model.kv_cache_bytes / model.n_ctx
        per_token = weights_per_token + kv_per_position * (depth + (n_gen + 2) / 2)
        result["decode_weight_bytes_per_token"] = weights_per_token
        result["weights_touched_bytes"] = weights_touched_bytes(model)
        result["decode_bytes_per_token"] = per_token
        result["decode_read_bytes_s"] = per_token * result["tg_tok_s"]
        result["decode_bandwidth_fraction"] = result["decode_read_bytes_s"] / result["read_bandwidth_bytes_s"]
    model.close()
    return result


# --- speculative decoding

def run_spec_bench(model_path, speculative: str | None = None, draft_model: str | None = None,
                   n_draft: int | None = None, n_gen: int = 128, n_threads: int | None = None, reps: int = 3,
                   text: str | None = None, adaptive: bool = True) -> dict:
    """Greedy decode speed of a summarize-this-text chat prompt, plain and speculative, alternated
    (plain, speculative, plain, ...) so machine noise hits both alike; the outputs must agree.
    Reports medians (a shared machine's slow runs are outliers, not spread) and the speedup as
    the median of each round's speculative/plain ratio (a round's two runs see the same load)."""
    from pyllm.model import Model
    from pyllm.generate import speculative as spec_mod
    from pyllm.chat import completions
    from pyllm.chat.completions import GenerationStats
    model = Model(hub.resolve(model_path), n_ctx=2048, n_threads=n_threads)
    spec = spec_mod.make_speculator(model, speculative, draft_model, n_draft)
    spec.adaptive = adaptive
    source = _prompt_text(model, 300, text)
    messages = [{"role": "user", "content": "Summarize this text, quoting its key sentences.\n\n" + source}]
    rates: dict[str, list[float]] = {"plain": [], "spec": []}
    outputs: dict[str, str] = {}
    counted = spec_mod.SpecStats()
    for rep in range(reps + 1):  # the first round warms up
        for kind in ("plain", "spec"):
            _reset(model)
            kw = {"speculative": spec} if kind == "spec" else {}
            before = (spec.stats.steps, spec.stats.proposed, spec.stats.accepted)
            stats = GenerationStats()
            text_out = []
            for chunk in completions.create_chat_completion(model, messages, max_tokens=n_gen, temperature=0,
                                                            stream=True, stats=stats, **kw):
                text_out.append(chunk["choices"][0]["delta"].get("content") or "")
            n_out = stats.n_generated
            if rep and n_out > 1 and stats.generation_seconds > 0:
                rates[kind].append((n_out - 1) / stats.generation_seconds)
                if kind == "spec":
                    counted.steps += spec.stats.steps - before[0]
                    counted.proposed += spec.stats.proposed - before[1]
                    counted.accepted += spec.stats.accepted - before[2]
            outputs[kind] = "".join(text_out)
    result = {"model": Path(model.path).stem, "mode": spec.mode, "n_draft": spec.n_draft, "adaptive": adaptive,
              "draft": str(draft_model) if draft_model else None, "threads": model.n_threads,
              "n_gen": n_gen, "reps": reps, "prompt": "summarize ~300 tokens of prose (chat template)",
              "acceptance_rate": counted.acceptance_rate,
              "tokens_per_verification": (counted.accepted + counted.steps) / counted.steps if counted.steps else None,
              "plain_runs": rates["plain"], "spec_runs": rates["spec"]}
    nan = float("nan")
    result["plain_tok_s"] = statistics.median(rates["plain"]) if rates["plain"] else nan
    result["spec_tok_s"] = statistics.median(rates["spec"]) if rates["spec"] else nan
    ratios = [s / p for p, s in zip(rates["plain"], rates["spec"])]
    result["speedup"] = statistics.median(ratios) if ratios else nan
    result["identical"] = outputs.get("plain") == outputs.get("spec")
    model.close()
    return result


def format_spec_markdown(r: dict) -> str:
    what = "prompt lookup (n-gram)" if r["mode"] == "ngram" else f"draft model {Path(r['draft']).name}"
    length = f"n_draft<={r['n_draft']} (adaptive)" if r.get("adaptive") else f"n_draft={r['n_draft']}"
    return "\n".join([
        f"speculative decoding: {what}, {length}, {r['threads']} threads, greedy, {r['prompt']}, "
        f"medians of {r['reps']} alternated rounds",
        "| model | plain decode t/s | speculative t/s | speedup | acceptance | tokens/verification | same text |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| {r['model']} | {r['plain_tok_s']:.1f} | {r['spec_tok_s']:.1f} | "
        f"{r['speedup']:.2f}x | {100 * (r['acceptance_rate'] or 0):.0f}% | {r['tokens_per_verification'] or 0:.2f} | "
        f"{'yes' if r['identical'] else 'NO'} |"])


# --- output

def _fmt_rate(result: dict, key: str) -> str:
    return f"{result[key + '_tok_s']:.1f} ± {result[key + '_sd']:.1f}"


def format_markdown(r: dict) -> str:
    size = f"{r['file_bytes'] / 2**20:.1f} MiB"
    head = [r["model"], size, str(r["threads"]), str(r["isa"])]
    rows = []
    at = f" @ d{r['depth']}" if r.get("depth") else ""
    if "pp_tok_s" in r:
        rows.append(head + [f"pp{r['n_prompt']}{at}", _fmt_rate(r, "pp")])
    if "tg_tok_s" in r:
        rows.append(head + [f"tg{r['n_gen']}{at}", _fmt_rate(r, "tg")])
    if "user_pp_tok_s" in r:
        rows.append(head + [f"user pp{r['user_prompt_tokens']}", _fmt_rate(r, "user_pp")])
    if "user_tg_tok_s" in r:
        rows.append(head + [f"user tg{r['user_generated_tokens']}", _fmt_rate(r, "user_tg")])
    lines = ["| model | size | threads | isa | test | t/s |", "|---|---:|---:|---|---|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    lines.append(f"load to first token: {r['load_s'] * 1000:.0f} ms · peak RSS: {r['peak_rss_bytes'] / 2**20:.0f} MiB"
                 f" · read bandwidth ({r['threads']} threads): {r['read_bandwidth_bytes_s'] / 1e9:.1f} GB/s")
    if "kv_cache_bytes" in r:
        lines.append(f"KV cache (K {r['cache_type_k']}, V {r['cache_type_v']}): {r['kv_cache_bytes'] / 2**20:.1f} MiB "
                     f"at n_ctx {r['n_ctx']}, {r['kv_used_bytes'] / 2**20:.1f} MiB used")
    if "decode_bandwidth_fraction" in r:
        lines.append(f"decode reads {r['decode_bytes_per_token'] / 1e6:.1f} MB/token (weights + KV) → "
                     f"{r['decode_read_bytes_s'] / 1e9:.1f} GB/s = {100 * r['decode_bandwidth_fraction']:.0f}% "
                     f"of measured bandwidth")
    if "decode_weight_bytes_per_token" in r:
        share = r["decode_weight_bytes_per_token"] / max(r["weights_touched_bytes"], 1)
        lines.append(f"weights read per decoded token: {r['decode_weight_bytes_per_token'] / 1e6:.1f} MB of "
                     f"{r['weights_touched_bytes'] / 1e6:.1f} MB ({100 * share:.0f}%; a mixture of experts "
                     f"reads only its routed experts)")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=hub.DEFAULT_MODEL,
                   help=f"a .gguf path or a known model name (default: {hub.DEFAULT_MODEL})")
    p.add_argument("-p", "--n-prompt", type=int, default=512, help="prefill tokens (default 512)")
    p.add_argument("-n", "--n-gen", type=int, default=128, help="decoded tokens (default 128)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    p.add_argument("-r", "--repetitions", type=int, default=5, help="measured repetitions (default 5)")
    p.add_argument("-o", "--output", choices=("md", "json"), default="md", help="output format")
    p.add_argument("--no-user", action="store_true", help="skip the user-level streamed generate")
    p.add_argument("--text", help="text file for the user-level prompt (default: built-in prose)")
    p.add_argument("-d", "--depth", type=int, default=0,
                   help="tokens in the cache before each test, as llama-bench's -d (default 0)")
    from pyllm.cli import add_cache_type_arguments
    add_cache_type_arguments(p)
    p.add_argument("--bandwidth-mib", type=int, default=DEFAULT_BANDWIDTH_BYTES >> 20,
                   help="buffer size for the read-bandwidth measurement (default 512)")
    p.add_argument("--speculative", choices=("ngram",), help="measure speculative decoding by prompt lookup")
    p.add_argument("--draft-model", metavar="MODEL", help="measure speculative decoding with this draft model")
    p.add_argument("--n-draft", type=int, help="most tokens proposed per step")
    p.add_argument("--fixed-draft", action="store_true",
                   help="always propose --n-draft tokens (default: adapt to the last proposal's acceptance)")
    p.add_argument("--synthetic", metavar="SHAPE",
                   help="bench a random-weight model of a real shape instead (llama-1b, llama-3b, llama-8b; "
                        "written once into the cache, see pyllm/synthetic.py)")
    p.add_argument("--type", default="Q4_K_M", help="the --synthetic model's quantization (default Q4_K_M)")


def run(args) -> int:
    text = Path(args.text).read_text(encoding="utf-8") if args.text else None
    if args.synthetic:
        from pyllm import synthetic
        args.model = synthetic.ensure(args.synthetic, args.type, log=lambda s: print(s, file=sys.stderr))
    if args.speculative or args.draft_model:
        r = run_spec_bench(args.model, args.speculative, args.draft_model, args.n_draft, args.n_gen, args.threads,
                           min(args.repetitions, 3) if args.repetitions == 5 else args.repetitions, text,
                           adaptive=not args.fixed_draft)
        print(json.dumps(r) if args.output == "json" else format_spec_markdown(r))
        return 0
    result = run_bench(args.model, args.n_prompt, args.n_gen, args.threads, args.repetitions,
                       user=not args.no_user, text=text, bandwidth_bytes=args.bandwidth_mib << 20, depth=args.depth,
                       cache_type=args.cache_type, cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v)
    if args.output == "json":
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
                          for k, v in result.items()}))
    else:
        print(format_markdown(result))
    return 0
