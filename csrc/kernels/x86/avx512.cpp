// The AVX-512 kernel table (F, BW, VL, DQ, VNNI): 512-bit register-tiled GEMM for the 32-element
// block types with VNNI dpbusd, float GEMM for F32/F16/BF16 with masked tails, the Q8_0/Q8_1
// activation quantizers and the F16 attention helpers. K-quants live in kquants_avx512.cpp; the
// block-type dequantizers come from the AVX2 table (every AVX-512 CPU here runs AVX2).
// Only kernel_table_avx512() has external linkage (see kernels/tiling.h for why).
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>

#include "kernels/kernels.h"
#include "kernels/ref/ref.h"
#include "kernels/tiling.h"
#include "quant/blocks.h"

namespace pyllm {

void register_kquant_avx512_kernels(KernelTable& t);  // kquants_avx512.cpp
void register_x8_avx512_kernels(KernelTable& t);      // x8_avx512.cpp

namespace {

// --- helpers ------------------------------------------------------------------------------------

inline uint16_t f32_to_half(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

// Forbids fusing this product into a following add (see avx2.cpp: the reference rounds it first).
inline __m512 rounded(__m512 v) {
    __asm__("" : "+v"(v));
    return v;
}

// Sum of 16 floats. (GCC's _mm512_reduce_add_ps made it keep tile accumulators in memory inside the
// k loop, storing all of them every step.)
inline float hsum(__m512 v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline __mmask16 tail_mask16(int64_t n) { return (__mmask16)((1u << n) - 1u); }

// Two blocks' f16 scales as 16 floats: lanes 0-7 block i, lanes 8-15 block i+1, matching the int32
// lanes dpbusd produces from two consecutive 32-byte blocks.
inline __m512 pair_scales(uint16_t h0, uint16_t h1) {
    const __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16((short)h0)), _mm_set1_epi16((short)h1), 1);
    return _mm512_cvtph_ps(h);
}

// Two 32-byte runs -> one register.
inline __m512i load_pair(const void* p0, const void* p1) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(static_cast<const __m256i*>(p0))),
                              _mm256_loadu_si256(static_cast<const __m256i*>(p1)), 1);
}

// Two blocks' 16 bytes of nibbles -> 64 bytes 0..15 in activation order: [lo(i), hi(i), lo(i+1), hi(i+1)].
// The 16 bytes are broadcast twice per block and the odd 128-bit quarters shifted right by 4.
inline __m512i unpack_nibbles_pair(const uint8_t* qs0, const uint8_t* qs1) {
    const __m256i a = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs0)));
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs1)));
    const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
    const __m512i shifted = _mm512_mask_srli_epi16(both, (__mmask32)0xff00ff00u, both, 4);
    return _mm512_and_si512(shifted, _mm512_set1_epi8(0x0f));
}

// The fifth bits of two Q5 blocks: byte j is 0x10 where bit j of the blocks' qh words is set.
inline __m512i unpack_fifth_bits_pair(const uint8_t* qh0, const uint8_t* qh1) {
    uint32_t lo, hi;
    std::memcpy(&lo, qh0, 4);
    std::memcpy(&hi, qh1, 4);
    return _mm512_maskz_mov_epi8(((__mmask64)hi << 32) | lo, _mm512_set1_epi8(0x10));
}

// --- activation quantizers (byte-identical to quantize_row_q8_0 / _q8_1) ------------------------

// roundf semantics (half away from zero); see avx2.cpp.
inline __m512 round_half_away(__m512 v) {
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
    const __m512 step = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0x80000000u)),
                                                            _mm512_castps_si512(_mm512_set1_ps(1.0f))));
    return _mm512_mask_add_ps(t, _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ), t, step);
}

// Quantizes a 32-float block to qs; returns sum(q). NaN is skipped by the max like the reference.
inline int quantize_block_32(const float* x, uint16_t* d_out, int8_t* qs, float* d_value) {
    const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    __m512 m = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_setzero_ps());  // NaN in operand 1 -> operand 2
    m = _mm512_max_ps(_mm512_abs_ps(v1), m);
    const float d = _mm512_reduce_max_ps(m) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    *d_out = f32_to_half(d);
    *d_value = d;
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i q0 = _mm512_cvtps_epi32(round_half_away(rounded(_mm512_mul_ps(v0, vid))));
    const __m512i q1 = _mm512_cvtps_epi32(round_half_away(rounded(_mm512_mul_ps(v1, vid))));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(qs), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + 16), _mm512_cvtsepi32_epi8(q1));
    return _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
}

void quantize_row_q8_0_avx512(const float* x, void* dst, int64_t n) {
    block_q8_0* y = static_cast<block_q8_0*>(dst);
    float d;
    for (int64_t i = 0; i < n / QK8_0; ++i) quantize_block_32(x + i * QK8_0, &y[i].d, y[i].qs, &d);
}

