"""Argument checks at the API boundary: a ValueError/TypeError that names the argument and the
allowed range, instead of a pybind11 signature dump or a silent wrap-around in C++."""
from __future__ import annotations

import operator
import random

MAX_THREADS = 512        # csrc/core/threadpool.h kMaxThreads: beyond it a pool only starves the machine
INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1


def integer(name: str, value, lo: int, hi: int) -> int:
    """value as an int in [lo, hi]; bools and floats are refused (a float token id or thread
    count is a caller's bug, not something to round)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def n_threads(value) -> int | None:
    """None: the default (physical cores); else 1..MAX_THREADS."""
    if value is None:
        return None
    return integer("n_threads", value, 1, MAX_THREADS)


def seed(value) -> int:
    """None or -1 (llama-cpp-python's 'random'): a fresh random seed; else 0..2**64-1."""
    if value is None or (not isinstance(value, bool) and isinstance(value, int) and value == -1):
        return random.getrandbits(63)
    return integer("seed", value, 0, UINT64_MAX)
