"""Every SIMD kernel table against the reference table (kernels/ref, the truth).

GEMM results may differ from the reference only by float accumulation order (the integer parts are
exact), so they are compared within a small multiple of float epsilon times the sum of |products|.
Activation quantizers, dequantizers and f32->f16 must be bit-identical to the reference.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from pyllm import _core

SIMD_ISAS = [isa for isa in _core.available_isas() if isa != "ref"]

# Type ids from the C++ type-traits table (the one source of format facts).
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 = map(_core.type_from_name, "F32 F16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1".split())
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, BF16 = map(_core.type_from_name, "Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K BF16".split())
IQ4_NL, IQ4_XS = map(_core.type_from_name, "IQ4_NL IQ4_XS".split())

# Byte layout facts per weight type: offsets of the f16 scale fields (kept finite and of ordinary
# size), the byte ranges holding quants (zeroed to expose the offset part of a type with mins), and
# for K-quants the sub-block scale bytes, randomized along with the quants.
LAYOUT = {
    Q4_0: dict(halves=[0], quants=[(2, 18)]),
    Q4_1: dict(halves=[0, 2], quants=[(4, 20)], has_min=True),
    Q5_0: dict(halves=[0], quants=[(2, 22)]),
    Q5_1: dict(halves=[0, 2], quants=[(4, 24)], has_min=True),
    Q8_0: dict(halves=[0], quants=[(2, 34)]),
    Q2_K: dict(halves=[80, 82], quants=[(16, 80)], scales=[(0, 16)], has_min=True),
    Q3_K: dict(halves=[108], quants=[(0, 96)], scales=[(96, 108)]),
    Q4_K: dict(halves=[0, 2], quants=[(16, 144)], scales=[(4, 16)], has_min=True),
    Q5_K: dict(halves=[0, 2], quants=[(16, 176)], scales=[(4, 16)], has_min=True),
    Q6_K: dict(halves=[208], quants=[(0, 192)], scales=[(192, 208)]),
    IQ4_NL: dict(halves=[0], quants=[(2, 18)]),
    IQ4_XS: dict(halves=[0], quants=[(8, 136)], scales=[(2, 8)]),
}
FLOAT_TYPES = [F32, F16, BF16]
BLOCK32_TYPES = [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0]
KQUANT_TYPES = [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K]
IQUANT_TYPES = [IQ4_NL, IQ4_XS]

N_ROWS = [1, 3, 8, 17, 33]
N_TOK = [1, 2, 3, 5, 8, 17]


def sizes_for(type_id):
    """Row lengths: odd block counts, and for float types lengths no SIMD width divides."""
    if type_id in FLOAT_TYPES:
        return [1, 31, 33, 257, 4128]
    if type_id in KQUANT_TYPES or type_id == IQ4_XS:
        return [256, 768, 4352]
    return [32, 96, 256, 4128]


def random_weights(rng, type_id, rows, k):
    """Weights of every bit pattern: quantize random floats, then randomize the quant bytes while
    keeping the f16 scales finite and of ordinary size."""
    x = rng.standard_normal((rows, k)).astype(np.float32)
    q = _core.quantize(type_id, x)
    if type_id in LAYOUT:
        info = _core.type_info(type_id)
        blocks = q.reshape(rows, -1, info["type_size"])
        for lo, hi in LAYOUT[type_id]["quants"] + LAYOUT[type_id].get("scales", []):
            blocks[:, :, lo:hi] = rng.integers(0, 256, blocks[:, :, lo:hi].shape, dtype=np.uint8)
        for off in LAYOUT[type_id]["halves"]:
            h = (rng.standard_normal(blocks.shape[:2]) * 0.05).astype(np.float16)
            blocks[:, :, off:off + 2] = h.view(np.uint8).reshape(rows, -1, 2)
    return q


def dequant(type_id, q, k, isa="ref"):
    return _core.dequantize(type_id, q, k, isa)


def product_magnitude(type_id, wq, k, x):
    """sum_j |w_j * a_j| per (token, row) as the reference sees the operands, the scale that float
    rounding errors are relative to. For types with mins, w = d*q + m is split into |d*q| + |m|."""
    w = dequant(type_id, wq, k).astype(np.float64)
    act_type = _core.type_info(type_id)["vec_dot_type"]
    a = x if act_type == F32 else dequant(act_type, _core.quantize_act("ref", act_type, x), k)
    a = np.abs(a.astype(np.float64))
    if not LAYOUT.get(type_id, {}).get("has_min"):
        return a @ np.abs(w).T
    zeroed = wq.reshape(wq.shape[0], -1, _core.type_info(type_id)["type_size"]).copy()
    for lo, hi in LAYOUT[type_id]["quants"]:
        zeroed[:, :, lo:hi] = 0
    offset = dequant(type_id, zeroed.reshape(wq.shape), k).astype(np.float64)
    return a @ (np.abs(w - offset) + np.abs(offset)).T


# --- GEMM ----------------------------------------------------------------------------------------

GEMM_CASES = [(isa, t, k) for isa in SIMD_ISAS for t in FLOAT_TYPES + BLOCK32_TYPES + KQUANT_TYPES + IQUANT_TYPES
              for k in sizes_for(t)]


@pytest.mark.parametrize("isa,type_id,k", GEMM_CASES)
def test_gemm_matches_reference(isa, type_id, k):
    rng = np.random.default_rng(1000 * type_id + k)
    w = random_weights(rng, type_id, max(N_ROWS), k)
    x = rng.standard_normal((max(N_TOK), k)).astype(np.float32)
    mag = product_magnitude(type_id, w, k, x)
    # Seen: <= 2e-7 (a few float ulps of the magnitude). One wrong element product out of k would
    # be ~1/k = 2e-4 at the largest k.
    rtol = 1e-6
    for rows in N_ROWS:
        for n_tok in N_TOK:
            got = _core.matmul(isa, type_id, w[:rows], k, x[:n_tok])
            want = _core.matmul("ref", type_id, w[:rows], k, x[:n_tok])
            assert got.shape == (n_tok, rows)
            err = np.abs(got.astype(np.float64) - want) / (mag[:n_tok, :rows] + 1e-30)
            assert err.max() <= rtol, f"{isa} type {type_id} k={k} rows={rows} n_tok={n_tok}: rel err {err.max():.3g}"


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_gemm_output_stride_and_rows_subset(isa):
    """A tile must write exactly its own outputs: a row subset of a bigger W gives the same numbers."""
    rng = np.random.default_rng(7)
    k = 256
    w = random_weights(rng, Q4_0, 40, k)
    x = rng.standard_normal((9, k)).astype(np.float32)
    full = _core.matmul(isa, Q4_0, w, k, x)
    part = _core.matmul(isa, Q4_0, w[5:18], k, x)
    np.testing.assert_array_equal(full[:, 5:18], part)


# --- the x8 (row-interleaved) layout ------------------------------------------------------------

X8_KQUANTS = [Q4_K, Q5_K, Q6_K]
X8_TYPES = [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL] + X8_KQUANTS
X8_ROWS = [8, 13, 16, 41]  # whole groups, and groups plus a plain tail
X8_TOK = [1, 2, 3, 4, 5, 8, 9, 16, 19]   # decode, the tiles of 4 (Q4..Q8_0) and 8 (K-quants) and every tail


def x8_sizes(type_id):
    # 16480: more blocks than one pass holds; K-quants: one super-block, two, and 17 (the prefill
    # path's chunks of 8 super-blocks plus a tail).
    return (256, 512, 4352) if type_id in X8_KQUANTS else (32, 64, 576, 1536, 4128, 16480)


X8_CASES = [(isa, t, k) for isa in SIMD_ISAS for t in X8_TYPES if t in _core.x8_types(isa) for k in x8_sizes(t)]


def test_x8_types():
    """x86 tables repack the nine types (AVX-512 with the AVX2 K-quant and IQ4_NL kernels); the reference
    repacks them too (its x8 gemm is the truth)."""
    assert set(_core.x8_types("ref")) == set(X8_TYPES)
    for isa in SIMD_ISAS:
        assert set(_core.x8_types(isa)) <= set(X8_TYPES)
        if isa in ("avx2", "avx512"):
            assert set(_core.x8_types(isa)) == set(X8_TYPES)


@pytest.mark.parametrize("type_id", X8_TYPES)
def test_x8_reference_is_bit_identical_to_plain(type_id):
    """The reference x8 gemm gathers blocks back and sums in the plain dot's order: bit-identical."""
    rng = np.random.default_rng(type_id)
    for k in ((256, 768, 2304) if type_id in X8_KQUANTS else (32, 96, 576)):
        w = random_weights(rng, type_id, 21, k)
        x = rng.standard_normal((3, k)).astype(np.float32)
        np.testing.assert_array_equal(_core.matmul_x8("ref", type_id, w, k, x), _core.matmul("ref", type_id, w, k, x))


