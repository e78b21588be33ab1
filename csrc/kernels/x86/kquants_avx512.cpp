// AVX-512 (BW, VNNI) K-quant kernels: GEMM of Q2_K..Q6_K weights against Q8_K activations, 64
// elements per register, vpdpwssd fusing the scale multiply with the accumulation. The Q8_K
// quantizer comes from the AVX2 table. The integer formulation is in kquant_scales.h.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include "kernels/kernels.h"
#include "kernels/tiling.h"
#include "kernels/x86/kquant_scales.h"  // scales and the 256-bit unpacking (AVX2 subset)
#include "quant/blocks.h"

namespace pyllm {

namespace {


inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m512i load64(const void* p) { return _mm512_loadu_si512(p); }

// [lo, hi] -> one register.
inline __m512i join(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }

// Two 32-byte chunks of `bytes`: (bytes >> s0) & mask and (bytes >> s1) & mask.
inline __m512i bits_pair(__m256i bytes, int s0, int s1, char mask) {
    return _mm512_and_si512(join(_mm256_srli_epi16(bytes, s0), _mm256_srli_epi16(bytes, s1)), _mm512_set1_epi8(mask));
}

// `value` in byte j (< 32) where bit b0 of bits[j] is set, and in byte 32+j where bit b1 is.
inline __m512i bit_pair_to_bytes(__m256i bits, int b0, int b1, char value) {
    const __mmask32 lo = _mm256_test_epi8_mask(bits, _mm256_set1_epi8((char)(1 << b0)));
    const __mmask32 hi = _mm256_test_epi8_mask(bits, _mm256_set1_epi8((char)(1 << b1)));
    return _mm512_maskz_mov_epi8(((__mmask64)hi << 32) | lo, _mm512_set1_epi8(value));
}

// --- per-type unpacking: pair p (0..3) = the 64 unsigned quants of elements 64p..64p+63 ------------

struct Q2_KWeights : Q2_KBase {
    static __m512i pair(const W& b, int p) { return bits_pair(load32(b.qs + 32 * (p / 2)), 4 * (p % 2), 4 * (p % 2) + 2, 3); }
};
struct Q3_KWeights : Q3_KBase {
    static __m512i pair(const W& b, int p) {
        return _mm512_or_si512(bits_pair(load32(b.qs + 32 * (p / 2)), 4 * (p % 2), 4 * (p % 2) + 2, 3),
                               bit_pair_to_bytes(load32(b.hmask), 2 * p, 2 * p + 1, 4));
    }
};
struct Q4_KWeights : Q4_KBase {
    static __m512i pair(const W& b, int p) { return bits_pair(load32(b.qs + 32 * p), 0, 4, 0xF); }
};
struct Q5_KWeights : Q5_KBase {
    static __m512i pair(const W& b, int p) {
        return _mm512_or_si512(bits_pair(load32(b.qs + 32 * p), 0, 4, 0xF), bit_pair_to_bytes(load32(b.qh), 2 * p, 2 * p + 1, 0x10));
    }
};
struct Q6_KWeights : Q6_KBase {
    // Half h = p/2 of 128 elements: pair 0 is the low nibbles of ql[64h..64h+63] with qh bits 0-1 and
    // 2-3, pair 1 their high nibbles with qh bits 4-5 and 6-7.
    static __m512i pair(const W& b, int p) {
        const int h = p / 2, w = p % 2;
        const __m512i low = _mm512_and_si512(_mm512_srli_epi16(load64(b.ql + 64 * h), 4 * w), _mm512_set1_epi8(0xF));
        const __m512i high = _mm512_slli_epi16(bits_pair(load32(b.qh + 32 * h), 4 * w, 4 * w + 2, 3), 4);
        return _mm512_or_si512(low, high);
    }
};

// --- GEMM micro-kernel -----------------------------------------------------------------------------

// Word lanes 0-7, 8-15, 16-23, 24-31 of pair p take the scales of groups 4p .. 4p+3.
alignas(64) const int16_t kGroupOfLane[32] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                               2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};

template <class KT>
struct KQuantMK {
    using W = typename KT::W;
    static constexpr int kRows = 2, kToks = 4, kDecodeRows = 2;
    static constexpr size_t kChunkBytes = kChunkL1;

    template <int R, int T>
    static void tile(const GemmArgs& g, int64_t r0, int64_t t0) {
        const int64_t nb = g.k / QK_K;
        const W* w[R];
        const block_q8_K* a[T];
        for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const W*>(g.w + (r0 + r) * g.w_stride);
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const block_q8_K*>(g.a + (t0 + t) * g.a_stride);
        const __m512i group_of_lane = _mm512_load_si512(kGroupOfLane);
        __m256 acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
        int64_t i = 0;
        do {  // nb >= 1
            for (int r = 0; r < R; ++r) {
                const W& b = w[r][i];
                __m256i sc, coef;
                KT::scales(b, sc, coef);
                const __m512i sc16 = _mm512_castsi256_si512(sc);
                __m512i isum[T];
                for (int t = 0; t < T; ++t) isum[t] = _mm512_setzero_si512();
                for (int p = 0; p < 4; ++p) {
                    const __m512i q = KT::pair(b, p);
                    const __m512i scv = _mm512_permutexvar_epi16(_mm512_add_epi16(group_of_lane, _mm512_set1_epi16((short)(4 * p))), sc16);
                    for (int t = 0; t < T; ++t)
                        isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(q, load64(a[t][i].qs + 64 * p)), scv);
                }
                const float d = KT::d(b);
                for (int t = 0; t < T; ++t) {
                    const __m256i sum8 = _mm256_add_epi32(_mm512_castsi512_si256(isum[t]), _mm512_extracti64x4_epi64(isum[t], 1));
                    const __m256i corr = _mm256_madd_epi16(load32(a[t][i].bsums), coef);
                    const float dy = a[t][i].d;
                    if constexpr (KT::kHasMin) {
                        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8), _mm256_set1_ps(d * dy), acc[r][t]);
                        acc[r][t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(corr), _mm256_set1_ps(KT::dmin(b) * dy), acc[r][t]);
                    } else {
                        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(sum8, corr)), _mm256_set1_ps(d * dy), acc[r][t]);
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

void register_kquant_avx512_kernels(KernelTable& t) {
    t.gemm[TYPE_Q2_K] = gemm_tiled<KQuantMK<Q2_KWeights>>;
    t.gemm[TYPE_Q3_K] = gemm_tiled<KQuantMK<Q3_KWeights>>;
    t.gemm[TYPE_Q4_K] = gemm_tiled<KQuantMK<Q4_KWeights>>;
    t.gemm[TYPE_Q5_K] = gemm_tiled<KQuantMK<Q5_KWeights>>;
    t.gemm[TYPE_Q6_K] = gemm_tiled<KQuantMK<Q6_KWeights>>;
}

} // namespace pyllm

#else  // not x86: nothing to register

#include "kernels/kernels.h"
namespace pyllm {
void register_kquant_avx512_kernels(KernelTable&) {}
} // namespace pyllm

#endif
