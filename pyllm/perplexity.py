"""Perplexity and KL-divergence of a model on a text, with llama-perplexity's method.

The text is tokenized whole (no BOS), cut into chunks of `ctx` tokens, and each chunk is
evaluated from an empty cache; only the second half of each chunk is scored (tokens ctx/2+1 ..
ctx-1, each from the logits of the position before), so every scored token has at least ctx/2
tokens of context. Against a base model it also reports the KL-divergence KL(base || model) per
scored token, its mean and 99th percentile, how often both models agree on the most likely token,
and the difference in perplexity.

The base can be another GGUF file (evaluated chunk by chunk next to the model: exact, full
distributions) or a file written earlier with `--save-logprobs`. Saving every log-prob would take
n_scored x n_vocab floats (16 chunks of 512 on a 49152-token vocabulary: 800 MB as float32), so a
saved base keeps, per scored token, the log-probs of its `top_k` most likely tokens (float32) and
the log-prob of the token that actually came next. KL is then computed over those k tokens plus one
"rest" bucket holding the remaining probability of both models: by the log-sum inequality this is
a lower bound on the exact KL that loses only what the base spreads over its tail (with k=256 the
difference is in the fourth decimal on SmolLM2). `--top-k 0` stores full float16 log-probs instead.

Not here: the forward pass (pyllm.model), tokenization (pyllm.tokenizer).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

LOGPROBS_FORMAT = "pyllm-logprobs-1"


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

@dataclass
class KLStats:
    mean_kld: float
    p99_kld: float
    median_kld: float
    max_kld: float
    same_top1: float          # fraction of scored tokens where both models' argmax agree
    base_ppl: float
    delta_ppl: float          # ppl(model) - ppl(base)
    exact: bool               # False when the base came from a saved top-k file (a lower bound)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PerplexityResult:
    ppl: float
    n_chunks: int
    ctx: int
    n_scored: int
    ppl_running: list[float]           # after each chunk, as llama-perplexity prints
    nll: np.ndarray                    # (n_scored,) negative log-likelihood of each scored token
    seconds: float
    kl: KLStats | None = None
    kld: np.ndarray | None = field(default=None, repr=False)  # (n_scored,) per-token KL
    logprobs: "SavedLogprobs | None" = field(default=None, repr=False)  # with keep_logprobs=True

    def summary(self) -> str:
        lines = [f"perplexity: {self.ppl:.4f} over {self.n_chunks} chunks of {self.ctx} tokens "
                 f"({self.n_scored} scored tokens, {self.seconds:.1f} s)"]
        if self.kl is not None:
            k = self.kl
            approx = "" if k.exact else " (top-k base: a lower bound)"
            lines += [f"base perplexity: {k.base_ppl:.4f}   delta PPL: {k.delta_ppl:+.4f}",
                      f"mean KLD: {k.mean_kld:.6f}   99th percentile KLD: {k.p99_kld:.6f}   "
                      f"median: {k.median_kld:.6f}   max: {k.max_kld:.6f}{approx}",
                      f"same top-1 token: {100 * k.same_top1:.2f}%"]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Log-probabilities
# ---------------------------------------------------------------------------------------------

def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (sums of 49152 exponentials lose digits in float32)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


def _kl_full(base_lp: np.ndarray, lp: np.ndarray) -> np.ndarray:
    """Exact KL(base || model) per row from full log-prob rows."""
    return (np.exp(base_lp) * (base_lp - lp)).sum(axis=-1)


def _kl_topk(base_ids: np.ndarray, base_top_lp: np.ndarray, lp: np.ndarray) -> np.ndarray:
    """KL over the base's top-k tokens plus one bucket for everything else (see the module doc)."""
    q_top = np.take_along_axis(lp, base_ids.astype(np.int64), axis=-1)
    p_top = base_top_lp.astype(np.float64)
    kl = (np.exp(p_top) * (p_top - q_top)).sum(axis=-1)
    if base_ids.shape[-1] >= lp.shape[-1]:
        return kl  # the whole vocabulary: no rest (it would only hold rounding noise)
    p_rest = np.clip(1.0 - np.exp(p_top).sum(axis=-1), 0.0, 1.0)
    q_rest = np.clip(1.0 - np.exp(q_top).sum(axis=-1), 1e-30, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rest = np.where(p_rest > 0, p_rest * (np.log(np.maximum(p_rest, 1e-300)) - np.log(q_rest)), 0.0)
    return kl + rest


class SavedLogprobs:
    """A base model's log-probs at the scored positions: from a file written by `save_logprobs`,
    or kept in memory (PerplexityResult.logprobs) to serve as kl_base without a file."""

    def __init__(self, path: str | os.PathLike | None = None, **arrays):
        if path is None:
            self._set(arrays)
            return
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z or str(z["format"]) != LOGPROBS_FORMAT:
                raise ValueError(f"{path}: not a pyllm log-probs file (format {LOGPROBS_FORMAT!r})")
            self.ctx = int(z["ctx"])
            self.tokens = z["tokens"].astype(np.int64)     # (n_chunks, ctx) token ids evaluated
            self.target_lp = z["target_lp"]                # (n_scored,) log-prob of the next token
            self.top1 = z["top1"].astype(np.int64)         # (n_scored,) base argmax
            self.top_ids = z["top_ids"] if "top_ids" in z else None   # (n_scored, k) or absent
            self.top_lp = z["top_lp"] if "top_lp" in z else None      # (n_scored, k)
            self.full_lp = z["full_lp"] if "full_lp" in z else None   # (n_scored, n_vocab) f16

    def _set(self, a: dict) -> None:
        self.ctx = int(a["ctx"])
        self.tokens = np.asarray(a["tokens"], np.int64)
        self.target_lp, self.top1 = a["target_lp"], np.asarray(a["top1"], np.int64)
        self.top_ids, self.top_lp, self.full_lp = a.get("top_ids"), a.get("top_lp"), a.get("full_lp")

    @property
    def n_chunks(self) -> int:
        return self.tokens.shape[0]


# ---------------------------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------------------------

def _chunks(model, text_or_ids, ctx: int, chunks: int | None) -> np.ndarray:
    if isinstance(text_or_ids, (str, bytes)):
        ids = model.tokenize(text_or_ids, add_bos=False)
    else:
        ids = list(text_or_ids)
    n = len(ids) // ctx
    if chunks is not None:
        n = min(n, int(chunks))
    if n < 1:
        raise ValueError(f"the text has {len(ids)} tokens; perplexity needs at least ctx={ctx} "
                         f"(two chunks of ctx/2 would be 2*{ctx // 2})")
    arr = np.asarray(ids[: n * ctx], dtype=np.int32).reshape(n, ctx)
    bos = getattr(model.tokenizer, "bos_id", None)
    if getattr(model.tokenizer, "add_bos", False) and bos is not None:
        arr[:, 0] = bos  # llama-perplexity's rule: models that want a BOS get it at each chunk start
    return arr


def perplexity(model, text, ctx: int = 512, chunks: int | None = None, kl_base=None,
               save_logprobs: str | os.PathLike | None = None, top_k: int = 256,
               keep_logprobs: bool = False,
               progress: Callable[[int, int, float], None] | None = None) -> PerplexityResult:
    """Perplexity of `model` (a pyllm.Model whose n_ctx >= ctx) on `text` (str or token ids).

    kl_base: a pyllm.Model, a path to a GGUF file, a path to a file written by save_logprobs, or a
    SavedLogprobs; then the result carries KL statistics against it. save_logprobs: write this
    model's log-probs at the scored positions (top_k of them per token; 0 = all, as float16) for
    later use as a base. keep_logprobs: keep all of them, float32, in result.logprobs (n_scored x
    n_vocab x 4 bytes: 800 MB for 16 chunks of 512 on a 49152-token vocabulary).
    progress(chunk_index, n_chunks, running_ppl) is called after each chunk.
    """
    if ctx < 4 or ctx % 2:
        raise ValueError(f"ctx must be an even number >= 4, got {ctx}")
    if model.n_ctx < ctx:
        raise ValueError(f"the model was loaded with n_ctx={model.n_ctx}, smaller than ctx={ctx}")
    tokens = _chunks(model, text, ctx, chunks)
    n_chunks = tokens.shape[0]
    first = ctx // 2
    per_chunk = ctx - 1 - first

    base_model = saved = None
    if kl_base is not None:
        if isinstance(kl_base, SavedLogprobs) or (isinstance(kl_base, (str, os.PathLike)) and str(kl_base).endswith(".npz")):
            saved = kl_base if isinstance(kl_base, SavedLogprobs) else SavedLogprobs(kl_base)
            if saved.ctx != ctx or saved.n_chunks < n_chunks or not np.array_equal(saved.tokens[:n_chunks], tokens):
                raise ValueError(f"{kl_base}: saved for other tokens (ctx {saved.ctx}, {saved.n_chunks} chunks); "
                                 f"evaluate the base on the same text, ctx and chunk count")
        elif isinstance(kl_base, (str, os.PathLike)):
            from pyllm.model import Model
            base_model = Model(kl_base, n_ctx=ctx, n_threads=model.n_threads)
        else:
            base_model = kl_base

    n_scored = n_chunks * per_chunk
    nll = np.empty(n_scored, np.float64)
    kld = np.empty(n_scored, np.float64) if kl_base is not None else None
    base_nll = np.empty(n_scored, np.float64) if kl_base is not None else None
    same = np.empty(n_scored, bool) if kl_base is not None else None
    save = None
    if save_logprobs is not None or keep_logprobs:
        save = {"target_lp": np.empty(n_scored, np.float32), "top1": np.empty(n_scored, np.int32)}
        if keep_logprobs:
            save["full_lp"] = np.empty((n_scored, model.n_vocab), np.float32)
        elif top_k > 0:
            save["top_ids"] = np.empty((n_scored, top_k), np.int32)
            save["top_lp"] = np.empty((n_scored, top_k), np.float32)
        else:
            save["full_lp"] = np.empty((n_scored, model.n_vocab), np.float16)

    running = []
    t0 = time.perf_counter()
    for c in range(n_chunks):
        ids = tokens[c]
        s = slice(c * per_chunk, (c + 1) * per_chunk)
        targets = ids[first + 1:].astype(np.int64)                # (per_chunk,)
        lp = log_softmax(model.logits(ids)[first:ctx - 1])        # (per_chunk, n_vocab)
        target_lp = np.take_along_axis(lp, targets[:, None], axis=-1)[:, 0]
        nll[s] = -target_lp
        top1 = lp.argmax(axis=-1)
        if save is not None:
            save["target_lp"][s] = target_lp
            save["top1"][s] = top1
            if "top_ids" in save:
                k = min(top_k, lp.shape[1])
                part = np.argpartition(-lp, k - 1, axis=-1)[:, :k]
                order = np.argsort(-np.take_along_axis(lp, part, axis=-1), axis=-1)
                ids_k = np.take_along_axis(part, order, axis=-1)
                save["top_ids"][s] = ids_k
                save["top_lp"][s] = np.take_along_axis(lp, ids_k, axis=-1)
            else:
                save["full_lp"][s] = lp
        if base_model is not None:
            base_lp = log_softmax(base_model.logits(ids)[first:ctx - 1])
            kld[s] = _kl_full(base_lp, lp)
            base_nll[s] = -np.take_along_axis(base_lp, targets[:, None], axis=-1)[:, 0]
            same[s] = base_lp.argmax(axis=-1) == top1
        elif saved is not None:
            if saved.full_lp is not None:
                kld[s] = _kl_full(saved.full_lp[s].astype(np.float64), lp)
            else:
                kld[s] = _kl_topk(saved.top_ids[s], saved.top_lp[s], lp)
            base_nll[s] = -saved.target_lp[s].astype(np.float64)
            same[s] = saved.top1[s] == top1
        running.append(float(math.exp(nll[: (c + 1) * per_chunk].mean())))
        if progress is not None:
            progress(c, n_chunks, running[-1])
    seconds = time.perf_counter() - t0

    if save is not None and save_logprobs is not None:
        stored = dict(save)
        if keep_logprobs and top_k == 0:
            stored["full_lp"] = save["full_lp"].astype(np.float16)
        elif keep_logprobs:  # the file gets the top-k form even when all were kept
            lp_all = save["full_lp"]
            k = min(top_k, lp_all.shape[1])
            part = np.argpartition(-lp_all, k - 1, axis=-1)[:, :k]
            order = np.argsort(-np.take_along_axis(lp_all, part, axis=-1), axis=-1)
            stored["top_ids"] = np.take_along_axis(part, order, axis=-1).astype(np.int32)
            stored["top_lp"] = np.take_along_axis(lp_all, stored["top_ids"], axis=-1)
            del stored["full_lp"]
        np.savez(save_logprobs, format=np.array(LOGPROBS_FORMAT), ctx=np.array(ctx), tokens=tokens, **stored)

    result = PerplexityResult(ppl=running[-1], n_chunks=n_chunks, ctx=ctx, n_scored=n_scored,
                              ppl_running=running, nll=nll, seconds=seconds)
    if keep_logprobs:
        result.logprobs = SavedLogprobs(ctx=ctx, tokens=tokens, **save)
    if kld is not None:
        base_ppl = float(math.exp(base_nll.mean()))
        result.kld = kld
        result.kl = KLStats(mean_kld=float(kld.mean()), p99_kld=float(np.percentile(kld, 99)),
                            median_kld=float(np.median(kld)), max_kld=float(kld.max()),
                            same_top1=float(same.mean()), base_ppl=base_ppl,
                            delta_ppl=result.ppl - base_ppl,
                            exact=saved is None or saved.full_lp is not None)
    return result


# ---------------------------------------------------------------------------------------------
# Command line: `pyllm perplexity MODEL -f TEXT`
# ---------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF file (or known model name)")
    p.add_argument("-f", "--file", required=True, help="text file to evaluate (UTF-8)")
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512)")
    p.add_argument("--chunks", type=int, default=None, help="evaluate only the first N chunks")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: physical cores)")
    p.add_argument("--kl-base", default=None, metavar="BASE",
                   help="base model for KL-divergence: a GGUF file, or an .npz from --save-logprobs")
    p.add_argument("--save-logprobs", default=None, metavar="FILE.npz",
                   help="save this model's log-probs at the scored tokens, to serve later as --kl-base")
    p.add_argument("--top-k", type=int, default=256,
                   help="log-probs kept per token by --save-logprobs (0: all, as float16; default 256)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    from pyllm.cli import add_cache_type_arguments
    add_cache_type_arguments(p)


def run(args: argparse.Namespace) -> int:
    from pyllm.model import Model
    with open(args.file, "rb") as f:
        text = f.read().decode("utf-8")
    from pyllm.cli import cache_type_kwargs
    model = Model(args.model, n_ctx=args.ctx, n_threads=args.threads, **cache_type_kwargs(args))

    from pyllm.progress import Progress
    shown: list[Progress] = []

    def progress(i, n, ppl):  # one line per chunk, on a terminal or not: llama-perplexity's log
        if not shown:
            shown.append(Progress(n, "perplexity", enabled=False, lines=True))
        shown[0].update(i + 1, f"{ppl:.4f}")

    try:
        res = perplexity(model, text, ctx=args.ctx, chunks=args.chunks, kl_base=args.kl_base,
                         save_logprobs=args.save_logprobs, top_k=args.top_k, progress=progress)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    if args.json:
        import json
        out = {"ppl": res.ppl, "n_chunks": res.n_chunks, "ctx": res.ctx, "n_scored": res.n_scored,
               "ppl_running": res.ppl_running, "seconds": res.seconds}
        if res.kl is not None:
            out["kl"] = res.kl.as_dict()
        print(json.dumps(out, indent=2))
    else:
        print(res.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pyllm perplexity", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
