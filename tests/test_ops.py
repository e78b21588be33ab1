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


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------

def attention_ref(q, k, v, n_head, n_kv_head, head_dim, pos0, scale):
    """Causal softmax attention in float64; query head h reads KV head h // (n_head / n_kv_head)."""
    n_tok, n_pos = q.shape[0], k.shape[0]
    group = n_head // n_kv_head
    q = q.astype(np.float64).reshape(n_tok, n_head, head_dim)
    k = k.astype(np.float64).reshape(n_pos, n_kv_head, head_dim)
    v = v.astype(np.float64).reshape(n_pos, n_kv_head, head_dim)
    out = np.zeros((n_tok, n_head, head_dim))
    for h in range(n_head):
        g = h // group
        s = q[:, h, :] @ k[:, g, :].T * scale                          # (n_tok, n_pos)
        visible = np.arange(n_pos)[None, :] <= pos0 + np.arange(n_tok)[:, None]
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


def test_attention_rejects_bad_shapes():
    q = np.zeros((2, 64), np.float32)
    k = np.zeros((3, 64), np.uint16)
    with pytest.raises(ValueError, match="attention"):
        _core.attention_f16(q, k, k, 1, 1, 64, 0, 0.125)        # cache must hold pos0 + n_tok rows
    with pytest.raises(ValueError, match="attention"):
        _core.attention_f16(q[:, :60], k[:2, :60], k[:2, :60], 4, 3, 15, 0, 0.125)  # n_head % n_kv_head
