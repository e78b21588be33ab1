"""llama-cpp-python's prompt-lookup decoding (LlamaPromptLookupDecoding) against its plain decoding
on pyllm bench's summarize prompt, alternated. Run with the peer's venv:
    ~/.cache/pyllm-peer/venv/bin/python tools/bench_spec_peer.py MODEL.gguf"""
import statistics
import sys
import time
from pathlib import Path

from llama_cpp import Llama
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

src = (Path(__file__).resolve().parent.parent / "pyllm" / "bench.py").read_text()  # PROSE, without importing pyllm
PROSE = src.split('PROSE = (')[1].split('\n)\n')[0]
PROSE = eval("(" + PROSE + ")")
path = sys.argv[1]; n_gen = 128
plain = Llama(path, n_ctx=2048, n_threads=2, verbose=False)
look = Llama(path, n_ctx=2048, n_threads=2, verbose=False, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=8))
ids = plain.tokenize(PROSE.encode(), add_bos=False)[:300]
source = plain.detokenize(ids).decode()
msgs = [{"role": "user", "content": "Summarize this text, quoting its key sentences.\n\n" + source}]
r = {"plain": [], "lookup": []}
for rep in range(4):
    for kind, llm in (("plain", plain), ("lookup", look)):
        llm.reset()
        first = None; n = 0
        for ch in llm.create_chat_completion(msgs, max_tokens=n_gen, temperature=0, stream=True):
            if ch["choices"][0]["delta"].get("content"):
                if first is None: first = time.perf_counter()
                n += 1
        t = time.perf_counter()
        if rep: r[kind].append((n - 1) / (t - first))
for k, v in r.items(): print(k, f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}", [round(x,1) for x in v])
print("speedup", statistics.mean(r["lookup"]) / statistics.mean(r["plain"]))
