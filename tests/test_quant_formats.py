"""Quantization formats: our reference (de)quantizers against the `gguf` package (the oracle for
every format it implements), Q8_K against a numpy model of ggml's rule, the K-quant and IQ4 quantizers
against hashes of ggml's own output, and the K-quant . Q8_K and IQ4 reference matmuls against a
float computation on the dequantized operands."""
import hashlib

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as GT

from pyllm import _core

INFO = {_core.type_info(t)["name"]: _core.type_info(t) for t in _core.known_types()}
QUANTIZABLE = sorted(name for name, i in INFO.items() if i["has_quantizer"])
K_WEIGHTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
IQ_WEIGHTS = ["IQ4_NL", "IQ4_XS"]   # non-linear 4-bit grid; IQ4_NL pairs with Q8_0, IQ4_XS with Q8_K
# Formats whose quantizer the gguf package implements: our bytes must equal its bytes.
GGUF_QUANTIZES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
# Formats whose dequantizer the gguf package implements: our floats must equal its floats.
GGUF_DEQUANTIZES = GGUF_QUANTIZES + K_WEIGHTS + IQ_WEIGHTS

# Bound on the relative rms error of a round trip on gaussian data (averaged over rows), per
# type: measured values with margin; a broken layout or scale gives errors of order 1.
RT_REL_RMS = {
    "F32": 0.0, "F16": 1e-3, "BF16": 5e-3,
    "Q8_0": 0.01, "Q8_1": 0.01, "Q8_K": 0.01,
    "Q6_K": 0.025, "Q5_0": 0.06, "Q5_1": 0.06, "Q5_K": 0.05,
    "Q4_0": 0.12, "Q4_1": 0.11, "Q4_K": 0.09, "Q3_K": 0.2, "Q2_K": 0.36,
    "IQ4_NL": 0.1, "IQ4_XS": 0.1,   # measured 0.073-0.081 mean, 0.092 max (one 32-block row)
}

# Byte offsets of the f16 fields (d, m, dmin) inside each block: random test blocks get finite
# values there so the comparison is about layout, not NaN propagation.
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "IQ4_NL": [0], "IQ4_XS": [0],
}


def tid(name):
    return _core.type_from_name(name)


def quantize(name, x):
    return _core.quantize(tid(name), np.ascontiguousarray(x, dtype=np.float32))


def dequantize(name, q, n):
    return _core.dequantize(tid(name), q, n, isa="ref")


def gguf_quantize(name, x):
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), GT[name])
    return out.view(np.uint8).reshape(x.shape[0], -1)


def gguf_dequantize(name, q):
    with np.errstate(over="ignore", invalid="ignore"):
        return gguf.quants.dequantize(q, GT[name]).reshape(q.shape[0], -1)


def assert_same_floats(ours, theirs):
    """Bit-for-bit equal floats, except that any NaN matches any NaN."""
    assert ours.shape == theirs.shape
    both_nan = np.isnan(ours) & np.isnan(theirs)
    a = np.where(both_nan, 0, ours).view(np.uint32)
    b = np.where(both_nan, 0, theirs).view(np.uint32)
    bad = np.flatnonzero(a != b)
    assert bad.size == 0, f"{bad.size} values differ, first at {bad[0]}: {ours.flat[bad[0]]!r} vs {theirs.flat[bad[0]]!r}"