void quantize_row_q8_1_avx512(const float* x, void* dst, int64_t n) {
    block_q8_1* y = static_cast<block_q8_1*>(dst);
    for (int64_t i = 0; i < n / QK8_1; ++i) {
        float d;
        const int sum = quantize_block_32(x + i * QK8_1, &y[i].d, y[i].qs, &d);
        y[i].s = f32_to_half((float)sum * d);
    }
}

// --- float types: loads, conversions, attention helpers ------------------------------------------

inline __m512 load16_f32(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load16_f16(const uint16_t* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }
inline __m512 load16_bf16(const uint16_t* p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

void to_float_f16_avx512(const void* src, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail_mask16(n - i);
        _mm512_mask_storeu_ps(y + i, m, load16_f16(x + i, m));
    }
}
void to_float_bf16_avx512(const void* src, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail_mask16(n - i);
        _mm512_mask_storeu_ps(y + i, m, load16_bf16(x + i, m));
    }
}

void f32_to_f16_avx512(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail_mask16(n - i);
        _mm256_mask_storeu_epi16(y + i, m, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, x + i), _MM_FROUND_TO_NEAREST_INT));
    }
}

// Attention's P.V: a tile of R rows x 64 columns in 16 accumulators (masked at the row's end);
// each V row is converted once per tile and broadcast-multiplied into every row.
template <int R>
void pv_tile_avx512(int64_t nb, int64_t d, int64_t i, const float* p, int64_t p_stride, const uint16_t* v,
                    int64_t v_stride, float* out) {
    __mmask16 m[4];
    for (int c = 0; c < 4; ++c) {
        const int64_t left = d - i - 16 * c;
        m[c] = left >= 16 ? (__mmask16)0xffff : left > 0 ? tail_mask16(left) : (__mmask16)0;
    }
    __m512 acc[R][4];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_maskz_loadu_ps(m[c], out + r * d + i + 16 * c);
    for (int64_t j = 0; j < nb; ++j) {
        __m512 vv[4];
        for (int c = 0; c < 4; ++c) vv[c] = load16_f16(v + j * v_stride + i + 16 * c, m[c]);
        for (int r = 0; r < R; ++r) {
            const __m512 pb = _mm512_set1_ps(p[r * p_stride + j]);
            for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_fmadd_ps(vv[c], pb, acc[r][c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < 4; ++c) _mm512_mask_storeu_ps(out + r * d + i + 16 * c, m[c], acc[r][c]);
}

void pv_f16_avx512(int64_t n_rows, int64_t nb, int64_t d, const float* p, int64_t p_stride,
                   const uint16_t* v, int64_t v_stride, float* out) {
    for (int64_t r0 = 0; r0 < n_rows; r0 += 4) {
        const float* pr = p + r0 * p_stride;
        float* o = out + r0 * d;
        for (int64_t i = 0; i < d; i += 64) {
            switch (std::min<int64_t>(4, n_rows - r0)) {
                case 4: pv_tile_avx512<4>(nb, d, i, pr, p_stride, v, v_stride, o); break;
                case 3: pv_tile_avx512<3>(nb, d, i, pr, p_stride, v, v_stride, o); break;
                case 2: pv_tile_avx512<2>(nb, d, i, pr, p_stride, v, v_stride, o); break;
                default: pv_tile_avx512<1>(nb, d, i, pr, p_stride, v, v_stride, o); break;
            }
        }
    }
}

// e^x for x clamped to [-87, 88]: x = n*ln2 + r with |r| <= ln2/2, e^r by its degree-6 Taylor
// polynomial (relative error ~1e-7), times 2^n by scalef.
inline __m512 exp_avx512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2 in two parts
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 e = _mm512_set1_ps(1.0f / 720);
    for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(c));
    return _mm512_scalef_ps(e, n);
}

void swiglu_avx512(float* gate, const float* up, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail_mask16(n - i);
        const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
        const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g));
        _mm512_mask_storeu_ps(gate + i, m, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), _mm512_maskz_loadu_ps(m, up + i)));
    }
}

// --- float GEMM micro-kernel ---------------------------------------------------------------------

struct F32Weights {
    using elem = float;
    static __m512 load16(const float* p, __mmask16 m) { return load16_f32(p, m); }
};
struct F16Weights {
    using elem = uint16_t;
    static __m512 load16(const uint16_t* p, __mmask16 m) { return load16_f16(p, m); }
};
struct BF16Weights {
    using elem = uint16_t;
    static __m512 load16(const uint16_t* p, __mmask16 m) { return load16_bf16(p, m); }
};

