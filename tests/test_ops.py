"""The model-level ops (csrc/ops: rmsnorm, rope, attention) against numpy references in float64,
called through the thin test hooks in csrc/bindings/bind_ops.cpp exactly as the forward pass
calls them. The end-to-end tests (tiny models, llama.cpp parity) cover them together; these
pin each one down alone, at shapes the model never uses (odd sizes, GQA ratios, long contexts).

Tolerances: each bound says which float32 error it allows and what the worst case over the
test's own cases measured on the development machine (AVX2 Zen 3; ref and avx2 tables); the
bounds sit 8-20x above those measurements."""
import numpy as np
import pytest

from pyllm import _core

ISAS = _core.available_isas()


# ---------------------------------------------------------------------------------------------
# rmsnorm
# ---------------------------------------------------------------------------------------------

def rmsnorm_ref(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w.astype(np.float64)


@pytest.mark.parametrize("n_tok,n", [(1, 1), (3, 7), (5, 576), (2, 4097)])
@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_rmsnorm(n_tok, n, eps):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((n_tok, n)) * 3).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    got = _core.rmsnorm(x, w, eps)
    want = rmsnorm_ref(x, w, eps)
    # Three float32 roundings per element (scale, x*scale, *w): <= ~4 ulp of |result|. Bound:
    # 1e-6 relative to the largest |value| (measured worst: 1.2e-7, 8x margin).
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_rmsnorm_of_zeros_is_zero():
    """eps keeps a zero row finite."""
    got = _core.rmsnorm(np.zeros((2, 64), np.float32), np.ones(64, np.float32), 1e-6)
    assert np.array_equal(got, np.zeros((2, 64), np.float32))


# ---------------------------------------------------------------------------------------------
# rope
# ---------------------------------------------------------------------------------------------