def edge_rows(n, seed=0):
    """(rows, n) float32: the cases where quantizers disagree when they are not exact copies."""
    rng = np.random.default_rng(seed)
    rows = [
        np.zeros(n),
        np.full(n, 0.37), np.full(n, -2.5),                       # constant rows
        rng.standard_normal(n) * 1e4,                             # large (f16 scales still finite)
        rng.standard_normal(n) * 1e6,                             # f16 scale overflows to inf
        rng.standard_normal(n) * 1e-30,                           # f16 scale underflows to 0
        rng.standard_normal(n) * 1e-6,                            # f16 subnormal scales
        rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n // 32).repeat(32),  # scale per block
    ]
    neg = rng.standard_normal(n)
    neg[5::32] = -9.0                                             # each block's extreme is negative
    rows.append(neg)
    tie = rng.standard_normal(n)
    tie[3::32], tie[9::32] = -4.0, 4.0                            # equal magnitudes: first one wins
    rows.append(tie)
    tie2 = tie.copy()
    tie2[3::32], tie2[9::32] = 4.0, -4.0
    rows.append(tie2)
    # Rounding ties: with a block extreme of -8 (Q4_0), 16 (Q5_0) or 127 (Q8_0) the scale is 1,
    # so these half-integers sit exactly between two levels.
    for extreme in (-8.0, -16.0, 127.0):
        half = np.resize(np.arange(-7.5, 7.5, 0.5), n)
        half[::32] = extreme
        rows.append(half)
    grid = np.tile(np.arange(32) * 0.5, n // 32)                  # Q4_1/Q5_1 half steps
    rows.append(grid)
    return np.array(rows, dtype=np.float32)


def block_multiple_sizes(name):
    bs = INFO[name]["block_size"]
    return [1, 7, 33, 4128] if bs == 1 else [bs, 2 * bs, 5 * bs, 16 * bs]


# --- every quantizer: round trip ----------------------------------------------------------------

def test_every_quantizable_type_has_a_tolerance():
    assert set(QUANTIZABLE) <= set(RT_REL_RMS), set(QUANTIZABLE) - set(RT_REL_RMS)
    assert set(K_WEIGHTS + ["Q8_K"]) <= set(QUANTIZABLE)


@pytest.mark.parametrize("name", QUANTIZABLE)
def test_round_trip(name):
    rng = np.random.default_rng(1)
    for n in block_multiple_sizes(name):
        x = (rng.standard_normal((6, n)) * np.array([[1e-3], [0.1], [1], [3], [30], [300]])).astype(np.float32)
        q = quantize(name, x)
        assert q.dtype == np.uint8
        assert q.shape == (6, n // INFO[name]["block_size"] * INFO[name]["type_size"])
        y = dequantize(name, q, n)
        assert y.shape == x.shape and np.all(np.isfinite(y))
        rel = np.sqrt(((y - x) ** 2).mean(axis=1) / (x ** 2).mean(axis=1))
        assert rel.mean() <= RT_REL_RMS[name] and rel.max() <= 2 * RT_REL_RMS[name], (n, rel)
        # Quantizing is a pure function of the row.
        assert np.array_equal(quantize(name, x[::-1]), q[::-1])


@pytest.mark.parametrize("name", QUANTIZABLE)
def test_round_trip_special_rows(name):
    n = 4096 if INFO[name]["block_size"] == 1 else 16 * INFO[name]["block_size"]
    zeros = np.zeros((1, n), np.float32)
    assert not np.any(dequantize(name, quantize(name, zeros), n))
    # A constant row: every format represents it within its step size.
    for c in (0.37, -2.5):
        y = dequantize(name, quantize(name, np.full((1, n), c, np.float32)), n)
        assert np.allclose(y, c, rtol=0.0, atol=abs(c) * max(RT_REL_RMS[name], 2e-3)), (c, y[0, :8])


# --- against the gguf package -------------------------------------------------------------------

@pytest.mark.parametrize("name", GGUF_QUANTIZES)
def test_quantize_bytes_equal_gguf(name):
    for seed, n in [(0, 256), (1, 512), (2, 4096)]:
        x = edge_rows(n, seed)
        ours, theirs = quantize(name, x), gguf_quantize(name, x)
        assert ours.shape == theirs.shape
        bad = np.argwhere(ours != theirs)
        assert bad.size == 0, f"{len(bad)} bytes differ, first at (row, byte) {tuple(bad[0])}"
    # Plain random data of many shapes and scales.
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 1024)) * 10.0 ** rng.uniform(-4, 4, (64, 1))).astype(np.float32)
    assert np.array_equal(quantize(name, x), gguf_quantize(name, x))


@pytest.mark.parametrize("name", GGUF_DEQUANTIZES)
def test_dequantize_equals_gguf_on_our_blocks(name):
    n = 1024
    x = np.concatenate([edge_rows(n, 4), np.random.default_rng(5).standard_normal((16, n)).astype(np.float32)])
    q = quantize(name, x)
    assert_same_floats(dequantize(name, q, n), gguf_dequantize(name, q))


