"""llama.cpp's side of tools/bench_vs_llamacpp.py, run by the llama-cpp-python environment's
Python (it must not import pyllm). Measures the same figures as `pyllm bench`, the same way:
  engine: pp = one batched eval of --pp tokens from an empty cache; tg = --tg single-token evals
          after one token (no sampling)
  user:   a streamed greedy create_completion of --tg tokens on the --text prompt cut to --pp
          tokens: pp = prompt tokens / time to the first piece, tg = tokens/s after it
  load:   Llama construction to the first token's logits; peak RSS of this process
Every figure is the mean over --reps repetitions after one warm-up. Prints one JSON line.

Also `quantize IN OUT FTYPE`: llama.cpp's own quantizer (requantizing allowed), to make the
Q4_0 / Q8_0 / F16 / F32 variants that the comparison runs on."""
import argparse
import json
import resource
import statistics
import sys
import time


def quantize(src: str, dst: str, ftype_name: str) -> None:
    import llama_cpp
    ftypes = {"F32": llama_cpp.LLAMA_FTYPE_ALL_F32, "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
              "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
              "Q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1, "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[ftype_name]
    params.allow_requantize = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        sys.exit(f"llama_model_quantize failed with {rc}")


def bench(a) -> dict:
    from llama_cpp import Llama
    t0 = time.perf_counter()
    llm = Llama(model_path=a.model, n_ctx=max(1024, a.pp + a.tg + 8), n_threads=a.threads,
                n_threads_batch=a.threads, n_batch=512, verbose=False)
    n_vocab = llm.n_vocab()
    toks = [((i * 7919) % 20000 + 100) % n_vocab for i in range(max(a.pp, a.tg + 1))]
    llm.eval(toks[:1])
    load_s = time.perf_counter() - t0

    pp, tg = [], []
    for rep in range(a.reps + 1):  # the first repetition warms up
        llm.reset(); t0 = time.perf_counter(); llm.eval(toks[:a.pp]); dt = time.perf_counter() - t0
        if rep:
            pp.append(a.pp / dt)
        llm.reset(); llm.eval(toks[:1]); t0 = time.perf_counter()
        for i in range(a.tg):
            llm.eval([toks[i + 1]])
        dt = time.perf_counter() - t0
        if rep:
            tg.append(a.tg / dt)

    text = open(a.text, encoding="utf-8").read()
    ids = llm.tokenize(text.encode(), add_bos=False)[:a.pp]
    prompt = llm.detokenize(ids).decode("utf-8", "ignore")
    n_prompt = len(llm.tokenize(prompt.encode(), add_bos=False))
    upp, utg, n_out = [], [], 0
    for rep in range(a.reps + 1):
        llm.reset(); t0 = time.perf_counter(); first = None; out = []
        for chunk in llm.create_completion(prompt, max_tokens=a.tg, temperature=0, top_k=1, stream=True):
            if first is None:
                first = time.perf_counter()
            out.append(chunk["choices"][0]["text"])
        t_end = time.perf_counter()
        n_out = len(llm.tokenize("".join(out).encode(), add_bos=False))
        if rep and first is not None:
            upp.append(n_prompt / (first - t0))
            if n_out > 1:
                utg.append((n_out - 1) / (t_end - first))
    mean = statistics.fmean
    return {"pp_tok_s": mean(pp), "tg_tok_s": mean(tg), "user_pp_tok_s": mean(upp) if upp else None,
            "user_tg_tok_s": mean(utg) if utg else None, "user_prompt_tokens": n_prompt,
            "user_generated_tokens": n_out, "load_s": load_s,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "threads": a.threads, "n_prompt": a.pp, "n_gen": a.tg}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "quantize":
        quantize(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=256)
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--text", required=True, help="prompt text file for the user-level run")
    print(json.dumps(bench(ap.parse_args())))


if __name__ == "__main__":
    main()
