"""Importance-weighted (imatrix) quantizers: bit-exact with ggml's, and better than plain rounding
where the importances say it matters."""
import hashlib

import numpy as np
import pytest

from pyllm import _core
from test_quant_formats import ggml_fixture_inputs

WEIGHTED = ["Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def fixture_importance(n: int) -> np.ndarray:
    """Deterministic per-column importances spanning four decades, a few columns near zero. (Exact
    zeros can make ggml's Q5_1 search divide by a rounding residue and trip its assertions.)"""
    j = np.arange(n)
    imp = 10.0 ** (((j * 7919) % 97) / 24.0 - 2.0)
    imp[j % 53 == 0] = 1e-4
    return imp.astype(np.float32)


def weighted(name, x, imp):
    t = _core.type_from_name(name)
    raw = np.ascontiguousarray(x, dtype=np.float32).view(np.uint8).reshape(x.shape[0], -1)
    return _core.convert_rows("test", 0, raw, x.shape[1], t, 2, imp)


@pytest.mark.parametrize("name", WEIGHTED)
def test_weighted_bytes_equal_ggml(name, fixture_json):
    fx = fixture_json("ggml_imatrix_sha256.json")["sha256"][name]
    inputs = ggml_fixture_inputs()
    assert set(fx) == set(inputs)
    got = {k: hashlib.sha256(weighted(name, x, fixture_importance(x.shape[1])).tobytes()).hexdigest()
           for k, x in inputs.items()}
    assert got == fx


@pytest.mark.parametrize("name", WEIGHTED)
def test_weighted_lowers_the_weighted_error(name):
    # The point of importances: the error they weigh goes down against plain rounding.
    x = ggml_fixture_inputs()["bell_group_scales"]
    imp = fixture_importance(x.shape[1])
    t = _core.type_from_name(name)
    rtn = _core.dequantize(t, _core.quantize(t, x), x.shape[1])
    w = _core.dequantize(t, weighted(name, x, imp), x.shape[1])
    err = lambda y: float((((y - x) ** 2) * imp).sum())
    assert err(w) < 0.9 * err(rtn)


def test_q8_0_has_no_weighted_variant_and_stays_reference():
    # ggml ignores importances for Q8_0; so do we.
    x = ggml_fixture_inputs()["bell"]
    t = _core.type_from_name("Q8_0")
    assert np.array_equal(weighted("Q8_0", x, fixture_importance(x.shape[1])), _core.quantize(t, x))