@pytest.mark.parametrize("name", GGUF_DEQUANTIZES)
def test_dequantize_equals_gguf_on_random_blocks(name):
    # Random bits reach every scale, sign and high-bit pattern, not only what a quantizer emits.
    rng = np.random.default_rng(6)
    bs, ts = INFO[name]["block_size"], INFO[name]["type_size"]
    n_blocks, rows = (1024 // bs if bs > 1 else 1024), 8
    q = rng.integers(0, 256, (rows, n_blocks, ts), dtype=np.uint8)
    finite_halves = rng.uniform(-3, 3, (rows, n_blocks, 8)).astype(np.float16).view(np.uint8)
    if name in ("F16", "BF16"):
        halves = rng.uniform(-3, 3, (rows, n_blocks)).astype(np.float32)
        q = (halves.astype(np.float16).view(np.uint8) if name == "F16"
             else (halves.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)).reshape(rows, n_blocks, 2)
    for k, off in enumerate(F16_FIELDS.get(name, [])):
        q[:, :, off:off + 2] = finite_halves[:, :, 2 * k:2 * k + 2]
    q = np.ascontiguousarray(q.reshape(rows, -1))
    n = n_blocks * bs
    assert_same_floats(dequantize(name, q, n), gguf_dequantize(name, q))


# --- Q8_K: the activation partner of the K-quants ------------------------------------------------

def q8_K_model(x):
    """numpy model of ggml's quantize_row_q8_K_ref: the signed extreme maps to -127."""
    out = []
    for b in x.reshape(-1, 256).astype(np.float32):
        j = int(np.argmax(np.abs(b)))                 # first of equal magnitudes, as ggml
        if b[j] == 0:
            d, q = np.float32(0), np.zeros(256, np.int8)
        else:
            iscale = np.float32(-127.0) / b[j]
            q = np.minimum(np.rint(iscale * b), 127).astype(np.int8)   # rint: ties to even
            d = np.float32(1.0) / iscale
        bsums = q.astype(np.int32).reshape(16, 16).sum(axis=1).astype(np.int16)
        out.append(np.concatenate([np.array([d], np.float32).view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)]))
    return np.concatenate(out).reshape(x.shape[0], -1)


def test_q8_K_bytes_match_model():
    rng = np.random.default_rng(7)
    x = np.concatenate([edge_rows(1024, 8), (rng.standard_normal((8, 1024)) * 5).astype(np.float32)])
    q = quantize("Q8_K", x)
    assert q.shape == (x.shape[0], 4 * 292)
    assert np.array_equal(q, q8_K_model(x))


def test_q8_K_round_trip_and_sign():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    x[1, 100] = -7.0                                  # negative extreme in block 0 of row 1
    q = quantize("Q8_K", x)
    y = dequantize("Q8_K", q, 512)
    blocks = q.reshape(4, 2, 292)
    d = blocks[:, :, :4].copy().view(np.float32)[..., 0]      # (4, 2)
    qs = blocks[:, :, 4:260].view(np.int8)
    bsums = blocks[:, :, 260:].copy().view(np.int16)
    assert np.all(np.abs(y - x) <= np.abs(d).repeat(256, axis=1) * 0.5 * (1 + 1e-6))
    assert np.array_equal(bsums, qs.astype(np.int32).reshape(4, 2, 16, 16).sum(-1))
    # The extreme becomes -127 and d takes the sign that restores it.
    assert qs[1, 0, 100] == -127 and d[1, 0] > 0 and y[1, 100] == pytest.approx(-7.0, rel=1e-6)
    j = int(np.argmax(np.abs(x[0, :256])))
    assert qs[0, 0, j] == -127 and np.sign(d[0, 0]) == -np.sign(x[0, j])


# --- K-quant . Q8_K reference matmul ---------------------------------------------------------------

@pytest.mark.parametrize("name", K_WEIGHTS + IQ_WEIGHTS)
def test_kquant_matmul_matches_float(name):
    act = "Q8_0" if name == "IQ4_NL" else "Q8_K"
    assert INFO[name]["vec_dot_type"] == tid(act)
    rng = np.random.default_rng(9)
    for k, rows, ntok in [(256, 5, 1), (768, 7, 3), (2048, 3, 4)]:
        w = (rng.standard_normal((rows, k)) * 0.05).astype(np.float32)
        x = (rng.standard_normal((ntok, k)) * rng.uniform(0.1, 10, (ntok, 1))).astype(np.float32)
        x[0, :256] = 0.0                              # an all-zero activation block
        wq = quantize(name, w)
        out = _core.matmul("ref", tid(name), wq, k, x)
        assert out.shape == (ntok, rows)
        wd = dequantize(name, wq, k).astype(np.float64)
        xd = dequantize(act, quantize(act, x), k).astype(np.float64)
        expect = xd @ wd.T
        bound = np.abs(xd) @ np.abs(wd).T
        assert np.all(np.abs(out - expect) <= 1e-5 * bound + 1e-30), np.max(np.abs(out - expect) / bound)
        # And it is the product of the unquantized operands up to the quantization error (6 sigma
        # of a round-trip error of the type's rms size on each weight, plus the activation type's).
        sigma = (RT_REL_RMS[name] + RT_REL_RMS[act]) * np.sqrt((x.astype(np.float64) ** 2) @ (w.T ** 2))
        assert np.all(np.abs(out - x @ w.T) <= 6 * sigma + 1e-6)


# --- against ggml itself: the K-quant quantizers the gguf package lacks -------------------------

