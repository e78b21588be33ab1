// The AVX2 (+FMA, F16C) kernel table: register-tiled integer GEMM for the 32-element block types,
// float GEMM for F32/F16/BF16, the Q8_0/Q8_1 activation quantizers, dequantizers and the F16
// attention helpers. K-quants live in kquants_avx2.cpp. Compiled with -mavx2 -mfma -mf16c -mbmi2
// and entered only after dispatch.cpp has checked the CPU. Nothing but kernel_table_avx2() (and
// the K-quant registrar) has external linkage, so no AVX2 code can leak into baseline callers.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>

#include "kernels/kernels.h"
#include "kernels/x86/avx2_helpers.h"
#include "kernels/ref/ref.h"
#include "kernels/tiling.h"
#include "quant/blocks.h"

namespace pyllm {

void register_kquant_avx2_kernels(KernelTable& t);  // kquants_avx2.cpp
void register_x8_avx2_kernels(KernelTable& t);      // x8_avx2.cpp
void register_kquant_x8_avx2_kernels(KernelTable& t);  // kquants_x8_avx2.cpp
void register_xtx_avx2_kernels(KernelTable& t);     // xtx_avx2.cpp
void register_iquant_avx2_kernels(KernelTable& t);  // iquants_avx2.cpp

namespace {

// --- helpers ------------------------------------------------------------------------------------

inline uint16_t f32_to_half(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

// The compiler may fuse a multiply into a following add (FMA), which rounds once instead of twice.
// The reference rounds the product first; passing it through this opaque register copy forbids the fusion.
inline __m256 rounded(__m256 v) {
    __asm__("" : "+x"(v));
    return v;
}

// 16 bytes of packed nibbles -> 32 bytes 0..15: byte j (< 16) from the low nibble of qs[j], byte
// j+16 from its high nibble; the order of a Q8 activation block.
inline __m256i unpack_nibbles(const uint8_t* qs) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

// The fifth bits of a Q5 block: byte j is 0x10 where bit j of the little-endian u32 qh is set.
inline __m256i unpack_fifth_bits(const uint8_t* qh_bytes) {
    uint32_t qh;
    std::memcpy(&qh, qh_bytes, sizeof(qh));
    // Each lane receives qh's bytes 0..1 (low lane) or 2..3 (high lane), each repeated 8 times.
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                         2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

// roundf semantics (half away from zero) for a vector. _mm256_round_ps's nearest mode rounds
// half to even, which differs at every .5; truncate and step away from zero when |frac| >= 0.5
// instead (v - trunc(v) is exact for floats).
inline __m256 round_half_away(__m256 v) {
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(sign_bit, _mm256_sub_ps(v, t));
    const __m256 step = _mm256_or_ps(_mm256_and_ps(v, sign_bit), _mm256_set1_ps(1.0f));  // copysign(1, v)
    return _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), step));
}

// The largest |x| of 32 floats, skipping NaN like the reference's std::max(amax, fabsf(x)).
inline float block_amax(const __m256 v[4]) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) m = _mm256_max_ps(_mm256_and_ps(v[j], abs_mask), m);  // NaN operand 1 -> keeps m
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// round(x*id) for 32 floats into 32 int8 in order; returns the int32 lanes' sum of the quants via *sum.
inline void quantize_block_32(const __m256 v[4], float id, int8_t* qs, int* sum) {
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(round_half_away(rounded(_mm256_mul_ps(v[j], vid))));
    if (sum) *sum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    // packs work per 128-bit lane; the final permute puts the 4-byte groups back in order.
    const __m256i q01 = _mm256_packs_epi32(q[0], q[1]);
    const __m256i q23 = _mm256_packs_epi32(q[2], q[3]);
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q01, q23), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs), bytes);
}

// --- activation quantizers (byte-identical to quantize_row_q8_0 / _q8_1) ------------------------

void quantize_row_q8_0_avx2(const float* x, void* dst, int64_t n) {
    block_q8_0* y = static_cast<block_q8_0*>(dst);
    for (int64_t i = 0; i < n / QK8_0; ++i, x += QK8_0) {
        const __m256 v[4] = {_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8), _mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)};
        const float d = block_amax(v) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = f32_to_half(d);
        quantize_block_32(v, id, y[i].qs, nullptr);
    }
}

