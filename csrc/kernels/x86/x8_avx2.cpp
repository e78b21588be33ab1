// AVX2 (+FMA, F16C) GEMM over the x8 layout (kernels.h) for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: one 32-byte
// load is a 4-byte run of 8 rows, the activation's matching 4 bytes are broadcast, and maddubs
// + madd leave row L's partial dot in int32 lane L. So 8 lanes = 8 outputs: no horizontal sums,
// and a block column's 8 scales convert with one vcvtph2ps. Prefill tiles 8 rows x 4 tokens;
// each unpacked weight run feeds all 4. Compiled with AVX2 flags; only the registrar is external.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "kernels/kernels.h"
#include "kernels/tiling.h"
#include "kernels/x86/avx2_helpers.h"
#include "quant/blocks.h"

namespace pyllm {

namespace {

inline __m256i bcast4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
inline __m256 load8_halves(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// Sum of a Q8 block's 32 quants.
inline int block_sum(const int8_t* qs) {
    const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs));
    return hsum_i32(_mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), y), _mm256_set1_epi16(1)));
}

// Q5's fifth bits for a run's low (mask 0) and high (mask 1) nibbles, two u32 k-masks (kernels.h):
// byte j of the result is 0x10 where bit j of its mask is set.
inline void fifth_bits(const uint8_t* masks, __m256i* lo, __m256i* hi) {
    int64_t both;
    std::memcpy(&both, masks, 8);
    const __m256i v = _mm256_set1_epi64x(both);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull), x10 = _mm256_set1_epi8(0x10);
    // Byte j gets mask byte j/8: bytes 0..3 of the qword for the low mask, 4..7 for the high one.
    const __m256i spread_lo = _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                                      2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i spread_hi = _mm256_shuffle_epi8(v, _mm256_setr_epi8(4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5,
                                                                      6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7));
    *lo = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread_lo, bit), bit), x10);
    *hi = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread_hi, bit), bit), x10);
}

// Q4_0, Q4_1, Q5_0 and Q5_1: run c of a row holds qs[4c..4c+3]; its low nibbles are elements
// 4c..4c+3 and its high nibbles 16+4c..16+4c+3 (Q5: plus 16 where the fifth bit is set). Q4
// maddubs pairs stay within 2*15*128, so the 8 pair vectors of a block column add up in int16
// (<= 30720) before one madd widens them; Q5 pairs reach 2*31*128, so 4 at a time (<= 31744).
// Q4_0/Q5_0 compute dot(q, y) - offset*sum(y) (offset 8/16); the second term (X8Act::corr)
// comes from prepare().
template <bool kHasMin, bool kQ5>
struct QX8 {
    using A = std::conditional_t<kHasMin, block_q8_1, block_q8_0>;
    static constexpr int kToks = 4;
    static constexpr int kMasks = kHasMin ? 32 : 16;            // the fifth-bit masks (Q5)
    static constexpr int kQuants = kMasks + (kQ5 ? 32 : 0);      // the runs
    static constexpr int kColBytes = kQuants + 128;
    static constexpr int kOffset = kHasMin ? 0 : (kQ5 ? 16 : 8);
    static constexpr size_t kActBlockBytes = sizeof(A);
    static constexpr int kPrefetchCols = 1024 / kColBytes + 1;

    static void prepare(const uint8_t* a_blocks, int64_t nb, X8Act* pre) {
        const A* a = reinterpret_cast<const A*>(a_blocks);
        for (int64_t i = 0; i < nb; ++i) {
            pre[i].d = half_to_f32(a[i].d);
            if constexpr (kHasMin) pre[i].s = half_to_f32(a[i].s);
            else pre[i].corr = kOffset * block_sum(a[i].qs);
        }
    }

