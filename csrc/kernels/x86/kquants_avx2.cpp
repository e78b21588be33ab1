// AVX2 K-quant kernels: GEMM of Q2_K..Q6_K weights against Q8_K activations, and the Q8_K
// activation quantizer (byte-identical to quantize_row_q8_K). Compiled with the AVX2 flags.
// The integer formulation is in kquant_scales.h.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "kernels/kernels.h"
#include "kernels/x86/avx2_helpers.h"
#include "kernels/tiling.h"
#include "kernels/x86/kquant_scales.h"  // per-type unpacking (AVX2)
#include "quant/blocks.h"

namespace pyllm {

namespace {

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// --- Q8_K activation quantizer ---------------------------------------------------------------------

void quantize_row_q8_K_avx2(const float* x, void* dst, int64_t n) {
    block_q8_K* y = static_cast<block_q8_K*>(dst);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < QK_K; j += 8) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + j), abs_mask), m);  // skips NaN
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_movehdup_ps(s));
        const float amax = _mm_cvtss_f32(s);
        if (!(amax > 0.0f)) {
            std::memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        // The reference keeps the signed value of the first element of largest magnitude.
        const __m256 vamax = _mm256_set1_ps(amax);
        float max = 0.0f;
        for (int j = 0; j < QK_K; j += 8) {
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + j), abs_mask), vamax, _CMP_EQ_OQ));
            if (hit) { max = x[j + __builtin_ctz((unsigned)hit)]; break; }
        }
        const float iscale = -127.0f / max;
        const __m256 vis = _mm256_set1_ps(iscale);
        // The reference rounds with the 1.5*2^23 trick: nearest, ties to even, as cvtps2dq does.
        for (int j = 0; j < QK_K; j += 32) {
            __m256i q[4];
            for (int l = 0; l < 4; ++l)
                q[l] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8 * l), vis)), _mm256_set1_epi32(127));
            y[i].bsums[j / 16] = (int16_t)hsum_i32(_mm256_add_epi32(q[0], q[1]));
            y[i].bsums[j / 16 + 1] = (int16_t)hsum_i32(_mm256_add_epi32(q[2], q[3]));
            const __m256i q01 = _mm256_packs_epi32(q[0], q[1]), q23 = _mm256_packs_epi32(q[2], q[3]);
            const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q01, q23), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[i].qs + j), bytes);
        }
        y[i].d = 1 / iscale;
    }
}

// Byte shuffles picking, from a lane of 8 int16 group scales, group 2c' into every word of the low
// lane and group 2c'+1 into every word of the high lane (c' = chunk % 4).
alignas(32) const int8_t kChunkScaleShuffle[4][32] = {
    {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3},
    {4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7},
    {8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11},
    {12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15},
};

// --- GEMM micro-kernel -----------------------------------------------------------------------------
//
// One weight super-block is unpacked chunk by chunk and each chunk feeds T tokens: maddubs
// (unsigned quants x int8 activations -> int16 pairs, at most 2*63*127), madd with the two groups'
// scales -> int32 lanes. The bsums correction is one madd per super-block and token.

template <class KT>
struct KQuantMK {
    using W = typename KT::W;
    static constexpr int kRows = 1, kToks = 4, kDecodeRows = 2;
    static constexpr size_t kChunkBytes = kChunkL1;
    // The running sums pinned in registers (avx2_helpers.h: GCC reassociates the adds and spills):
    // Q2_K at 4-64 tokens 92 -> 106 GFLOP/s (2048x2048, one Zen 3 core), Q5_K unchanged, but
    // Q3_K, whose unpacking needs more registers, 59 -> 45, so not there.
    static constexpr bool kPinSums = !std::is_same_v<KT, Q3_KBase>;

    template <int R, int T>
    static void tile(const GemmArgs& g, int64_t r0, int64_t t0) {
        const int64_t nb = g.k / QK_K;
        const W* w[R];
        const block_q8_K* a[T];
        for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const W*>(g.w + (r0 + r) * g.w_stride);
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const block_q8_K*>(g.a + (t0 + t) * g.a_stride);
        __m256 acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
        int64_t i = 0;
        do {  // nb >= 1
            for (int r = 0; r < R; ++r) {
                const W& b = w[r][i];
                __m256i sc, coef;
                KT::scales(b, sc, coef);
                const __m256i sc_lanes[2] = {_mm256_permute2x128_si256(sc, sc, 0x00), _mm256_permute2x128_si256(sc, sc, 0x11)};
                __m256i isum[T];
                for (int t = 0; t < T; ++t) isum[t] = _mm256_setzero_si256();
                for (int c = 0; c < 8; ++c) {
                    const __m256i q = KT::chunk(b, c);
                    const __m256i scv = _mm256_shuffle_epi8(sc_lanes[c / 4], _mm256_load_si256(reinterpret_cast<const __m256i*>(kChunkScaleShuffle[c % 4])));
                    for (int t = 0; t < T; ++t) {
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q, load32(a[t][i].qs + 32 * c)), scv));
                        if constexpr (kPinSums) isum[t] = pinned(isum[t]);
                    }
                }
                const float d = KT::d(b);
                for (int t = 0; t < T; ++t) {
                    const __m256i corr = _mm256_madd_epi16(load32(a[t][i].bsums), coef);
                    const float dy = a[t][i].d;
                    if constexpr (KT::kHasMin) {
                        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * dy), acc[r][t]);
                        acc[r][t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(corr), _mm256_set1_ps(KT::dmin(b) * dy), acc[r][t]);
                    } else {
                        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum[t], corr)), _mm256_set1_ps(d * dy), acc[r][t]);
                    }
                }
            }
            ++i;
        } while (i < nb);
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) g.out[(t0 + t) * g.out_stride + r0 + r] = hsum(acc[r][t]);
    }
};

} // namespace

void register_kquant_avx2_kernels(KernelTable& t) {
    t.gemm[TYPE_Q2_K] = gemm_tiled<KQuantMK<Q2_KBase>>;
    t.gemm[TYPE_Q3_K] = gemm_tiled<KQuantMK<Q3_KBase>>;
    t.gemm[TYPE_Q4_K] = gemm_tiled<KQuantMK<Q4_KBase>>;
    t.gemm[TYPE_Q5_K] = gemm_tiled<KQuantMK<Q5_KBase>>;
    t.gemm[TYPE_Q6_K] = gemm_tiled<KQuantMK<Q6_KBase>>;
    t.quantize_act[TYPE_Q8_K] = quantize_row_q8_K_avx2;
}

} // namespace pyllm

#else  // not x86: nothing to register

#include "kernels/kernels.h"
namespace pyllm {
void register_kquant_avx2_kernels(KernelTable&) {}
} // namespace pyllm

#endif