void quantize_row_q8_1_avx2(const float* x, void* dst, int64_t n) {
    block_q8_1* y = static_cast<block_q8_1*>(dst);
    for (int64_t i = 0; i < n / QK8_1; ++i, x += QK8_1) {
        const __m256 v[4] = {_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8), _mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)};
        const float d = block_amax(v) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = f32_to_half(d);
        int sum = 0;
        quantize_block_32(v, id, y[i].qs, &sum);
        y[i].s = f32_to_half((float)sum * d);
    }
}

// --- dequantizers (bit-identical to the reference: int->float is exact, one rounded multiply) ---

// 32 int8 -> 32 floats times d (plus m when given; product rounded first, as the reference).
inline void store_scaled(const __m256i q, float d, const float* m, float* y) {
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    const __m256 vd = _mm256_set1_ps(d);
    for (int j = 0; j < 4; ++j) {
        __m256 f = rounded(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[j])), vd));
        if (m) f = _mm256_add_ps(f, _mm256_set1_ps(*m));
        _mm256_storeu_ps(y + 8 * j, f);
    }
}

void to_float_q4_0_avx2(const void* src, float* y, int64_t n) {
    const block_q4_0* x = static_cast<const block_q4_0*>(src);
    for (int64_t i = 0; i < n / QK4_0; ++i, y += QK4_0)
        store_scaled(_mm256_sub_epi8(unpack_nibbles(x[i].qs), _mm256_set1_epi8(8)), half_to_f32(x[i].d), nullptr, y);
}
void to_float_q4_1_avx2(const void* src, float* y, int64_t n) {
    const block_q4_1* x = static_cast<const block_q4_1*>(src);
    for (int64_t i = 0; i < n / QK4_1; ++i, y += QK4_1) {
        const float m = half_to_f32(x[i].m);
        store_scaled(unpack_nibbles(x[i].qs), half_to_f32(x[i].d), &m, y);
    }
}
void to_float_q5_0_avx2(const void* src, float* y, int64_t n) {
    const block_q5_0* x = static_cast<const block_q5_0*>(src);
    for (int64_t i = 0; i < n / QK5_0; ++i, y += QK5_0) {
        const __m256i q = _mm256_or_si256(unpack_nibbles(x[i].qs), unpack_fifth_bits(x[i].qh));
        store_scaled(_mm256_sub_epi8(q, _mm256_set1_epi8(16)), half_to_f32(x[i].d), nullptr, y);
    }
}
void to_float_q5_1_avx2(const void* src, float* y, int64_t n) {
    const block_q5_1* x = static_cast<const block_q5_1*>(src);
    for (int64_t i = 0; i < n / QK5_1; ++i, y += QK5_1) {
        const float m = half_to_f32(x[i].m);
        store_scaled(_mm256_or_si256(unpack_nibbles(x[i].qs), unpack_fifth_bits(x[i].qh)), half_to_f32(x[i].d), &m, y);
    }
}
void to_float_q8_0_avx2(const void* src, float* y, int64_t n) {
    const block_q8_0* x = static_cast<const block_q8_0*>(src);
    for (int64_t i = 0; i < n / QK8_0; ++i, y += QK8_0)
        store_scaled(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs)), half_to_f32(x[i].d), nullptr, y);
}

// --- float types: loads, conversions, attention helpers ------------------------------------------

inline __m256 load8_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 load8_bf16(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
inline float bf16_bits_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; std::memcpy(&f, &u, 4); return f; }

void to_float_f16_avx2(const void* src, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load8_f16(x + i));
    for (; i < n; ++i) y[i] = half_to_f32(x[i]);
}
void to_float_bf16_avx2(const void* src, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load8_bf16(x + i));
    for (; i < n; ++i) y[i] = bf16_bits_to_f32(x[i]);
}

void f32_to_f16_avx2(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; ++i) y[i] = f32_to_half(x[i]);
}

// Attention's P.V: a tile of R rows x 32 columns in 8 accumulators; each V row is converted once
// per tile and broadcast-multiplied into every row.
inline __m256 load8_v(const uint16_t* p) { return load8_f16(p); }
inline __m256 load8_v(const float* p) { return _mm256_loadu_ps(p); }
inline float v_to_f32(uint16_t h) { return half_to_f32(h); }
inline float v_to_f32(float f) { return f; }

