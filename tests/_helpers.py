"""Helpers shared by the tests that hold a real model to llama.cpp's teacher-forced fixtures
(test_model_parity.py for SmolLM2, test_gemma3.py for Gemma 3). Plain functions, not fixtures:
each test module keeps its own model and thresholds."""
from pathlib import Path

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-probabilities along the last axis, in the dtype given (the tests pass float64)."""
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def teacher_forced(model, npz: Path, chunks=(0, 1)) -> list[tuple]:
    """For each chunk of a llama.cpp fixture (chunk{c}_ids, chunk{c}_top10_ids,
    chunk{c}_top10_logprobs): (ids, our float64 log-probs, llama.cpp's top-10 ids, its top-10
    log-probs)."""
    z = np.load(npz)
    out = []
    for c in chunks:
        ids = z[f"chunk{c}_ids"]
        out.append((ids, log_softmax(model.logits(ids.tolist()).astype(np.float64)),
                    z[f"chunk{c}_top10_ids"], z[f"chunk{c}_top10_logprobs"]))
    return out


def assert_disagreements_are_near_ties(tf: list[tuple], max_margin: float = 0.5) -> None:
    """Where our top-1 is not llama.cpp's, ours must be in llama.cpp's top 10, within max_margin
    nats of its choice by llama.cpp's own log-probs."""
    for _, lp, top, top_lp in tf:
        ours = lp.argmax(1)
        for pos in np.nonzero(ours != top[:, 0])[0]:
            margin = top_lp[pos, 0] - top_lp[pos][top[pos] == ours[pos]]
            assert margin.size == 1 and margin[0] < max_margin, f"position {pos}: llama.cpp was sure (margin {margin})"


def top1_agreement(tf: list[tuple]) -> list[float]:
    """Per chunk, the fraction of positions where our top-1 token is llama.cpp's."""
    return [float((lp.argmax(1) == top[:, 0]).mean()) for _, lp, top, _ in tf]


def logprob_of_llama_top(tf: list[tuple]) -> np.ndarray:
    """|our log-prob - llama.cpp's| of llama.cpp's top token, at every position of every chunk."""
    return np.concatenate([np.abs(lp[np.arange(len(lp)), top[:, 0]] - top_lp[:, 0]) for _, lp, top, top_lp in tf])