@pytest.mark.parametrize("type_id", X8_TYPES)
def test_x8_repack_is_a_permutation_and_rows_read_back(type_id):
    rng = np.random.default_rng(type_id + 5)
    k = 768 if type_id in X8_KQUANTS else 576
    w = random_weights(rng, type_id, 19, k)
    packed = _core.repack_x8("ref", type_id, w, k)
    assert packed.shape == w.shape
    if type_id in (Q4_K, Q5_K):
        # The 12-byte packed scales and mins are unpacked to the kernel's form (same 96 bits, other
        # places): the group's bits are kept, d/dmin and quants are moved whole.
        assert np.unpackbits(packed[:16]).sum() == np.unpackbits(w[:16]).sum()
        size = _core.type_info(type_id)["type_size"]
        blocks = w[:16].reshape(16, -1, size)
        cols = packed[:16].reshape(2, -1, 8 * size)
        np.testing.assert_array_equal(np.sort(cols[:, :, 128:], axis=None), np.sort(blocks[:, :, 16:], axis=None))
    elif type_id in (Q5_0, Q5_1):
        # The fifth bits (qh) become bit-interleaved masks: the other bytes are permuted, the
        # fifth bits only as bits.
        halves = len(LAYOUT[type_id]["halves"])
        blocks = w[:16].reshape(16, -1, _core.type_info(type_id)["type_size"])
        qh = blocks[:, :, 2 * halves:2 * halves + 4]
        cols = packed[:16].reshape(2, -1, 8 * blocks.shape[2])
        masks = cols[:, :, 16 * halves:16 * halves + 32]
        rest = np.concatenate([cols[:, :, :16 * halves], cols[:, :, 16 * halves + 32:]], axis=2)
        plain_rest = np.concatenate([blocks[:, :, :2 * halves], blocks[:, :, 2 * halves + 4:]], axis=2)
        np.testing.assert_array_equal(np.sort(rest, axis=None), np.sort(plain_rest, axis=None))
        assert np.unpackbits(masks).sum() == np.unpackbits(qh).sum()
    else:
        np.testing.assert_array_equal(np.sort(packed[:16], axis=None), np.sort(w[:16], axis=None))
    np.testing.assert_array_equal(packed[16:], w[16:])  # the tail stays plain
    for isa in SIMD_ISAS:
        if type_id in _core.x8_types(isa):
            np.testing.assert_array_equal(_core.repack_x8(isa, type_id, w, k), packed)
    # Embedding lookups of a repacked tied output: bit-identical to the plain rows' dequantization.
    want = _core.dequantize(type_id, w, k)
    np.testing.assert_array_equal(_core.dequantize_x8(type_id, w, k).view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("isa,type_id,k", X8_CASES)
def test_x8_gemm_matches_reference(isa, type_id, k):
    rng = np.random.default_rng(3000 * type_id + k)
    w = random_weights(rng, type_id, max(X8_ROWS), k)
    x = rng.standard_normal((max(X8_TOK), k)).astype(np.float32)
    mag = product_magnitude(type_id, w, k, x)
    for rows in X8_ROWS:
        for n_tok in X8_TOK:
            got = _core.matmul_x8(isa, type_id, w[:rows], k, x[:n_tok])
            want = _core.matmul("ref", type_id, w[:rows], k, x[:n_tok])
            err = np.abs(got.astype(np.float64) - want) / (mag[:n_tok, :rows] + 1e-30)
            assert err.max() <= 1e-6, f"{isa} x8 type {type_id} k={k} rows={rows} n_tok={n_tok}: rel err {err.max():.3g}"


@pytest.mark.parametrize("isa", [i for i in SIMD_ISAS if _core.x8_types(i)])
def test_x8_gemm_extreme_quants(isa):
    """All-max and all-min quants with activations of +-127: the integer sums' largest values
    (int16 pair sums in AVX2 maddubs, the VNNI offset corrections) must not saturate."""
    k = 256
    for type_id in _core.x8_types(isa):
        info = _core.type_info(type_id)
        for fill in (0x00, 0xFF, 0x80, 0x7F):
            w = random_weights(np.random.default_rng(fill), type_id, 16, k)
            blocks = w.reshape(16, -1, info["type_size"])
            for lo, hi in LAYOUT[type_id]["quants"] + LAYOUT[type_id].get("scales", []):
                blocks[:, :, lo:hi] = fill
            for sign in (1.0, -1.0):
                x = np.full((2, k), 127.0 * sign, dtype=np.float32)
                x[1, ::3] *= -1
                got = _core.matmul_x8(isa, type_id, w, k, x)
                want = _core.matmul("ref", type_id, w, k, x)
                mag = product_magnitude(type_id, w, k, x)
                assert (np.abs(got.astype(np.float64) - want) / (mag + 1e-30)).max() <= 1e-6, (type_id, fill, sign)


# --- activation quantizers ------------------------------------------------------------------------

def activation_rows(rng, k):
    rows = [rng.standard_normal(k) * s for s in (1.0, 1e-3, 1e3, 1e-8, 3e6)]
    rows.append(np.zeros(k))
    # amax 127 makes d = 1 and id = 1: the other values are quantized as they are, so exact .5 cases
    # test round-half-away-from-zero (half-to-even rounding would give 0, 2, 2, -0, -2, -2).
    halves = np.resize(np.array([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.49999]), k)
    rows.append(halves)
    rows.append(np.resize(np.array([0.0, -0.0, 1e-35, -3e-36]), k))  # d far below the f16 range
    ties = np.where(np.arange(k) % 7 == 3, -5.0, np.where(np.arange(k) % 7 == 5, 5.0, 0.25))
    rows.append(ties)  # +-amax ties: Q8_K keeps the sign of the first
    spiky = rng.standard_normal(k) * 1e-2
    spiky[::37] = 50.0
    rows.append(spiky)
    return np.array(rows, dtype=np.float32)


ACT_CASES = [(isa, t) for isa in SIMD_ISAS for t in (Q8_0, Q8_1, Q8_K)]


@pytest.mark.parametrize("isa,act_type", ACT_CASES)
def test_quantize_act_bit_identical(isa, act_type):
    rng = np.random.default_rng(act_type)
    k = 4352 if act_type == Q8_K else 4128
    x = activation_rows(rng, k)
    want = _core.quantize_act("ref", act_type, x)
    got = _core.quantize_act(isa, act_type, x)
    bad = np.nonzero((got != want).any(axis=1))[0]
    assert bad.size == 0, f"{isa} rows {bad.tolist()} differ from the reference"


# --- dequantizers and f16 helpers -----------------------------------------------------------------

DEQ_CASES = [(isa, t) for isa in SIMD_ISAS for t in FLOAT_TYPES + BLOCK32_TYPES + KQUANT_TYPES + IQUANT_TYPES + [Q8_1]]


@pytest.mark.parametrize("isa,type_id", DEQ_CASES)
def test_to_float_bit_identical(isa, type_id):
    rng = np.random.default_rng(type_id + 99)
    k = 4352 if type_id in KQUANT_TYPES + [IQ4_XS] else (4128 if type_id not in FLOAT_TYPES else 4131)
    if type_id == Q8_1:
        q = _core.quantize_act("ref", Q8_1, rng.standard_normal((5, k)).astype(np.float32))
    else:
        q = random_weights(rng, type_id, 5, k)
    want = dequant(type_id, q, k, "ref")
    got = dequant(type_id, q, k, isa)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_f32_to_f16_bit_identical(isa):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(1001) * s for s in (1.0, 1e-6, 1e4, 7e4)]).astype(np.float32)
    x = np.concatenate([x, np.float32([65504, 65519.99, 65520, -65520, 2.0**-25, 2.0**-24, 3 * 2.0**-26, 0.0, -0.0])])
    np.testing.assert_array_equal(_core.f32_to_f16(isa, x), _core.f32_to_f16("ref", x))
    with np.errstate(over="ignore"):  # numpy warns on the values that become inf, as intended
        as_numpy = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(_core.f32_to_f16(isa, x), as_numpy)