// R probability rows times W vector columns (8 floats each) of the output. W is a template
// parameter so the accumulators stay in registers (2 x 4 + 4 + 1 = 13 ymm): with a run-time
// column count GCC kept them on the stack, a load and a store around every FMA.
template <int R, int W, typename V>
void pv_tile_avx2(int64_t nb, int64_t d, int64_t i, const float* p, int64_t p_stride,
                  const V* v, int64_t v_stride, float* out) {
    __m256 acc[R][W];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < W; ++c) acc[r][c] = _mm256_loadu_ps(out + r * d + i + 8 * c);
    for (int64_t j = 0; j < nb; ++j) {
        __m256 vv[W];
        for (int c = 0; c < W; ++c) vv[c] = load8_v(v + j * v_stride + i + 8 * c);
        for (int r = 0; r < R; ++r) {
            const __m256 pb = _mm256_set1_ps(p[r * p_stride + j]);
            for (int c = 0; c < W; ++c) acc[r][c] = _mm256_fmadd_ps(vv[c], pb, acc[r][c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < W; ++c) _mm256_storeu_ps(out + r * d + i + 8 * c, acc[r][c]);
}

template <int R, typename V>
void pv_tile_cols(int64_t w, int64_t nb, int64_t d, int64_t i, const float* p, int64_t p_stride, const V* v,
                  int64_t v_stride, float* out) {
    switch (w) {
        case 4: return pv_tile_avx2<R, 4, V>(nb, d, i, p, p_stride, v, v_stride, out);
        case 3: return pv_tile_avx2<R, 3, V>(nb, d, i, p, p_stride, v, v_stride, out);
        case 2: return pv_tile_avx2<R, 2, V>(nb, d, i, p, p_stride, v, v_stride, out);
        default: return pv_tile_avx2<R, 1, V>(nb, d, i, p, p_stride, v, v_stride, out);
    }
}

// V in f16 (the cache) or f32 (a dequantized block of a quantized cache).
template <typename V>
void pv_avx2(int64_t n_rows, int64_t nb, int64_t d, const float* p, int64_t p_stride,
             const V* v, int64_t v_stride, float* out) {
    const int64_t dv = d / 8 * 8;
    for (int64_t r0 = 0; r0 < n_rows; r0 += 2) {
        const bool two = n_rows - r0 >= 2;
        const float* pr = p + r0 * p_stride;
        float* o = out + r0 * d;
        for (int64_t i = 0; i < dv; i += 32) {
            const int64_t w = std::min<int64_t>(4, (dv - i) / 8);
            if (two) pv_tile_cols<2, V>(w, nb, d, i, pr, p_stride, v, v_stride, o);
            else pv_tile_cols<1, V>(w, nb, d, i, pr, p_stride, v, v_stride, o);
        }
        for (int64_t r = r0; r < std::min(n_rows, r0 + 2); ++r)
            for (int64_t j = 0; j < nb; ++j)
                for (int64_t i = dv; i < d; ++i) out[r * d + i] += p[r * p_stride + j] * v_to_f32(v[j * v_stride + i]);
    }
}

// e^x for x clamped to [-87, 88]: x = n*ln2 + r with |r| <= ln2/2, e^r by its degree-6 Taylor
// polynomial (relative error ~1e-7), and 2^n put into the exponent bits.
inline __m256 exp_avx2(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);  // ln2 in two parts
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 e = _mm256_set1_ps(1.0f / 720);
    for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(c));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
}

float exp_sum_avx2(float* s, int64_t n, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = hsum(acc);
    for (; j < n; ++j) {
        s[j] = std::exp(s[j] - m);
        sum += s[j];
    }
    return sum;
}

