// AVX2 kernels of the non-linear 4-bit types: GEMM of IQ4_NL weights against Q8_0 activations
// (plain and over the x8 layout) and of IQ4_XS weights against Q8_K, and both dequantizers
// (bit-identical to the reference).
// Compiled with the AVX2 flags; only register_iquant_avx2_kernels has external linkage. The
// AVX-512 table takes these kernels too (kernels/x86/avx512.cpp fills its empty entries from the
// AVX2 table): no AVX-512 machine is at hand to test a 512-bit version on.
//
// A weight block's 16 nibble bytes widen to 32 indices in activation order (low nibbles are
// elements 0-15, high nibbles 16-31), and one pshufb per 32 elements looks them up in ggml's
// 16-entry grid kvalues_iq4nl, held in both 128-bit lanes. The grid values are signed (-127..113)
// and so are the activations, so products use maddubs(|w|, sign(y, w)) as ggml does: pairs of
// at most 2*127*127 stay within int16. IQ4_NL: madd by ones to 8 int32 lanes, then one FMA with
// d_w*d_a per block. IQ4_XS: madd by the sub-block's 6-bit scale (ls - 32) into an int32 sum per
// super-block (at most 8 * 2 * 32258 * 32 in a lane), one FMA with d_w*d_a per super-block.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include "kernels/kernels.h"
#include "kernels/tiling.h"
#include "kernels/x86/avx2_helpers.h"
#include "quant/blocks.h"

namespace pyllm {

namespace {

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// The same address, opaque to the compiler: a second pass over runs loads them again instead of
// GCC keeping the first pass's loads alive (and spilling them).
inline const uint8_t* reload_ptr(const uint8_t* p) {
    __asm__("" : "+r"(p));
    return p;
}

// The grid in both lanes, for pshufb (which looks up within each 128-bit lane).
inline __m256i grid() { return _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kvalues_iq4nl))); }

// 16 bytes of packed indices -> the 32 grid values of those elements, in element order.
inline __m256i lookup32(const __m256i table, const uint8_t* qs) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1);
    return _mm256_shuffle_epi8(table, _mm256_and_si256(both, _mm256_set1_epi8(0x0f)));
}

// sum of w*y over 32 signed bytes as 16 int16 pairs; w_abs = |w|.
inline __m256i dot_pairs(const __m256i w, const __m256i w_abs, const __m256i y) {
    return _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(y, w));
}

// --- GEMM micro-kernels -----------------------------------------------------------------------------

struct IQ4_NLMK {
    static constexpr int kRows = 4, kToks = 2, kDecodeRows = 4;
    static constexpr size_t kChunkBytes = kChunkL1;

    template <int R, int T>
    static void tile(const GemmArgs& g, int64_t r0, int64_t t0) {
        const int64_t nb = g.k / QK4_NL;
        const block_iq4_nl* w[R];
        const block_q8_0* a[T];
        for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const block_iq4_nl*>(g.w + (r0 + r) * g.w_stride);
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const block_q8_0*>(g.a + (t0 + t) * g.a_stride);
        const __m256i table = grid(), ones16 = _mm256_set1_epi16(1);
        __m256 acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
        int64_t i = 0;
        do {  // nb >= 1 (see avx2.cpp's QuantMK for why not a for loop)
            __m256i y[T];
            __m256 ad[T];
            for (int t = 0; t < T; ++t) {
                y[t] = load32(a[t][i].qs);
                ad[t] = _mm256_set1_ps(half_to_f32(a[t][i].d));
            }
            for (int r = 0; r < R; ++r) {
                const __m256i q = lookup32(table, w[r][i].qs);
                const __m256i q_abs = _mm256_sign_epi8(q, q);
                const __m256 wd = _mm256_set1_ps(half_to_f32(w[r][i].d));
                for (int t = 0; t < T; ++t) {
                    const __m256i p = _mm256_madd_epi16(dot_pairs(q, q_abs, y[t]), ones16);
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(wd, ad[t]), acc[r][t]);
                }
            }
            ++i;
        } while (i < nb);
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) g.out[(t0 + t) * g.out_stride + r0 + r] = hsum(acc[r][t]);
    }
};

