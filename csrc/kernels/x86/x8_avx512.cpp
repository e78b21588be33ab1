// AVX-512 VNNI GEMM over the x8 layout (kernels.h) for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0. The same scheme as
// x8_avx2.cpp (a 32-byte run of 8 rows times 4 broadcast activation bytes; lane L = row L), with
// one 256-bit dpbusd per run instead of maddubs + madd: 256-bit because a run is 32 bytes, and
// Zen 4 splits 512-bit operations in two anyway. dpbusd takes unsigned weights, so Q8_0 runs are
// flipped to w + 128 (xor 0x80), and unsigned weights q (Q4_0: q - 8 is the value, Q5_0: q - 16)
// give dot(q, y) - offset*sum(y): each block's integer sum starts from -X8Act::corr. Q5's fifth
// bits are stored as the k-masks of the runs' bytes, so they cost one masked add of 16 per
// nibble vector. Prefill tiles 8 rows x 4 tokens. Only the registrar has external linkage.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "kernels/kernels.h"
#include "kernels/tiling.h"
#include "quant/blocks.h"

namespace pyllm {

namespace {

inline float half_to_f32(uint16_t h) { return _cvtsh_ss(h); }
inline __m256i bcast4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
inline __m256 load8_halves(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// offset * (sum of a Q8 block's 32 quants), by dpbusd of the offset bytes.
inline int32_t offset_sum(const int8_t* qs, int offset) {
    const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs));
    const __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)offset), y);
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(h);
}

// 4-byte runs per row and block: Q4/Q5 4, each run twice (low and high nibbles); Q8_0 8.
// Two integer accumulators per token halve the dpbusd dependency chain.
template <Type kType>
struct X8Vnni {
    static constexpr bool kQ8 = kType == TYPE_Q8_0, kHasMin = kType == TYPE_Q4_1 || kType == TYPE_Q5_1;
    static constexpr bool kQ5 = kType == TYPE_Q5_0 || kType == TYPE_Q5_1;
    using A = std::conditional_t<kHasMin, block_q8_1, block_q8_0>;
    static constexpr int kToks = 4;
    static constexpr int kMasks = kHasMin ? 32 : 16;             // the fifth-bit masks (Q5)
    static constexpr int kQuants = kMasks + (kQ5 ? 32 : 0);       // the runs
    static constexpr int kColBytes = kQ8 ? 272 : kQuants + 128;
    static constexpr int kPrefetchCols = 1024 / kColBytes + 1;
    static constexpr int kOffset = kQ8 ? 128 : (kHasMin ? 0 : (kQ5 ? 16 : 8));
    static constexpr size_t kActBlockBytes = sizeof(A);

    static void prepare(const uint8_t* a_blocks, int64_t nb, X8Act* pre) {
        const A* a = reinterpret_cast<const A*>(a_blocks);
        for (int64_t i = 0; i < nb; ++i) {
            pre[i].d = half_to_f32(a[i].d);
            if constexpr (kHasMin) pre[i].s = half_to_f32(a[i].s);
            else pre[i].corr = offset_sum(a[i].qs, kOffset);
        }
    }

    template <int T>
    static void tile(const uint8_t* w, int64_t nb, const uint8_t* const* a_rows, const X8Act* pre, int64_t pre_stride,
                     float* out, int64_t out_stride, bool add) {
        const A* a[T];
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const A*>(a_rows[t]);
        const __m256i low4 = _mm256_set1_epi8(0x0f), flip = _mm256_set1_epi8((char)0x80), fifth = _mm256_set1_epi8(0x10);
        __m256 acc[T];
        for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
        int64_t i = 0;
        do {  // nb >= 1
            const uint8_t* col = w + i * kColBytes;
            // The column ~1 KiB ahead, as the AVX2 x8 kernels (x8_avx2.cpp) measured.
            for (int off = 0; off < kColBytes; off += 64)
                _mm_prefetch(reinterpret_cast<const char*>(col + kPrefetchCols * kColBytes + off), _MM_HINT_T0);
            __m256i s0[T], s1[T];
            for (int t = 0; t < T; ++t) {
                s0[t] = kOffset ? _mm256_set1_epi32(-pre[t * pre_stride + i].corr) : _mm256_setzero_si256();
                s1[t] = _mm256_setzero_si256();
            }
            if constexpr (kQ8) {
                for (int c = 0; c < 8; c += 2) {
                    const __m256i q0 = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + 16 + 32 * c)), flip);
                    const __m256i q1 = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + 48 + 32 * c)), flip);
                    for (int t = 0; t < T; ++t) {
                        s0[t] = _mm256_dpbusd_epi32(s0[t], q0, bcast4(a[t][i].qs + 4 * c));
                        s1[t] = _mm256_dpbusd_epi32(s1[t], q1, bcast4(a[t][i].qs + 4 * c + 4));
                    }
                }
            } else {
                for (int c = 0; c < 4; ++c) {
                    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + kQuants + 32 * c));
                    __m256i lo = _mm256_and_si256(raw, low4);
                    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
                    if constexpr (kQ5) {
                        uint32_t m_lo, m_hi;  // two loads: one 8-byte load costs a kshift
                        std::memcpy(&m_lo, col + kMasks + 8 * c, 4);
                        std::memcpy(&m_hi, col + kMasks + 8 * c + 4, 4);
                        lo = _mm256_mask_add_epi8(lo, _cvtu32_mask32(m_lo), lo, fifth);
                        hi = _mm256_mask_add_epi8(hi, _cvtu32_mask32(m_hi), hi, fifth);
                    }
                    for (int t = 0; t < T; ++t) {
                        s0[t] = _mm256_dpbusd_epi32(s0[t], lo, bcast4(a[t][i].qs + 4 * c));
                        s1[t] = _mm256_dpbusd_epi32(s1[t], hi, bcast4(a[t][i].qs + 16 + 4 * c));
                    }
                }
            }
            const __m256 dw = load8_halves(col);
            for (int t = 0; t < T; ++t) {
                const __m256i isum = _mm256_add_epi32(s0[t], s1[t]);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, _mm256_set1_ps(pre[t * pre_stride + i].d)), acc[t]);
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

} // namespace

void register_x8_avx512_kernels(KernelTable& t) {
    const KernelTable& ref = *kernel_table_ref();
    t.gemm_x8[TYPE_Q4_0] = gemm_x8_tiled<X8Vnni<TYPE_Q4_0>>;
    t.gemm_x8[TYPE_Q4_1] = gemm_x8_tiled<X8Vnni<TYPE_Q4_1>>;
    t.gemm_x8[TYPE_Q5_0] = gemm_x8_tiled<X8Vnni<TYPE_Q5_0>>;
    t.gemm_x8[TYPE_Q5_1] = gemm_x8_tiled<X8Vnni<TYPE_Q5_1>>;
    t.gemm_x8[TYPE_Q8_0] = gemm_x8_tiled<X8Vnni<TYPE_Q8_0>>;
    for (Type type : {TYPE_Q4_0, TYPE_Q4_1, TYPE_Q5_0, TYPE_Q5_1, TYPE_Q8_0}) t.repack_x8[type] = ref.repack_x8[type];
}

} // namespace pyllm

#endif