void swiglu_avx2(float* gate, const float* up, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// --- float GEMM micro-kernel ---------------------------------------------------------------------

struct F32Weights {
    using elem = float;
    static __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
    static float scalar(const float* p) { return *p; }
};
struct F16Weights {
    using elem = uint16_t;
    static __m256 load8(const uint16_t* p) { return load8_f16(p); }
    static float scalar(const uint16_t* p) { return half_to_f32(*p); }
};
struct BF16Weights {
    using elem = uint16_t;
    static __m256 load8(const uint16_t* p) { return load8_bf16(p); }
    static float scalar(const uint16_t* p) { return bf16_bits_to_f32(*p); }
};

// Each weight vector (converted once) feeds T token rows; 12 accumulators + 1 weight + 1 activation
// fit the 16 ymm registers at 4x3.
template <class WT>
struct FloatMK {
    static constexpr int kRows = 4, kToks = 3, kDecodeRows = 4;
    static constexpr size_t kChunkBytes = kChunkL2;
    template <int R, int T>
    static void tile(const GemmArgs& g, int64_t r0, int64_t t0) {
        using E = typename WT::elem;
        const E* w[R];
        const float* a[T];
        for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const E*>(g.w + (r0 + r) * g.w_stride);
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const float*>(g.a + (t0 + t) * g.a_stride);
        __m256 acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
        int64_t i = 0;
        // One weight vector live at a time (converted right before its T uses): 12 accumulators
        // + 3 activations + 1 weight = 16 ymm registers. Converting all R first needs 4 weight
        // registers, and the accumulator the compiler then spills to the stack put a store-load
        // round trip into every iteration (the 4x3 tile ran at half speed).
        for (; i + 8 <= g.k; i += 8) {
            __m256 av[T];
            for (int t = 0; t < T; ++t) av[t] = _mm256_loadu_ps(a[t] + i);
            for (int r = 0; r < R; ++r) {
                const __m256 wv = WT::load8(w[r] + i);
                for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, av[t], acc[r][t]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) {
                float s = hsum(acc[r][t]);
                for (int64_t j = i; j < g.k; ++j) s += WT::scalar(w[r] + j) * a[t][j];
                g.out[(t0 + t) * g.out_stride + r0 + r] = s;
            }
    }
};

// --- integer GEMM micro-kernel for the 32-element block types ------------------------------------
//
// Each weight block unpacks to 32 bytes lined up with the activation block's 32 int8 quants.
// maddubs multiplies unsigned by signed bytes, so the weights are kept unsigned: a type whose
// value is q - offset (Q4_0: 8, Q5_0: 16) computes dot(q, y) - offset*sum(y), where the second
// term (as int16 pairs from maddubs(offset, y)) is made once per activation block and shared by
// all rows. Q8_0 weights are signed; they use |w| . sign(y, w), as ggml does. Pairs stay within
// int16: 31*127*2 for unsigned weights, 128*127*2 for |w|. madd then widens pairs to 8 int32 lanes,
// converted to float and scaled by d_w*d_a with one FMA. Types with a min (Q4_1, Q5_1) add
// m*s per block; the activation block's s = d*sum(q) comes precomputed, spread over 8 lanes as s/8.

struct Q4_0Weights {
    using W = block_q4_0; using A = block_q8_0;
    static constexpr int kOffset = 8; static constexpr bool kSigned = false, kHasMin = false;
    static __m256i quants(const W& b) { return unpack_nibbles(b.qs); }
};
struct Q4_1Weights {
    using W = block_q4_1; using A = block_q8_1;
    static constexpr int kOffset = 0; static constexpr bool kSigned = false, kHasMin = true;
    static __m256i quants(const W& b) { return unpack_nibbles(b.qs); }
};
struct Q5_0Weights {
    using W = block_q5_0; using A = block_q8_0;
    static constexpr int kOffset = 16; static constexpr bool kSigned = false, kHasMin = false;
    static __m256i quants(const W& b) { return _mm256_or_si256(unpack_nibbles(b.qs), unpack_fifth_bits(b.qh)); }
};
struct Q5_1Weights {
    using W = block_q5_1; using A = block_q8_1;
    static constexpr int kOffset = 0; static constexpr bool kSigned = false, kHasMin = true;
    static __m256i quants(const W& b) { return _mm256_or_si256(unpack_nibbles(b.qs), unpack_fifth_bits(b.qh)); }
};
struct Q8_0Weights {
    using W = block_q8_0; using A = block_q8_0;
    static constexpr int kOffset = 0; static constexpr bool kSigned = true, kHasMin = false;
    static __m256i quants(const W& b) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs)); }
};

template <class QT, int kTileRows = 4, int kTileToks = 2, int kDecode = 4>
struct QuantMK {
    using W = typename QT::W;
    using A = typename QT::A;
    static constexpr int kRows = kTileRows, kToks = kTileToks, kDecodeRows = kDecode;
    static constexpr size_t kChunkBytes = kChunkL1;