@pytest.mark.parametrize("isa", ["ref"] + SIMD_ISAS)
@pytest.mark.parametrize("rows,nb,d", [(1, 1, 1), (3, 32, 64), (5, 7, 33), (4, 32, 128), (9, 17, 72), (2, 3, 200)])
def test_pv_f16(isa, rows, nb, d):
    rng = np.random.default_rng(rows * 1000 + nb * 10 + d)
    p = rng.random((rows, nb)).astype(np.float32)
    vh = rng.standard_normal((nb, d)).astype(np.float16)
    acc = rng.standard_normal((rows, d)).astype(np.float32)
    got = _core.pv_f16(isa, p, vh.view(np.uint16), acc)
    want = acc.astype(np.float64) + p.astype(np.float64) @ vh.astype(np.float64)
    mag = np.abs(acc) + np.abs(p) @ np.abs(vh.astype(np.float64))
    assert np.all(np.abs(got - want) <= 1e-6 * mag + 1e-30)


@pytest.mark.parametrize("isa", ["ref"] + SIMD_ISAS)
@pytest.mark.parametrize("rows,nb,d", [(1, 1, 1), (3, 32, 64), (5, 7, 33), (4, 32, 128), (9, 17, 72), (2, 3, 200)])
def test_pv_f32(isa, rows, nb, d):
    # P.V over a dequantized block of a quantized V cache: float rounding only (1e-6 of |terms|).
    rng = np.random.default_rng(rows * 1000 + nb * 10 + d + 1)
    p = rng.random((rows, nb)).astype(np.float32)
    v = rng.standard_normal((nb, d)).astype(np.float32)
    acc = rng.standard_normal((rows, d)).astype(np.float32)
    got = _core.pv_f32(isa, p, v, acc)
    want = acc.astype(np.float64) + p.astype(np.float64) @ v.astype(np.float64)
    mag = np.abs(acc) + np.abs(p) @ np.abs(v.astype(np.float64))
    assert np.all(np.abs(got - want) <= 1e-6 * mag + 1e-30)