struct IQ4_XSMK {
    static constexpr int kRows = 1, kToks = 4, kDecodeRows = 2;
    static constexpr size_t kChunkBytes = kChunkL1;

    template <int R, int T>
    static void tile(const GemmArgs& g, int64_t r0, int64_t t0) {
        const int64_t nb = g.k / QK_K;
        const block_iq4_xs* w[R];
        const block_q8_K* a[T];
        for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const block_iq4_xs*>(g.w + (r0 + r) * g.w_stride);
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const block_q8_K*>(g.a + (t0 + t) * g.a_stride);
        const __m256i table = grid();
        __m256 acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
        int64_t i = 0;
        do {  // nb >= 1
            for (int r = 0; r < R; ++r) {
                const block_iq4_xs& b = w[r][i];
                __m256i isum[T];
                for (int t = 0; t < T; ++t) isum[t] = _mm256_setzero_si256();
                for (int ib = 0; ib < QK_K / 32; ++ib) {
                    const __m256i q = lookup32(table, b.qs + 16 * ib);
                    const __m256i q_abs = _mm256_sign_epi8(q, q);
                    const __m256i sc = _mm256_set1_epi16((int16_t)(iq4_xs_scale(b, ib) - 32));
                    for (int t = 0; t < T; ++t)
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(dot_pairs(q, q_abs, load32(a[t][i].qs + 32 * ib)), sc));
                }
                const float d = half_to_f32(b.d);
                for (int t = 0; t < T; ++t)
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * a[t][i].d), acc[r][t]);
            }
            ++i;
        } while (i < nb);
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) g.out[(t0 + t) * g.out_stride + r0 + r] = hsum(acc[r][t]);
    }
};

// IQ4_NL over the x8 layout (kernels.h; Q4_0's bytes): a 32-byte run is 4 bytes of each of 8
// rows, its low nibbles elements 4c..4c+3 and high nibbles 16+4c..; the grid lookup makes them
// signed values, multiplied as |w| . sign(y, w) with the broadcast activation bytes, so int32
// lane L is row L's dot. One FMA per block column with the 8 rows' scales.
struct IQ4_NLX8 {
    static constexpr int kToks = 4;
    static constexpr int kColBytes = 16 + 128;
    static constexpr size_t kActBlockBytes = sizeof(block_q8_0);

    static void prepare(const uint8_t* a_blocks, int64_t nb, X8Act* pre) {
        const block_q8_0* a = reinterpret_cast<const block_q8_0*>(a_blocks);
        for (int64_t i = 0; i < nb; ++i) pre[i].d = half_to_f32(a[i].d);
    }

    static __m256i bcast4(const int8_t* p) {
        int32_t v;
        __builtin_memcpy(&v, p, 4);
        return _mm256_set1_epi32(v);
    }