    template <int R, int T>
    static void tile(const GemmArgs& g, int64_t r0, int64_t t0) {
        const int64_t nb = g.k / 32;
        const W* w[R];
        const A* a[T];
        for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const W*>(g.w + (r0 + r) * g.w_stride);
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const A*>(g.a + (t0 + t) * g.a_stride);
        const __m256i ones16 = _mm256_set1_epi16(1);
        __m256 acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();

        int64_t i = 0;
        do {  // do-while (nb >= 1): with a for loop GCC may store every accumulator on every step
            __m256i y[T], y_offset[T];
            __m256 ad[T], as8[T];
            for (int t = 0; t < T; ++t) {
                y[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[t][i].qs));
                ad[t] = _mm256_set1_ps(half_to_f32(a[t][i].d));
                if constexpr (QT::kOffset != 0) y_offset[t] = _mm256_maddubs_epi16(_mm256_set1_epi8(QT::kOffset), y[t]);
                if constexpr (QT::kHasMin) as8[t] = _mm256_set1_ps(half_to_f32(a[t][i].s) * 0.125f);
            }
            for (int r = 0; r < R; ++r) {
                const __m256 wd = _mm256_set1_ps(half_to_f32(w[r][i].d));
                const __m256i q = QT::quants(w[r][i]);
                if constexpr (QT::kSigned) {
                    const __m256i q_abs = _mm256_sign_epi8(q, q);
                    for (int t = 0; t < T; ++t) {
                        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q_abs, _mm256_sign_epi8(y[t], q)), ones16);
                        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(wd, ad[t]), acc[r][t]);
                    }
                } else {
                    for (int t = 0; t < T; ++t) {
                        __m256i pairs = _mm256_maddubs_epi16(q, y[t]);
                        if constexpr (QT::kOffset != 0) pairs = _mm256_sub_epi16(pairs, y_offset[t]);
                        const __m256i p = _mm256_madd_epi16(pairs, ones16);
                        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(wd, ad[t]), acc[r][t]);
                    }
                }
                if constexpr (QT::kHasMin) {
                    const __m256 wm = _mm256_set1_ps(half_to_f32(w[r][i].m));
                    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wm, as8[t], acc[r][t]);
                }
            }
            ++i;
        } while (i < nb);
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) g.out[(t0 + t) * g.out_stride + r0 + r] = hsum(acc[r][t]);
    }
};

// --- the table ----------------------------------------------------------------------------------

KernelTable make_avx2_table() {
    KernelTable t{};
    t.isa = "avx2";
    t.gemm[TYPE_F32] = gemm_tiled<FloatMK<F32Weights>>;
    t.gemm[TYPE_F16] = gemm_tiled<FloatMK<F16Weights>>;
    t.gemm[TYPE_BF16] = gemm_tiled<FloatMK<BF16Weights>>;
    t.gemm[TYPE_Q4_0] = gemm_tiled<QuantMK<Q4_0Weights>>;
    t.gemm[TYPE_Q4_1] = gemm_tiled<QuantMK<Q4_1Weights>>;
    t.gemm[TYPE_Q5_0] = gemm_tiled<QuantMK<Q5_0Weights>>;
    t.gemm[TYPE_Q5_1] = gemm_tiled<QuantMK<Q5_1Weights>>;
    t.gemm[TYPE_Q8_0] = gemm_tiled<QuantMK<Q8_0Weights>>;
    t.quantize_act[TYPE_Q8_0] = quantize_row_q8_0_avx2;
    t.quantize_act[TYPE_Q8_1] = quantize_row_q8_1_avx2;
    t.to_float[TYPE_F16] = to_float_f16_avx2;
    t.to_float[TYPE_BF16] = to_float_bf16_avx2;
    t.to_float[TYPE_Q4_0] = to_float_q4_0_avx2;
    t.to_float[TYPE_Q4_1] = to_float_q4_1_avx2;
    t.to_float[TYPE_Q5_0] = to_float_q5_0_avx2;
    t.to_float[TYPE_Q5_1] = to_float_q5_1_avx2;
    t.to_float[TYPE_Q8_0] = to_float_q8_0_avx2;
    t.f32_to_f16 = f32_to_f16_avx2;
    t.pv_f16 = pv_avx2<uint16_t>;
    t.pv_f32 = pv_avx2<float>;
    t.exp_sum = exp_sum_avx2;
    t.swiglu = swiglu_avx2;
    register_kquant_avx2_kernels(t);
    register_x8_avx2_kernels(t);
    register_kquant_x8_avx2_kernels(t);
    register_xtx_avx2_kernels(t);
    register_iquant_avx2_kernels(t);
    fill_missing_from_ref(t);
    return t;
}

} // namespace

const KernelTable* kernel_table_avx2() {
    static const KernelTable table = make_avx2_table();
    return &table;
}

} // namespace pyllm

#else  // not x86: this ISA is not compiled here

#include "kernels/kernels.h"
namespace pyllm {
const KernelTable* kernel_table_avx2() { return nullptr; }
} // namespace pyllm

#endif
