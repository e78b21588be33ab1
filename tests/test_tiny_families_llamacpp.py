"""Every dense family and rope scaling against llama.cpp itself: the tiny F32 files of
tools/make_tiny_gguf.py (rebuilt here, deterministic), and llama.cpp 0.3.36's logits for them
(tests/data/tiny_families_llamacpp.npz, made by tools/make_tiny_llamacpp_logits.py with the peer
llama-cpp-python). test_tiny_models.py checks the same files against a numpy forward pass written
from the formulas; this checks that the formulas are llama.cpp's (norm placement, GeGLU, window
layout, soft-caps, LongRoPE factor choice, YaRN's ramp and magnitude, rope_freqs).

Tolerance: 5e-3 of the logits' standard deviation. llama.cpp's own spread, measured on these
files with the same build run differently (1 thread and batches of 1 token against the fixture's
2 threads and one batch): up to 6.4e-4 (gemma3; 1e-6 to 6e-4 over the cases; 3 threads gave
identical logits). pyllm against the fixture: 0.7e-3 to 1.5e-3 (gemma3 the most: GeGLU's f16
table and the f16 KV cache round a float32 stream summed in another order), about 2x llama.cpp's
own spread. The bound is ~8x that spread and 60x below the smallest effect of a feature under
test (llama3's rope_freqs moves these logits by 0.3 std; YaRN and linear scaling by ~1)."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_tiny_gguf import make_tiny_model  # noqa: E402
from make_tiny_llamacpp_logits import CASES, N_CTX, PROMPT, case_key  # noqa: E402

import pyllm  # noqa: E402

TOL = 5e-3


@pytest.fixture(scope="module")
def llamacpp():
    return np.load(Path(__file__).parent / "data" / "tiny_families_llamacpp.npz")


@pytest.mark.parametrize("arch,variant", CASES, ids=[case_key(a, v) for a, v in CASES])
def test_logits_match_llama_cpp(tmp_path, llamacpp, arch, variant):
    path = tmp_path / f"{case_key(arch, variant)}.gguf"
    make_tiny_model(path, "F32", arch, variant=variant)
    want = llamacpp[case_key(arch, variant)]
    with pyllm.Model(path, n_ctx=N_CTX, n_threads=2) as m:
        got = m.logits(PROMPT)
        # and one token at a time through the cache (decode path, window over the cache)
        m.context().truncate(0)
        stepped = np.stack([m.context().eval(np.array([t], np.int32), False) for t in PROMPT])
    err = np.abs(got - want).max(1) / want.std()
    step_err = np.abs(stepped - want).max(1) / want.std()
    print(case_key(arch, variant), "per-token max |diff| / std:", " ".join(f"{e:.1e}" for e in err))
    assert err.max() < TOL and step_err.max() < TOL
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("variant", ["rope_freqs", "yarn", "linear"])
def test_each_rope_variant_changes_llama_cpp_logits(llamacpp, variant):
    """The fixtures exercise what they claim: same weights, the variant's logits differ from the
    plain file's by far more than TOL."""
    plain, scaled = llamacpp["llama_plain"], llamacpp[f"llama_{variant}"]
    assert np.abs(plain - scaled).max() / plain.std() > 50 * TOL