    template <int T>
    __attribute__((noinline)) static void tile(const uint8_t* w, int64_t nb, const uint8_t* const* a_rows, const X8Act* pre, int64_t pre_stride,
                     float* out, int64_t out_stride, bool add) {
        const block_q8_0* a[T];
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const block_q8_0*>(a_rows[t]);
        const __m256i table = grid(), low4 = _mm256_set1_epi8(0x0f), ones16 = _mm256_set1_epi16(1);
        __m256 acc[T];
        for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
        int64_t i = 0;
        do {  // nb >= 1
            const uint8_t* col = w + i * kColBytes;
            __m256i isum[T];
            for (int t = 0; t < T; ++t) isum[t] = _mm256_setzero_si256();
            // At T > 1, one nibble per pass (the second loads the runs again, from L1), so one
            // value and its |value| are live beside the T sums, and the sums are pinned
            // (avx2_helpers.h): with both nibbles' four vectors, isum and acc, GCC 12 spilled ~130
            // ymm values per tile at T = 4 (now 4-64 tokens ~88 -> ~97 GFLOP/s on a Zen 3 core).
            // T = 1 has the registers for both, reading runs once. (kToks = 8 measured ~5% more,
            // but halves tiling.h's block chunk, kPre / kToks: k > 8192 would sum in another order.)
            constexpr int kNibs = T == 1 ? 2 : 1;
            for (int n0 = 0; n0 < 2; n0 += kNibs) {
                const uint8_t* runs = reload_ptr(col + 16);
                for (int c = 0; c < 4; ++c) {
                    const __m256i raw = load32(runs + 32 * c);
                    for (int n = 0; n < kNibs; ++n) {
                        const int nib = n0 + n;
                        const __m256i q = _mm256_shuffle_epi8(table, _mm256_and_si256(nib ? _mm256_srli_epi16(raw, 4) : raw, low4));
                        const __m256i q_abs = _mm256_sign_epi8(q, q);
                        for (int t = 0; t < T; ++t) {
                            const __m256i y = bcast4(a[t][i].qs + 16 * nib + 4 * c);
                            isum[t] = pinned(_mm256_add_epi32(isum[t], _mm256_madd_epi16(dot_pairs(q, q_abs, y), ones16)));
                        }
                    }
                }
            }
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(col)));
            for (int t = 0; t < T; ++t)
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(dw, _mm256_set1_ps(pre[t * pre_stride + i].d)), acc[t]);
        } while (++i < nb);
        for (int t = 0; t < T; ++t) {
            float* o = out + t * out_stride;
            _mm256_storeu_ps(o, add ? _mm256_add_ps(_mm256_loadu_ps(o), acc[t]) : acc[t]);
        }
    }
};

// --- dequantizers: d times the grid value, one rounded multiply as the reference ----------------------

inline void store_scaled32(const __m256i q, float d, float* y) {
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    const __m256 vd = _mm256_set1_ps(d);
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(y + 8 * j, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[j])), vd));
}

void to_float_iq4_nl_avx2(const void* src, float* y, int64_t n) {
    const block_iq4_nl* x = static_cast<const block_iq4_nl*>(src);
    const __m256i table = grid();
    for (int64_t i = 0; i < n / QK4_NL; ++i, y += QK4_NL) store_scaled32(lookup32(table, x[i].qs), half_to_f32(x[i].d), y);
}

void to_float_iq4_xs_avx2(const void* src, float* y, int64_t n) {
    const block_iq4_xs* x = static_cast<const block_iq4_xs*>(src);
    const __m256i table = grid();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = half_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib, y += 32)
            store_scaled32(lookup32(table, x[i].qs + 16 * ib), d * (iq4_xs_scale(x[i], ib) - 32), y);
    }
}

} // namespace

void register_iquant_avx2_kernels(KernelTable& t) {
    t.gemm[TYPE_IQ4_NL] = gemm_tiled<IQ4_NLMK>;
    t.gemm[TYPE_IQ4_XS] = gemm_tiled<IQ4_XSMK>;
    t.to_float[TYPE_IQ4_NL] = to_float_iq4_nl_avx2;
    t.to_float[TYPE_IQ4_XS] = to_float_iq4_xs_avx2;
    t.gemm_x8[TYPE_IQ4_NL] = gemm_x8_tiled<IQ4_NLX8>;
    t.repack_x8[TYPE_IQ4_NL] = kernel_table_ref()->repack_x8[TYPE_IQ4_NL];
}

} // namespace pyllm

#else  // not x86: nothing to register

#include "kernels/kernels.h"
namespace pyllm {
void register_iquant_avx2_kernels(KernelTable&) {}
} // namespace pyllm

#endif