    template <int T>
    static void tile(const uint8_t* w, int64_t nb, const uint8_t* const* a_rows, const X8Act* pre, int64_t pre_stride,
                     float* out, int64_t out_stride, bool add) {
        const A* a[T];
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const A*>(a_rows[t]);
        const __m256i low4 = _mm256_set1_epi8(0x0f), ones16 = _mm256_set1_epi16(1);
        __m256 acc[T];
        for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
        int64_t i = 0;
        do {  // nb >= 1
            const uint8_t* col = w + i * kColBytes;
            // The column ~1 KiB ahead: as the K-quant x8 kernels (kquants_x8_avx2.cpp), decode from DRAM
            // streamed 1.6x faster with it (Q4_0, 4096x4096, one Zen 3 core).
            for (int off = 0; off < kColBytes; off += 64)
                _mm_prefetch(reinterpret_cast<const char*>(col + kPrefetchCols * kColBytes + off), _MM_HINT_T0);
            __m256i pairs[T], isum[T];
            for (int t = 0; t < T; ++t) pairs[t] = isum[t] = _mm256_setzero_si256();
            for (int c = 0; c < 4; ++c) {
                const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + kQuants + 32 * c));
                __m256i lo = _mm256_and_si256(raw, low4);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
                if constexpr (kQ5) {
                    __m256i lo5, hi5;
                    fifth_bits(col + kMasks + 8 * c, &lo5, &hi5);
                    lo = _mm256_or_si256(lo, lo5);
                    hi = _mm256_or_si256(hi, hi5);
                }
                for (int t = 0; t < T; ++t) {
                    pairs[t] = _mm256_add_epi16(pairs[t], _mm256_maddubs_epi16(lo, bcast4(a[t][i].qs + 4 * c)));
                    pairs[t] = pinned(_mm256_add_epi16(pairs[t], _mm256_maddubs_epi16(hi, bcast4(a[t][i].qs + 16 + 4 * c))));
                }
                if (kQ5 && c == 1)
                    for (int t = 0; t < T; ++t) {
                        isum[t] = pinned(_mm256_madd_epi16(pairs[t], ones16));
                        pairs[t] = _mm256_setzero_si256();
                    }
            }
            const __m256 dw = load8_halves(col);
            for (int t = 0; t < T; ++t) {
                const X8Act& p = pre[t * pre_stride + i];
                isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(pairs[t], ones16));
                if constexpr (!kHasMin) isum[t] = _mm256_sub_epi32(isum[t], _mm256_set1_epi32(p.corr));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(dw, _mm256_set1_ps(p.d)), acc[t]);
            }
            if constexpr (kHasMin) {
                const __m256 mw = load8_halves(col + 16);
                for (int t = 0; t < T; ++t) acc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(pre[t * pre_stride + i].s), acc[t]);
            }
        } while (++i < nb);
        for (int t = 0; t < T; ++t) {
            float* o = out + t * out_stride;
            _mm256_storeu_ps(o, add ? _mm256_add_ps(_mm256_loadu_ps(o), acc[t]) : acc[t]);
        }
    }
};

// Q8_0: signed weights times signed activations, as |w| . sign(y, w) (maddubs wants one unsigned
// side). Pairs reach 2*128*127, so every run is widened by madd before it is summed.
struct Q8X8 {
    using A = block_q8_0;
    static constexpr int kToks = 4;
    static constexpr int kColBytes = 272;
    static constexpr int kPrefetchCols = 1024 / kColBytes + 1;
    static constexpr size_t kActBlockBytes = sizeof(A);

    static void prepare(const uint8_t* a_blocks, int64_t nb, X8Act* pre) {
        const A* a = reinterpret_cast<const A*>(a_blocks);
        for (int64_t i = 0; i < nb; ++i) pre[i].d = half_to_f32(a[i].d);
    }

    template <int T>
    static void tile(const uint8_t* w, int64_t nb, const uint8_t* const* a_rows, const X8Act* pre, int64_t pre_stride,
                     float* out, int64_t out_stride, bool add) {
        const A* a[T];
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const A*>(a_rows[t]);
        const __m256i ones16 = _mm256_set1_epi16(1);
        __m256 acc[T];
        for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
        int64_t i = 0;
        do {
            const uint8_t* col = w + i * kColBytes;
            for (int off = 0; off < kColBytes; off += 64)
                _mm_prefetch(reinterpret_cast<const char*>(col + kPrefetchCols * kColBytes + off), _MM_HINT_T0);
            __m256i isum[T];
            for (int t = 0; t < T; ++t) isum[t] = _mm256_setzero_si256();
            for (int c = 0; c < 8; ++c) {
                const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + 16 + 32 * c));
                const __m256i q_abs = _mm256_sign_epi8(q, q);
                for (int t = 0; t < T; ++t) {
                    const __m256i p = _mm256_maddubs_epi16(q_abs, _mm256_sign_epi8(bcast4(a[t][i].qs + 4 * c), q));
                    isum[t] = pinned(_mm256_add_epi32(isum[t], _mm256_madd_epi16(p, ones16)));
                }
            }
            const __m256 dw = load8_halves(col);
            for (int t = 0; t < T; ++t)
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(dw, _mm256_set1_ps(pre[t * pre_stride + i].d)), acc[t]);
        } while (++i < nb);
        for (int t = 0; t < T; ++t) {
            float* o = out + t * out_stride;
            _mm256_storeu_ps(o, add ? _mm256_add_ps(_mm256_loadu_ps(o), acc[t]) : acc[t]);
        }
    }
};

} // namespace

void register_x8_avx2_kernels(KernelTable& t) {
    const KernelTable& ref = *kernel_table_ref();
    t.gemm_x8[TYPE_Q4_0] = gemm_x8_tiled<QX8<false, false>>;
    t.gemm_x8[TYPE_Q4_1] = gemm_x8_tiled<QX8<true, false>>;
    t.gemm_x8[TYPE_Q5_0] = gemm_x8_tiled<QX8<false, true>>;
    t.gemm_x8[TYPE_Q5_1] = gemm_x8_tiled<QX8<true, true>>;
    t.gemm_x8[TYPE_Q8_0] = gemm_x8_tiled<Q8X8>;
    for (Type type : {TYPE_Q4_0, TYPE_Q4_1, TYPE_Q5_0, TYPE_Q5_1, TYPE_Q8_0}) t.repack_x8[type] = ref.repack_x8[type];
}

} // namespace pyllm

#endif