def _uniforms(count, stream):
    """`count` uniforms in [0, 1) from splitmix64: pure integer arithmetic, so the inputs (and the
    recorded ggml hashes) do not depend on numpy's random streams or libm."""
    z = (np.arange(count, dtype=np.uint64) + np.uint64(stream) * np.uint64(1 << 40)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def ggml_fixture_inputs(rows=32, n=1024):
    """name -> (rows, n) float32 inputs of tests/data/ggml_quant_sha256.json."""
    u = [_uniforms(rows * n, s).reshape(rows, n) for s in range(4)]
    bell = u[0] + u[1] + u[2] + u[3] - 2.0                        # Irwin-Hall: gaussian-like
    row_scale = 2.0 ** (np.arange(rows) % 13 - 6)[:, None]
    group_scale = 2.0 ** np.floor(u[1][:, ::16] * 9 - 4).repeat(16, axis=1)
    special = np.zeros((4, n))
    special[1], special[2], special[3, ::7] = 0.37, -2.5, 2.0
    data = {
        "bell": bell * row_scale,
        "bell_group_scales": bell * group_scale,
        "heavy_tails": (u[0] - 0.5) / (u[1] + 0.01),
        "sparse": np.where(u[2] < 0.1, bell, 0.0),
        "positive": u[3] * row_scale,
        "special": special,
    }
    return {k: v.astype(np.float32) for k, v in data.items()}


def test_quantize_bytes_equal_ggml_fixture(fixture_json):
    fx = fixture_json("ggml_quant_sha256.json")["sha256"]
    inputs = ggml_fixture_inputs()
    assert set(K_WEIGHTS + ["Q8_K"]) <= set(fx)
    mismatched = []
    for name, per_input in fx.items():
        for key, digest in per_input.items():
            if hashlib.sha256(quantize(name, inputs[key]).tobytes()).hexdigest() != digest:
                mismatched.append((name, key))
    assert not mismatched


def test_iq4_quantize_bytes_equal_ggml_fixture(fixture_json):
    # ggml's quantize_iq4_nl / quantize_iq4_xs without importances: what llama-quantize writes.
    fx = fixture_json("ggml_iquant_sha256.json")["sha256"]
    assert set(fx) == set(IQ_WEIGHTS)
    inputs = ggml_fixture_inputs()
    mismatched = [(name, key) for name, per_input in fx.items() for key, digest in per_input.items()
                  if hashlib.sha256(quantize(name, inputs[key]).tobytes()).hexdigest() != digest]
    assert not mismatched


@pytest.mark.parametrize("name", IQ_WEIGHTS)
def test_iq4_grid_and_scales(name):
    # Every stored index decodes to a value of ggml's kvalues_iq4nl grid times the block's scale,
    # and a value on the grid (times a power of two) comes back exactly.
    grid = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
    bs = INFO[name]["block_size"]
    rng = np.random.default_rng(10)
    x = (grid[rng.integers(0, 16, (4, 4 * bs))] * np.float32(2.0 ** -7)).astype(np.float32)
    x[:, ::32] = -127 * 2.0 ** -7                     # each sub-block reaches the grid's end
    y = dequantize(name, quantize(name, x), x.shape[1])
    assert np.array_equal(y, x)


@pytest.mark.parametrize("name", K_WEIGHTS)
def test_kquant_matmul_equals_ggml_fixture(name, fixture_json):
    # Bit for bit what ggml's generic (scalar) K-quant . Q8_K dot products return.
    expect = fixture_json("ggml_quant_sha256.json")["matmul_sha256"][name]
    inputs = ggml_fixture_inputs()
    w, x = inputs["bell_group_scales"], inputs["heavy_tails"][:8]
    out = _core.matmul("ref", tid(name), quantize(name, w), w.shape[1], x)
    assert out.dtype == np.float32 and out.shape == (8, 32)
    assert hashlib.sha256(out.tobytes()).hexdigest() == expect


def test_type_table_agrees_with_the_gguf_package():
    """The C++ type-traits table (the one source Python reads block facts from) against the gguf
    package's constants: every known type's id and name, every weight type's block size and bytes
    per block."""
    for t in _core.known_types():
        info = _core.type_info(t)
        gt = GT(t)
        assert gt.name == info["name"]
        if info["is_weight"]:  # pyllm's activation blocks (Q8_1: float d and s) never reach a file
            assert gguf.GGML_QUANT_SIZES[gt] == (info["block_size"], info["type_size"])
        assert info["is_float"] == (info["name"] in ("F32", "F16", "BF16")) == (not info["is_quantized"])
        assert info["vec_dot_type"] in _core.known_types()
    assert [n for n, i in INFO.items() if i["gptq"]] == ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
    assert [n for n, i in INFO.items() if i["weighted"]] == ["Q4_0", "Q4_1", "Q5_0", "Q5_1"]
    assert [n for n, i in INFO.items() if not i["is_weight"]] == ["Q8_1", "Q8_K"]
    assert _core.gguf_value_types() == {t.name: int(t) for t in gguf.GGUFValueType}
