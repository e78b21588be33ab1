"""Absurd API arguments get a ValueError/TypeError that names the argument (issue 12, rows 3, 5, 7
and 10): before these checks n_threads=100000 aborted the process (SIGABRT from the thread pool,
after starting ~32k threads), Sampler.sample read past a short logits array, seed=-1 or 2**64 gave
a pybind11 TypeError with a C++ signature dump, and n_threads=-1 or float token ids were accepted
silently."""
import subprocess
import sys

import numpy as np
import pytest

import pyllm
from pyllm import _core


@pytest.fixture(scope="module")
def model(smollm2_path):
    with pyllm.Model(smollm2_path, n_ctx=256, n_threads=2) as m:
        yield m


@pytest.mark.parametrize("n_threads", [100000, 513, 0, -1])
def test_thread_count_out_of_range(smollm2_path, n_threads):
    with pytest.raises(ValueError, match="n_threads"):
        pyllm.Model(smollm2_path, n_threads=n_threads)


@pytest.mark.parametrize("n_threads", [1.5, True, "2"])
def test_thread_count_of_wrong_type(smollm2_path, n_threads):
    with pytest.raises(TypeError, match="n_threads"):
        pyllm.Model(smollm2_path, n_threads=n_threads)


def test_native_pool_refuses_absurd_counts_without_starting_threads():
    # The C++ limit behind the Python check (csrc/core/threadpool.h kMaxThreads = 512), reached
    # directly through the Context binding in a child process: a clean ValueError, no abort.
    code = (
        "import pyllm, threading\n"
        "from pyllm import _core, hub\n"
        "m = pyllm.Model(hub.resolve('smollm2-135m-instruct'), n_ctx=64, n_threads=1)\n"
        "try:\n"
        "    _core.Context(m._model, 64, 64, 100000)\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
        "print('threads', threading.active_count())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "refused: n_threads = 100000 is more than pyllm's limit of 512" in r.stdout


def test_n_ctx_out_of_c_range(smollm2_path):
    with pytest.raises(ValueError, match="n_ctx"):
        pyllm.Model(smollm2_path, n_ctx=2**31)


def test_sampler_checks_logits_length():
    s = _core.Sampler(1000, temperature=0.0)
    with pytest.raises(ValueError, match="n_vocab = 1000"):
        s.sample(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="n_vocab = 1000"):
        s.sample(np.zeros((2, 1000), np.float32))
    logits = np.zeros(1000, np.float32)
    logits[7] = 5.0
    assert s.sample(logits) == 7


def test_seed_minus_one_means_random_and_out_of_range_is_named(model):
    a = model.generate("Once upon a time", max_tokens=8, seed=-1, temperature=1.0)
    assert isinstance(a, str)
    with pytest.raises(ValueError, match="seed"):
        model.generate("Hi", max_tokens=2, seed=2**64)
    with pytest.raises(ValueError, match="top_k"):
        model.generate("Hi", max_tokens=2, top_k=2**31)


def test_float_token_ids_are_refused(model):
    with pytest.raises(TypeError, match="integers"):
        model.logits([1.0, 2.5])
    with pytest.raises(TypeError, match="integers"):
        list(model.generate_tokens([1, 2.5], max_tokens=1))


def test_max_tokens_minus_one_means_until_the_end(model):
    # -1: until the end of the turn or the context, in generate and in the OpenAI-shaped calls.
    text = model.generate("The capital of France is", max_tokens=-1, temperature=0)
    assert len(model.tokenize(text)) > 0
    r = model.create_completion("The capital of France is", max_tokens=-1, temperature=0)
    assert r["usage"]["completion_tokens"] > 0
    assert r["choices"][0]["finish_reason"] in ("stop", "length")


def test_all_nan_logits_raise_numerical_error():
    # Issue 12, row 10: a bare ValueError before; now pyllm.NumericalError (still a ValueError).
    s = _core.Sampler(16, temperature=0.8)
    with pytest.raises(pyllm.NumericalError, match="NaN or infinite"):
        s.sample(np.full(16, np.nan, np.float32))