// 4x4 tile: 16 accumulators + 4 weight vectors + 1 activation of the 32 zmm registers. The tail
// of a row (k % 16) is one masked step, so every k runs the vector loop.
template <class WT>
struct FloatMK {
    static constexpr int kRows = 4, kToks = 4, kDecodeRows = 4;
    static constexpr size_t kChunkBytes = kChunkL2;

    template <int R, int T>
    static void tile(const GemmArgs& g, int64_t r0, int64_t t0) {
        using E = typename WT::elem;
        const E* w[R];
        const float* a[T];
        for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const E*>(g.w + (r0 + r) * g.w_stride);
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const float*>(g.a + (t0 + t) * g.a_stride);
        __m512 acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
        // One loop with the mask computed per step: a separate tail call made GCC keep the
        // accumulators in memory (2.4x slower).
        int64_t i = 0;
        do {  // k >= 1
            const __mmask16 m = g.k - i >= 16 ? (__mmask16)0xffff : tail_mask16(g.k - i);
            __m512 wv[R];
            for (int r = 0; r < R; ++r) wv[r] = WT::load16(w[r] + i, m);
            for (int t = 0; t < T; ++t) {
                const __m512 av = _mm512_maskz_loadu_ps(m, a[t] + i);
                for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], av, acc[r][t]);
            }
            i += 16;
        } while (i < g.k);
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) g.out[(t0 + t) * g.out_stride + r0 + r] = hsum(acc[r][t]);
    }
};

// --- integer GEMM micro-kernel for the 32-element block types ------------------------------------
//
// One zmm holds two consecutive blocks. dpbusd multiplies unsigned weight bytes by signed
// activation bytes and sums groups of four into int32 lanes, without the int16 saturation of
// maddubs. Every weight type is made unsigned: q - offset (Q4_0: 8, Q5_0: 16, Q8_0: w + 128 via
// xor 0x80, offset 128) is dot(q, y) - offset*sum(y), and the second term is precomputed once per
// activation pair as the accumulator dpbusd starts from. So each (row, token) pair costs one
// dpbusd, one convert, one scale multiply and one FMA per two blocks. Min types (Q4_1, Q5_1) add
// m*s per block, spread over the block's 8 lanes as s/8. An odd last block runs the same code with
// the upper activation half zeroed (so it contributes nothing) and its own block standing in as
// the partner.

struct Q4_0Weights {
    using W = block_q4_0; using A = block_q8_0;
    static constexpr int kOffset = 8; static constexpr bool kHasMin = false;
    static __m512i quants(const W& b0, const W& b1) { return unpack_nibbles_pair(b0.qs, b1.qs); }
};
struct Q4_1Weights {
    using W = block_q4_1; using A = block_q8_1;
    static constexpr int kOffset = 0; static constexpr bool kHasMin = true;
    static __m512i quants(const W& b0, const W& b1) { return unpack_nibbles_pair(b0.qs, b1.qs); }
};
struct Q5_0Weights {
    using W = block_q5_0; using A = block_q8_0;
    static constexpr int kOffset = 16; static constexpr bool kHasMin = false;
    static __m512i quants(const W& b0, const W& b1) {
        return _mm512_or_si512(unpack_nibbles_pair(b0.qs, b1.qs), unpack_fifth_bits_pair(b0.qh, b1.qh));
    }
};
struct Q5_1Weights {
    using W = block_q5_1; using A = block_q8_1;
    static constexpr int kOffset = 0; static constexpr bool kHasMin = true;
    static __m512i quants(const W& b0, const W& b1) {
        return _mm512_or_si512(unpack_nibbles_pair(b0.qs, b1.qs), unpack_fifth_bits_pair(b0.qh, b1.qh));
    }
};
struct Q8_0Weights {
    using W = block_q8_0; using A = block_q8_0;
    static constexpr int kOffset = 128; static constexpr bool kHasMin = false;
    static __m512i quants(const W& b0, const W& b1) {
        return _mm512_xor_si512(load_pair(b0.qs, b1.qs), _mm512_set1_epi8((char)0x80));
    }
};

