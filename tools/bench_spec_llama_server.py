#!/usr/bin/env python3
"""llama.cpp's own speculative decoding (llama-server's --spec-type: a draft model, or n-gram
lookup in the context) against its plain decoding, on pyllm bench's summarize-this-text prompt,
so the figures stand next to `pyllm bench --speculative ngram | --draft-model`:

    python3 tools/bench_spec_llama_server.py MODEL.gguf --spec ngram [-r 3]
    python3 tools/bench_spec_llama_server.py F16.gguf --spec draft --draft Q4_0.gguf [-r 3]

Two llama-server processes (plain and speculative, 2 threads each, greedy, the model's own chat
template) answer the same chat request in turns (plain, speculative, plain, ...) after one warm-up
turn each; decode speed is the server's own `timings.predicted_per_second`, acceptance its
`draft_n_accepted / draft_n`. Prints the medians and the median per-round ratio, as pyllm bench
does. The peer build (llama-cpp-python 0.3.36's vendored llama.cpp, with llama-server) is looked
up in ~/.cache/pyllm-peer or $PYLLM_PEER_BIN. Not a test: a measurement for the README."""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BIN = Path.home() / ".cache/pyllm-peer/build/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bin_dir: Path, model: str, extra: list[str], threads: int):
    port = free_port()
    env = dict(os.environ, LD_LIBRARY_PATH=str(bin_dir))
    cmd = [str(bin_dir / "llama-server"), "-m", model, "--port", str(port), "-t", str(threads), "-tb", str(threads),
           "-c", "2048", "-np", "1", "--no-warmup", *extra]
    # The log goes to a file: an unread pipe fills up and stalls the server mid-generation.
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"llama-server exited: {' '.join(cmd)}\n{log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("llama-server did not come up")


def ask(url: str, messages: list, n_gen: int) -> dict:
    body = json.dumps({"messages": messages, "max_tokens": n_gen, "temperature": 0, "top_k": 1,
                       "cache_prompt": False}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--spec", choices=("ngram", "draft"), required=True)
    p.add_argument("--draft", help="draft model (--spec draft)")
    p.add_argument("--n-draft", type=int, default=8, help="most tokens drafted (default 8, as pyllm's n-gram)")
    p.add_argument("--ngram-n", type=int, default=3, help="ngram-simple lookup length (pyllm: 3 down to 1)")
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument("-r", "--rounds", type=int, default=3)
    p.add_argument("-t", "--threads", type=int, default=2)
    args = p.parse_args()
    bin_dir = Path(os.environ.get("PYLLM_PEER_BIN", DEFAULT_BIN))

    sys.path.insert(0, str(REPO))
    from pyllm import bench
    from pyllm.model import Model
    m = Model(args.model, n_ctx=2048)
    source = bench._prompt_text(m, 300, None)   # the very text pyllm bench summarizes
    m.close()
    messages = [{"role": "user", "content": "Summarize this text, quoting its key sentences.\n\n" + source}]

    if args.spec == "ngram":
        extra = ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", str(args.ngram_n),
                 "--spec-ngram-simple-size-m", str(args.n_draft)]
    else:
        if not args.draft:
            raise SystemExit("--spec draft needs --draft MODEL")
        extra = ["--spec-type", "draft-simple", "-md", args.draft, "--spec-draft-n-max", str(args.n_draft),
                 "-td", str(args.threads), "-tbd", str(args.threads)]
    servers = {}
    try:
        servers["plain"] = start_server(bin_dir, args.model, [], args.threads)
        servers["spec"] = start_server(bin_dir, args.model, extra, args.threads)
        rates = {"plain": [], "spec": []}
        drafted = accepted = 0
        texts = {}
        for rnd in range(args.rounds + 1):  # round 0 warms up
            for kind in ("plain", "spec"):
                r = ask(servers[kind][1], messages, args.n_gen)
                t = r.get("timings", {})
                texts[kind] = r["choices"][0]["message"]["content"]
                if rnd:
                    rates[kind].append(t["predicted_per_second"])
                    if kind == "spec":
                        drafted += t.get("draft_n", 0)
                        accepted += t.get("draft_n_accepted", 0)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    ratios = [s / q for q, s in zip(rates["plain"], rates["spec"])]
    out = {"model": Path(args.model).name, "spec": args.spec, "draft": args.draft, "n_draft": args.n_draft,
           "plain_tok_s": statistics.median(rates["plain"]), "spec_tok_s": statistics.median(rates["spec"]),
           "speedup": statistics.median(ratios), "acceptance_rate": accepted / drafted if drafted else None,
           "identical": texts["plain"] == texts["spec"], "plain_runs": rates["plain"], "spec_runs": rates["spec"]}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
