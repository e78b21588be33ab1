"""llama.cpp's logits for the tiny family files of tools/make_tiny_gguf.py (F32 weights), saved to
tests/data/tiny_families_llamacpp.npz for tests/test_tiny_families_llamacpp.py.

Two interpreters: this one (with the `gguf` package) writes the files, the peer's venv (with
llama_cpp, llama-cpp-python 0.3.36) evaluates them:
    python3 tools/make_tiny_llamacpp_logits.py [--peer ~/.cache/pyllm-peer/venv/bin/python]
The tiny files are deterministic (seeded), so the test rebuilds them rather than storing them."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_gguf import make_tiny_model  # noqa: E402

# (family, variant): every dense family and the rope scalings.
CASES = [(a, None) for a in ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")] + \
        [("llama", "rope_freqs"), ("llama", "yarn"), ("qwen2", "yarn"), ("llama", "linear")]
# 10 tokens: past gemma's window of 4.
PROMPT = [5, 77, 130, 3, 250, 42, 9, 11, 300, 17]
N_CTX = 64

PEER_SCRIPT = """
import json, sys, numpy as np, llama_cpp
jobs = json.loads(sys.argv[1]); out = {}
for key, path in jobs["files"].items():
    llm = llama_cpp.Llama(path, n_ctx=jobs["n_ctx"], n_threads=2, logits_all=True, verbose=False, n_batch=64)
    llm.eval(jobs["prompt"])
    out[key] = np.array(llm.scores[:len(jobs["prompt"])], np.float32)
    del llm
np.savez(jobs["out"], **out)
"""


def case_key(arch, variant):
    return f"{arch}_{variant or 'plain'}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", default=os.path.expanduser("~/.cache/pyllm-peer/venv/bin/python"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny_families_llamacpp.npz"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for arch, variant in CASES:
            path = os.path.join(tmp, case_key(arch, variant) + ".gguf")
            make_tiny_model(path, "F32", arch, variant=variant)
            files[case_key(arch, variant)] = path
        jobs = {"files": files, "prompt": PROMPT, "n_ctx": N_CTX, "out": a.out}
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        subprocess.run([a.peer, "-c", PEER_SCRIPT, json.dumps(jobs)], check=True, env=env)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