template <class QT, int kTileRows = 4, int kTileToks = 4, int kDecode = 4>
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
        __m512 acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();

        int64_t i = 0;
        do {  // do-while (nb >= 1): with a for loop GCC stores every accumulator on every step
            const bool pair = i + 1 < nb;
            const int64_t j = pair ? i + 1 : i;
            __m512i y[T], start[T];
            __m512 ad[T], as8[T];
            for (int t = 0; t < T; ++t) {
                y[t] = load_pair(a[t][i].qs, a[t][j].qs);
                if (!pair) y[t] = _mm512_maskz_mov_epi8((__mmask64)0xffffffffu, y[t]);
                ad[t] = pair_scales(a[t][i].d, a[t][j].d);
                start[t] = _mm512_setzero_si512();
                if constexpr (QT::kOffset != 0)
                    start[t] = _mm512_sub_epi32(start[t], _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)QT::kOffset), y[t]));
                if constexpr (QT::kHasMin)
                    as8[t] = _mm512_mul_ps(pair_scales(a[t][i].s, pair ? a[t][j].s : 0), _mm512_set1_ps(0.125f));
            }
            for (int r = 0; r < R; ++r) {
                const __m512i q = QT::quants(w[r][i], w[r][j]);
                const __m512 wd = pair_scales(w[r][i].d, w[r][j].d);
                for (int t = 0; t < T; ++t) {
                    const __m512i p = _mm512_dpbusd_epi32(start[t], q, y[t]);
                    acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(wd, ad[t]), acc[r][t]);
                }
                if constexpr (QT::kHasMin) {
                    const __m512 wm = pair_scales(w[r][i].m, w[r][j].m);
                    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(wm, as8[t], acc[r][t]);
                }
            }
            i += 2;
        } while (i < nb);
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) g.out[(t0 + t) * g.out_stride + r0 + r] = hsum(acc[r][t]);
    }
};

// --- the table ----------------------------------------------------------------------------------

KernelTable make_avx512_table() {
    KernelTable t{};
    t.isa = "avx512";
    t.gemm[TYPE_F32] = gemm_tiled<FloatMK<F32Weights>>;
    t.gemm[TYPE_F16] = gemm_tiled<FloatMK<F16Weights>>;
    t.gemm[TYPE_BF16] = gemm_tiled<FloatMK<BF16Weights>>;
    t.gemm[TYPE_Q4_0] = gemm_tiled<QuantMK<Q4_0Weights>>;
    t.gemm[TYPE_Q4_1] = gemm_tiled<QuantMK<Q4_1Weights>>;
    t.gemm[TYPE_Q5_0] = gemm_tiled<QuantMK<Q5_0Weights>>;
    t.gemm[TYPE_Q5_1] = gemm_tiled<QuantMK<Q5_1Weights>>;
    t.gemm[TYPE_Q8_0] = gemm_tiled<QuantMK<Q8_0Weights>>;
    t.quantize_act[TYPE_Q8_0] = quantize_row_q8_0_avx512;
    t.quantize_act[TYPE_Q8_1] = quantize_row_q8_1_avx512;
    t.to_float[TYPE_F16] = to_float_f16_avx512;
    t.to_float[TYPE_BF16] = to_float_bf16_avx512;
    t.f32_to_f16 = f32_to_f16_avx512;
    t.pv_f16 = pv_f16_avx512;
    t.swiglu = swiglu_avx512;
    register_kquant_avx512_kernels(t);
    register_x8_avx512_kernels(t);
    // Whatever is still empty: the AVX2 kernel if there is one (AVX-512 CPUs run AVX2), else ref.
    // IQ4_NL / IQ4_XS (iquants_avx2.cpp) come this way: no AVX-512 machine here to test 512-bit ones on.
    if (const KernelTable* avx2 = kernel_table_avx2()) {
        for (int i = 0; i < TYPE_COUNT; ++i) {
            if (!t.gemm[i]) t.gemm[i] = avx2->gemm[i];
            if (!t.quantize_act[i]) t.quantize_act[i] = avx2->quantize_act[i];
            if (!t.to_float[i]) t.to_float[i] = avx2->to_float[i];
            // The x8 K-quant kernels (kquants_x8_avx2.cpp) are AVX2 only: this machine class has no
            // AVX-512 to test an AVX-512 version on, so AVX-512 CPUs run the AVX2 one. The layout
            // and its kernel travel together.
            if (!t.gemm_x8[i] && !t.repack_x8[i]) {
                t.gemm_x8[i] = avx2->gemm_x8[i];
                t.repack_x8[i] = avx2->repack_x8[i];
            }
        }
        // pv_f32 (quantized V cache): AVX2's; no AVX-512 machine here to test a 16-wide one on.
        if (!t.pv_f32) t.pv_f32 = avx2->pv_f32;
        if (!t.exp_sum) t.exp_sum = avx2->exp_sum;  // likewise
        if (!t.xtx_tile) t.xtx_tile = avx2->xtx_tile;
    }
    fill_missing_from_ref(t);
    return t;
}

} // namespace

const KernelTable* kernel_table_avx512() {
    static const KernelTable table = make_avx512_table();
    return &table;
}

} // namespace pyllm

#else  // not x86: this ISA is not compiled here

#include "kernels/kernels.h"
namespace pyllm {
const KernelTable* kernel_table_avx512() { return nullptr; }
} // namespace pyllm

#endif