def rope_ref(x, pos, n_heads, head_dim, n_rot, neox, base, scale):
    """Rotary embedding in float64, theta = pos * scale * base^(-2i/n_rot) by a power."""
    out = x.astype(np.float64).reshape(len(pos), n_heads, head_dim).copy()
    i = np.arange(n_rot // 2)
    theta = pos[:, None].astype(np.float64) * scale * base ** (-2.0 * i / n_rot)   # (n_tok, n_rot/2)
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    a = i if neox else 2 * i
    b = i + n_rot // 2 if neox else 2 * i + 1
    x0, x1 = out[:, :, a].copy(), out[:, :, b].copy()
    out[:, :, a] = x0 * c - x1 * s
    out[:, :, b] = x0 * s + x1 * c
    return out.reshape(x.shape)


@pytest.mark.parametrize("neox", [False, True], ids=["normal", "neox"])
@pytest.mark.parametrize("n_heads,head_dim,n_rot", [(1, 2, 2), (3, 64, 64), (2, 128, 64), (4, 96, 32)])
def test_rope(neox, n_heads, head_dim, n_rot):
    rng = np.random.default_rng(head_dim + n_rot)
    pos = np.array([0, 1, 2, 17, 511, 2047], np.int32)
    x = rng.standard_normal((len(pos), n_heads * head_dim)).astype(np.float32)
    got = _core.rope(x, pos, n_heads, head_dim, n_rot, neox, 10000.0, 1.0)
    want = rope_ref(x, pos, n_heads, head_dim, n_rot, neox, 10000.0, 1.0)
    # Dims past n_rot pass through untouched.
    per_head = got.reshape(len(pos), n_heads, head_dim)
    assert np.array_equal(per_head[:, :, n_rot:], x.reshape(len(pos), n_heads, head_dim)[:, :, n_rot:])
    # ggml builds theta by repeated float32 multiplication (so does pyllm, to match llama.cpp's
    # logits), which drifts from the exact power by ~i * 2^-24 of theta: at position 2047 up to
    # ~5e-5 rad. Bound: 5e-4 * max|x| (measured worst: 4.6e-5, 10x margin).
    assert np.abs(got - want).max() <= 5e-4 * np.abs(x).max()
    # Position 0 is the identity.
    assert np.allclose(got[0], x[0], rtol=0, atol=1e-7)


def test_rope_freq_scale_is_a_position_scale():
    """Linear rope scaling: scale s at position p rotates as position p*s (p*s exact here)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    a = _core.rope(x, np.array([8, 40], np.int32), 1, 64, 64, True, 10000.0, 0.25)
    b = _core.rope(x, np.array([2, 10], np.int32), 1, 64, 64, True, 10000.0, 1.0)
    assert np.array_equal(a, b)


def test_rope_freq_factors_divide_the_frequencies():
    """llama3's rope_freqs / LongRoPE: dimension pair i turns at theta_i / factor_i."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 2 * 64)).astype(np.float32)
    pos = np.array([0, 5, 300, 4100], np.int32)  # past 4k, where llama3's factors matter
    factors = np.geomspace(1.0, 8.0, 32).astype(np.float32)
    got = _core.rope(x, pos, 2, 64, 64, False, 500000.0, 1.0, factors)
    # the reference's theta at pair i: pos * base^(-2i/64) / factor_i
    out = x.astype(np.float64).reshape(4, 2, 64).copy()
    theta = pos[:, None] * 500000.0 ** (-np.arange(32) * 2.0 / 64) / factors.astype(np.float64)
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = out[..., 0::2].copy(), out[..., 1::2].copy()
    out[..., 0::2], out[..., 1::2] = x0 * c - x1 * s, x0 * s + x1 * c
    # float32 theta at position 4100: ~i * 2^-24 relative drift, as test_rope (bound 5e-4 there).
    assert np.abs(got - out.reshape(4, -1)).max() <= 2e-3 * np.abs(x).max()
    assert not np.allclose(got, _core.rope(x, pos, 2, 64, 64, False, 500000.0, 1.0), atol=1e-2)


def test_rope_yarn_against_the_formula():
    """YaRN (tools/make_tiny_gguf.py rope_angles, from the paper's formulas as ggml states them):
    fast dims keep their angle, slow dims are interpolated by freq_scale, a ramp between, and
    cos/sin scaled by 1 + 0.1 ln(factor)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from make_tiny_gguf import rope_angles
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 128)).astype(np.float32)
    pos = np.array([0, 1, 63, 1000, 5000], np.int32)
    got = _core.rope(x, pos, 1, 128, 128, True, 1e6, 0.25, None, 1.0, 1.0, 4096)
    ang, mag = rope_angles(5001, 128, 1e6, 0.25, None, 4096)
    ang = ang[pos]
    h = x.astype(np.float64)[:, :64], x.astype(np.float64)[:, 64:]
    c, s = mag * np.cos(ang), mag * np.sin(ang)
    want = np.concatenate([h[0] * c - h[1] * s, h[0] * s + h[1] * c], 1)
    assert mag == pytest.approx(1 + 0.1 * np.log(4))
    assert np.abs(got - want).max() <= 2e-3 * np.abs(x).max()  # float32 theta at position 5000
    plain = _core.rope(x, pos, 1, 128, 128, True, 1e6, 0.25)
    assert np.abs(got - plain).max() > 0.1  # the ramp and the magnitude do something


# ---------------------------------------------------------------------------------------------
# GeGLU
# ---------------------------------------------------------------------------------------------

def test_geglu_tanh_is_gelu_times_up_through_an_f16_table():
    """gelu_tanh(gate) * up with ggml's rounding: the input and the GELU value are f16 (one f16
    rounding each: 2^-11 relative), identity from 10 up, 0 from -10 down."""
    rng = np.random.default_rng(10)
    gate = np.concatenate([rng.standard_normal(5000) * 3, [-12.0, -10.0, 0.0, 10.0, 25.0, 1e-3]]).astype(np.float32)
    up = rng.standard_normal(gate.size).astype(np.float32)
    got = _core.geglu_tanh(gate, up)
    g = gate.astype(np.float64)
    exact = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
    exact = np.where(g >= 10, g, np.where(g <= -10, 0.0, exact))
    # |d gelu/dx| <= 1.13, so an f16 input rounding moves gelu by <= 1.13 * 2^-11 |x|; the output
    # rounding by 2^-11 |gelu|.
    bound = (1.13 * np.abs(g) + np.abs(exact)) * 2.0 ** -11 * np.abs(up) + 1e-7
    assert np.all(np.abs(got - exact * up) <= bound)
    assert got[-6] == 0 and got[-5] == 0 and got[-3] == np.float32(10.0) * up[-3]
    ref16 = np.float16(0.5 * np.float64(np.float16(2.0)) * (1 + np.tanh(np.sqrt(2 / np.pi) * (2.0 + 0.044715 * 8))))
    assert _core.geglu_tanh(np.array([2.0], np.float32), np.array([1.0], np.float32))[0] == np.float32(ref16)


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------

def attention_ref(q, k, v, n_head, n_kv_head, head_dim, pos0, scale, window=0, softcap=0.0):
    """Causal softmax attention in float64; query head h reads KV head h // (n_head / n_kv_head).
    window > 0: position p sees (p - window, p]; softcap: scores -> c * tanh(s / c)."""
    n_tok, n_pos = q.shape[0], k.shape[0]
    group = n_head // n_kv_head
    q = q.astype(np.float64).reshape(n_tok, n_head, head_dim)
    k = k.astype(np.float64).reshape(n_pos, n_kv_head, head_dim)
    v = v.astype(np.float64).reshape(n_pos, n_kv_head, head_dim)
    out = np.zeros((n_tok, n_head, head_dim))
    for h in range(n_head):
        g = h // group
        s = q[:, h, :] @ k[:, g, :].T * scale                          # (n_tok, n_pos)
        if softcap:
            s = softcap * np.tanh(s / softcap)
        visible = np.arange(n_pos)[None, :] <= pos0 + np.arange(n_tok)[:, None]
        if window:
            visible &= pos0 + np.arange(n_tok)[:, None] - np.arange(n_pos)[None, :] < window
        s = np.where(visible, s, -np.inf)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        out[:, h, :] = (p / p.sum(axis=1, keepdims=True)) @ v[:, g, :]
    return out.reshape(n_tok, n_head * head_dim)


CASES = [  # (n_tok, pos0, n_head, n_kv_head, head_dim)
    (1, 0, 1, 1, 8),          # one position
    (5, 0, 4, 4, 64),         # prefill from empty, multi-head attention
    (7, 30, 6, 2, 64),        # prefill after a cached prefix crossing a 32-position block, GQA 3:1
    (3, 100, 9, 3, 72),       # GQA with head_dim not a multiple of 16
    (1, 37, 8, 2, 64),        # decode, short context
    (1, 3000, 4, 1, 64),      # decode over a long context (split across threads), GQA 4:1
    (40, 9, 2, 1, 128),       # prefill longer than a token block
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_tok,pos0,n_head,n_kv_head,head_dim", CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_attention(isa, n_tok, pos0, n_head, n_kv_head, head_dim, threads):
    rng = np.random.default_rng(n_tok * 1000 + pos0)
    n_pos = pos0 + n_tok
    q = rng.standard_normal((n_tok, n_head * head_dim)).astype(np.float32)
    k = rng.standard_normal((n_pos, n_kv_head * head_dim)).astype(np.float16)
    v = rng.standard_normal((n_pos, n_kv_head * head_dim)).astype(np.float16)
    scale = 1.0 / np.sqrt(head_dim)
    got = _core.attention_f16(q, k.view(np.uint16), v.view(np.uint16), n_head, n_kv_head, head_dim, pos0, scale,
                          threads, isa)
    want = attention_ref(q, k, v, n_head, n_kv_head, head_dim, pos0, scale)
    # Outputs are convex combinations of V rows (|v| <~ 4): float32 scores, exp and sums over up to
    # 3000 positions. Bound: 2e-5 absolute (measured worst: 1.0e-6 over every case and ISA, 20x margin).
    assert np.abs(got - want).max() <= 2e-5


WINDOW_CASES = [  # (n_tok, pos0, n_head, n_kv_head, head_dim, window, softcap)
    (7, 30, 6, 2, 64, 16, 0.0),       # prefill after a prefix: the window starts mid-block
    (40, 9, 2, 1, 128, 5, 0.0),       # every token's window starts at a different place
    (1, 3000, 4, 1, 64, 1000, 0.0),   # decode: the window's 1000 positions split across threads
    (1, 37, 8, 2, 64, 64, 0.0),       # a window longer than the context: no effect
    (5, 0, 4, 4, 64, 0, 1.5),         # soft-capped scores (gemma2)
    (33, 40, 2, 1, 64, 20, 2.0),      # both
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_tok,pos0,n_head,n_kv_head,head_dim,window,softcap", WINDOW_CASES)
@pytest.mark.parametrize("threads", [1, 3])
def test_attention_sliding_window_and_softcap(isa, n_tok, pos0, n_head, n_kv_head, head_dim, window, softcap, threads):
    rng = np.random.default_rng(n_tok * 1000 + pos0 + window)
    n_pos = pos0 + n_tok
    q = (rng.standard_normal((n_tok, n_head * head_dim)) * 2).astype(np.float32)  # scores reach the cap
    k = rng.standard_normal((n_pos, n_kv_head * head_dim)).astype(np.float16)
    v = rng.standard_normal((n_pos, n_kv_head * head_dim)).astype(np.float16)
    scale = 1.0 / np.sqrt(head_dim)
    got = _core.attention_f16(q, k.view(np.uint16), v.view(np.uint16), n_head, n_kv_head, head_dim, pos0, scale,
                              threads, isa, window=window, softcap=softcap)
    want = attention_ref(q, k, v, n_head, n_kv_head, head_dim, pos0, scale, window, softcap)
    # The same bound as test_attention (its float32 arithmetic, fewer positions).
    assert np.abs(got - want).max() <= 2e-5
    if window and window < n_pos or softcap:  # and it is not plain causal attention
        plain = attention_ref(q, k, v, n_head, n_kv_head, head_dim, pos0, scale)
        assert np.abs(plain - want).max() > 1e-3


def test_attention_rejects_bad_shapes():
    q = np.zeros((2, 64), np.float32)
    k = np.zeros((3, 64), np.uint16)
    with pytest.raises(ValueError, match="attention"):
        _core.attention_f16(q, k, k, 1, 1, 64, 0, 0.125)        # cache must hold pos0 + n_tok rows
    with pytest.raises(ValueError, match="attention"):
        _core.attention_f16(q[:, :60], k[:2, :60], k[:2, :60], 4, 3, 15, 0, 0.125)  # n_head % n_kv_head