@pytest.mark.parametrize("isa", ["ref"] + SIMD_ISAS)
@pytest.mark.parametrize("n", [1, 7, 8, 17, 32, 33])
def test_exp_sum(isa, n):
    # The softmax step: exp(s - m) for s <= m (down to underflow), and their sum, within 1e-6
    # relative of float64 (the polynomial exp is ~1e-7; a wrong lane or tail is O(1)); below
    # e^-87 (float's range) the SIMD exp clamps, so 1e-37 absolute.
    rng = np.random.default_rng(n)
    s = (-np.abs(rng.standard_normal(n)) * 8).astype(np.float32)
    s[: min(n, 2)] = [-150.0, 0.0][: min(n, 2)]
    got, total = _core.exp_sum(isa, s, 0.25)
    want = np.exp(s.astype(np.float64) - 0.25)
    assert np.all(np.abs(got - want) <= 1e-6 * want + 1e-37)
    assert abs(total - want.sum()) <= 1e-6 * want.sum() + 1e-37  # e^-150 underflows to 0 in float


@pytest.mark.parametrize("isa", ["ref"] + SIMD_ISAS)
@pytest.mark.parametrize("n", [1, 7, 8, 15, 16, 17, 1536])
def test_swiglu(isa, n):
    rng = np.random.default_rng(n)
    gate = (rng.standard_normal(n) * 4).astype(np.float32)
    gate[: min(n, 4)] = [-100.0, 100.0, 0.0, -0.0][: min(n, 4)]  # saturated exp, and zeros
    up = rng.standard_normal(n).astype(np.float32)
    got = _core.swiglu(isa, gate, up)
    g = gate.astype(np.float64)
    want = g / (1 + np.exp(-g)) * up
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30)


# --- dispatch ---------------------------------------------------------------------------------------

def _run_isa(env_value):
    env = dict(os.environ, PYLLM_ISA=env_value)
    code = ("import pyllm._core as c\n"
            "try:\n    print('ISA', c.isa())\nexcept ValueError as e:\n    print('ValueError', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_pyllm_isa_forces_reference():
    assert _run_isa("ref") == "ISA ref"


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_pyllm_isa_forces_each_available_table(isa):
    assert _run_isa(isa) == f"ISA {isa}"


def test_pyllm_isa_bogus_raises_value_error():
    out = _run_isa("bogus")
    assert out.startswith("ValueError") and "bogus" in out and "ref" in out


def test_cpu_features_imply_tables():
    feats = set(_core.cpu_features().split())
    isas = _core.available_isas()
    assert isas[-1] == "ref"
    if {"avx2", "fma", "f16c"} <= feats:
        assert "avx2" in isas
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni"} <= feats:
        assert "avx512" in isas
    if {"neon", "dotprod", "fp16"} <= feats:
        assert "neon" in isas
    assert _core.isa() == isas[0] or os.environ.get("PYLLM_ISA")
