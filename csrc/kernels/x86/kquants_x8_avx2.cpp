// AVX2 (+FMA, F16C) GEMM over the x8 layout (kernels.h) of Q4_K, Q5_K and Q6_K against Q8_K
// activations. One 32-byte load is a 4-byte run of 8 rows; the activation's matching 4 bytes are
// broadcast, maddubs leaves row L's two int16 pair sums in words 2L, 2L+1, and a madd with the
// sub-block's scales (widened so words 2L, 2L+1 hold row L's scale) puts row L's scaled sum in
// int32 lane L: 8 lanes = 8 outputs, no horizontal sums. Decode walks the groups once (every
// weight byte read once); prefill tiles 8 rows x 8 tokens, each unpacked run feeding all 8.
// With one set of pair sums live per pass (below), 8 tokens fit the 16 ymm registers (isum goes
// to the stack once per pass, not per run): against 4 tokens, 5-64 tokens ran 10-30% faster on a
// Zen 3 core (64 tokens: Q4_K ~155 -> ~170, Q5_K ~113 -> ~137, Q6_K ~116 -> ~136 GFLOP/s).
// Tiles are noinline: each token count gets its own register allocation and its own line in a
// spill count (objdump), at the cost of one call per group, token tile and 8 super-blocks.
// The AVX-512 table uses these kernels too (an AVX-512 CPU runs AVX2; avx512.cpp). Compiled
// with the AVX2 flags; only the registrar is external.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <cstring>
#include <initializer_list>

#include "kernels/kernels.h"
#include "kernels/kx8_tiling.h"
#include "kernels/x86/avx2_helpers.h"
#include "quant/blocks.h"

namespace pyllm {

namespace {

inline __m256i ld32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m256i bcast4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
// Asks for the column kAhead columns on: a column's runs are read in three interleaved streams
// (Q6_K: low bits, high bits, scales), which the hardware prefetcher follows poorly once the
// matrix no longer fits the last-level cache (Q6_K decode streamed at ~5.5 GB/s from DRAM
// against Q8_0's 12.5 on a Zen 3 core).
template <int kCol>
inline void prefetch_column(const uint8_t* col) {
    constexpr int kAhead = 2;
    for (int off = 0; off < kCol; off += 64) _mm_prefetch(reinterpret_cast<const char*>(col + kAhead * kCol + off), _MM_HINT_T0);
}
// The same address, opaque to the compiler: a second pass over runs loads them again instead of
// GCC keeping the first pass's loads (and their shifts) alive, which spilled them to the stack.
inline const uint8_t* reload(const uint8_t* p) {
    __asm__("" : "+r"(p));
    return p;
}
inline __m256 load8_halves(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// Within each 16-byte lane of pair-order bytes (row L's sub-blocks 2p, 2p+1 at 2L, 2L+1): row L's
// even (kOdd = 0) or odd sub-block byte into both bytes 2L, 2L+1.
template <int kOdd>
inline __m256i dup_sub(__m256i pair_bytes) {
    const __m256i idx = _mm256_setr_epi8(kOdd, kOdd, 2 + kOdd, 2 + kOdd, 4 + kOdd, 4 + kOdd, 6 + kOdd, 6 + kOdd, 8 + kOdd,
                                         8 + kOdd, 10 + kOdd, 10 + kOdd, 12 + kOdd, 12 + kOdd, 14 + kOdd, 14 + kOdd,
                                         kOdd, kOdd, 2 + kOdd, 2 + kOdd, 4 + kOdd, 4 + kOdd, 6 + kOdd, 6 + kOdd, 8 + kOdd,
                                         8 + kOdd, 10 + kOdd, 10 + kOdd, 12 + kOdd, 12 + kOdd, 14 + kOdd, 14 + kOdd);
    return _mm256_shuffle_epi8(pair_bytes, idx);
}
inline __m128i lane(__m256i v, int hi) { return hi ? _mm256_extracti128_si256(v, 1) : _mm256_castsi256_si128(v); }

// Byte bit b of qh moved to bit 4 (0x10) of the same byte, in two steps: shr (a variable count,
// so a loop over b has no branch: GCC 12 kept the Q5 x8 tile's run loop rolled, with both shifts
// and a branch per run, when b picked the direction) then to_x10. 16-bit shifts; what leaks
// from the other byte is masked off: bit b of the high byte is word bit 8 + b, 8 + n after the
// right shift by b - n, 12 after the left shift.
inline __m256i shr16(__m256i bytes, int count) { return _mm256_srl_epi16(bytes, _mm_cvtsi32_si128(count)); }
template <int kN>  // bit kN (0 or 1) of each byte of shifted, moved to bit 4
inline __m256i to_x10(__m256i shifted) { return _mm256_and_si256(_mm256_slli_epi16(shifted, 4 - kN), _mm256_set1_epi8(0x10)); }

// Q4_K / Q5_K. Column: d[8] at 0, dmin[8] at 16, sm[64] at 32 (scale | min >> 4 << 6, pair order),
// ml[32] at 96 (the mins' low nibbles), Q5: qh runs at 128; qs runs at kQs. Q4 maddubs pairs are
// at most 2*15*127, so a sub-block's 8 runs add up in int16 (<= 30480) before the madd with its
// scales; Q5 pairs reach 2*31*127, so 4 runs at a time (<= 31496). The mins term is
// sum_j min(L, j) * bsum32_j by 4 madds of (j, j+1) pairs.
template <bool kQ5>
struct K45X8 {
    static constexpr int kCol = kQ5 ? 1408 : 1152, kQh = 128, kQs = kQ5 ? 384 : 128, kToks = 8;

    template <int T>
    __attribute__((noinline)) static void tile(const uint8_t* w, int64_t nb, const uint8_t* const* a_rows, float* out, int64_t out_stride, bool add) {
        const block_q8_K* a[T];
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const block_q8_K*>(a_rows[t]);
        const __m256i low4 = _mm256_set1_epi8(0x0f), low6 = _mm256_set1_epi8(63), x30 = _mm256_set1_epi8(0x30);
        const __m256i ones16 = _mm256_set1_epi16(1);
        __m256 acc[T];
        for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nb; ++i) {
            const uint8_t* col = w + i * kCol;
            prefetch_column<kCol>(col);
            const __m256i s01 = ld32(col + 32), s23 = ld32(col + 64), ml = ld32(col + 96);
            __m256i isum[T];
            for (int t = 0; t < T; ++t) isum[t] = _mm256_setzero_si256();
            for (int jj = 0; jj < 4; ++jj) {  // elements 64jj..64jj+63: sub-blocks 2jj (low nibbles), 2jj+1 (high)
                const __m256i sc = _mm256_and_si256(jj < 2 ? s01 : s23, low6);
                // At T > 1, one nibble per pass over the 8 runs (the high pass loads them again,
                // from L1), so only one set of T pair sums is live: with both, T = 4 needed acc,
                // isum, plo, phi (16 ymm) plus the constants and the run, and GCC 12 spilled ~170
                // ymm values per column. The sums are pinned (avx2_helpers.h) so the adds stay
                // chains. T = 1 (decode) has the registers for both nibbles and reads each run once.
                constexpr int kNibs = T == 1 ? 2 : 1;
                for (int n0 = 0; n0 < 2; n0 += kNibs) {
                    __m256i scv[kNibs], pr[kNibs][T];
                    for (int n = 0; n < kNibs; ++n) {
                        scv[n] = _mm256_cvtepu8_epi16(lane(n0 + n ? dup_sub<1>(sc) : dup_sub<0>(sc), jj & 1));
                        for (int t = 0; t < T; ++t) pr[n][t] = _mm256_setzero_si256();
                    }
                    const uint8_t* runs = reload(col + kQs + 256 * jj);
                    const uint8_t* qhs = reload(col + kQh);
#pragma GCC unroll 8
                    for (int r = 0; r < 8; ++r) {
                        const __m256i raw = ld32(runs + 32 * r);
                        // Q5: sub-block 2jj + nib's fifth bit is qh bit 2jj + nib: bit n after this.
                        const __m256i qh = kQ5 ? shr16(ld32(qhs + 32 * r), 2 * jj + n0) : raw;
                        for (int n = 0; n < kNibs; ++n) {
                            const int nib = n0 + n;
                            __m256i q = _mm256_and_si256(nib ? _mm256_srli_epi16(raw, 4) : raw, low4);
                            if constexpr (kQ5) q = _mm256_or_si256(q, n ? to_x10<1>(qh) : to_x10<0>(qh));
                            for (int t = 0; t < T; ++t) {
                                const __m256i y = bcast4(a[t][i].qs + 64 * jj + 32 * nib + 4 * r);
                                pr[n][t] = pinned(_mm256_add_epi16(pr[n][t], _mm256_maddubs_epi16(q, y)));
                            }
                        }
                        if (kQ5 ? (r & 3) == 3 : r == 7)
                            for (int n = 0; n < kNibs; ++n)
                                for (int t = 0; t < T; ++t) {
                                    isum[t] = pinned(_mm256_add_epi32(isum[t], _mm256_madd_epi16(pr[n][t], scv[n])));
                                    pr[n][t] = _mm256_setzero_si256();
                                }
                    }
                }
            }
            // The mins: 6 bits = low nibble from ml | the top two bits of the scale byte.
            const __m256i m01 = _mm256_or_si256(_mm256_and_si256(ml, low4), _mm256_and_si256(_mm256_srli_epi16(s01, 2), x30));
            const __m256i m23 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ml, 4), low4),
                                                _mm256_and_si256(_mm256_srli_epi16(s23, 2), x30));
            const __m256i mp[4] = {_mm256_cvtepu8_epi16(lane(m01, 0)), _mm256_cvtepu8_epi16(lane(m01, 1)),
                                   _mm256_cvtepu8_epi16(lane(m23, 0)), _mm256_cvtepu8_epi16(lane(m23, 1))};
            const __m256 dw = load8_halves(col), mw = load8_halves(col + 16);
            for (int t = 0; t < T; ++t) {
                // bsum32_j (j = 0..7) as int16, pairs (2p, 2p+1) in int32 elements 0, 1, 4, 5.
                const __m256i b32 = _mm256_madd_epi16(ld32(a[t][i].bsums), ones16);
                const __m256i pk = _mm256_packs_epi32(b32, b32);
                __m256i corr = _mm256_madd_epi16(mp[0], _mm256_permutevar8x32_epi32(pk, _mm256_set1_epi32(0)));
                corr = _mm256_add_epi32(corr, _mm256_madd_epi16(mp[1], _mm256_permutevar8x32_epi32(pk, _mm256_set1_epi32(1))));
                corr = _mm256_add_epi32(corr, _mm256_madd_epi16(mp[2], _mm256_permutevar8x32_epi32(pk, _mm256_set1_epi32(4))));
                corr = _mm256_add_epi32(corr, _mm256_madd_epi16(mp[3], _mm256_permutevar8x32_epi32(pk, _mm256_set1_epi32(5))));
                const __m256 dy = _mm256_set1_ps(a[t][i].d);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(dw, dy), acc[t]);
                acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(corr), _mm256_mul_ps(mw, dy), acc[t]);
            }
        }
        for (int t = 0; t < T; ++t) {
            float* o = out + t * out_stride;
            _mm256_storeu_ps(o, add ? _mm256_add_ps(_mm256_loadu_ps(o), acc[t]) : acc[t]);
        }
    }
};

// Q6_K. Column: d[8] at 0, scales[128] (int8, pair order over 16 sub-blocks) at 16, ql runs at
// 144, qh runs at 1168. Run m of half h: ql run 16h+m has elements 128h+4m.. (low nibbles) and
// +64 (high), ql run 16h+8+m has +32 and +96, qh run 8h+m the fifth/sixth bits of all four (bits
// 0-1, 2-3, 4-5, 6-7). Levels are q - 32: dot = sum sc*dot(q, y) - 32 * sum sc*bsum16. Pairs
// reach 2*63*127, so two runs add in int16 (<= 32004) before the madd with the scales.
struct K6X8 {
    static constexpr int kCol = 1680, kToks = 8;

    template <int T>
    __attribute__((noinline)) static void tile(const uint8_t* w, int64_t nb, const uint8_t* const* a_rows, float* out, int64_t out_stride, bool add) {
        const block_q8_K* a[T];
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const block_q8_K*>(a_rows[t]);
        const __m256i low4 = _mm256_set1_epi8(0x0f), x30 = _mm256_set1_epi8(0x30);
        __m256 acc[T];
        for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nb; ++i) {
            const uint8_t* col = w + i * kCol;
            prefetch_column<kCol>(col);
            const uint8_t* ql = col + 144;
            const uint8_t* qhp = col + 1168;
            __m256i isum[T], corr[T];
            for (int t = 0; t < T; ++t) isum[t] = corr[t] = _mm256_setzero_si256();
            // One quarter q (elements 128h + 32q + 0..31) at a time, its 6-bit values built from
            // the runs again for each q (loads from L1): building all four quarters of two runs at
            // once (8 ymm) beside 4 scale vectors, isum and acc spilled ~100 ymm values per column
            // at T = 4 under GCC 12. The sums are pinned (avx2_helpers.h) so the adds stay chains.
            for (int h = 0; h < 2; ++h) {
                for (int s = 0; s < 2; ++s) {
                    const uint8_t* scales = reload(col + 16 + 64 * h);  // pairs 4h..4h+3
                    // Quarters q0 and q0 + 2 share their ql runs (low and high nibbles). T <= 2
                    // has the registers for both in one pass (one quarter a pass cost T = 2 ~5%).
                    constexpr int kQn = T <= 2 ? 2 : 1;
#pragma GCC unroll 4
                    for (int q0 = 0; q0 < 4 / kQn; ++q0) {
                        __m256i scv[kQn];
                        for (int j = 0; j < kQn; ++j) {
                            // Sub-block 8h + 2q + s: pair 4h + q, member s.
                            const int q = q0 + 2 * j;
                            const __m256i sp = _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + 16 * q)));
                            scv[j] = _mm256_cvtepi8_epi16(lane(s ? dup_sub<1>(sp) : dup_sub<0>(sp), 0));
                        }
                        const uint8_t* qlr = reload(ql + 32 * (16 * h + 8 * (q0 & 1)));  // qa (q = 0, 2) or qb (1, 3)
                        const uint8_t* qhr = reload(qhp + 32 * 8 * h);
#pragma GCC unroll 2
                        for (int mp = 0; mp < 2; ++mp) {
                            const int m0 = 4 * s + 2 * mp;
                            __m256i v[kQn][2];
                            for (int e = 0; e < 2; ++e) {
                                const __m256i raw = ld32(qlr + 32 * (m0 + e)), qh = ld32(qhr + 32 * (m0 + e));
                                for (int j = 0; j < kQn; ++j) {
                                    const int q = q0 + 2 * j;
                                    const __m256i lo = _mm256_and_si256(q >= 2 ? _mm256_srli_epi16(raw, 4) : raw, low4);
                                    const __m256i hb = q == 0 ? _mm256_slli_epi16(qh, 4) : q == 1 ? _mm256_slli_epi16(qh, 2)
                                                     : q == 2 ? qh : _mm256_srli_epi16(qh, 2);
                                    v[j][e] = _mm256_or_si256(lo, _mm256_and_si256(hb, x30));
                                }
                            }
                            for (int t = 0; t < T; ++t)
                                for (int j = 0; j < kQn; ++j) {
                                    const int8_t* q8 = a[t][i].qs + 128 * h + 32 * (q0 + 2 * j) + 4 * m0;
                                    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(v[j][0], bcast4(q8)),
                                                                       _mm256_maddubs_epi16(v[j][1], bcast4(q8 + 4)));
                                    isum[t] = pinned(_mm256_add_epi32(isum[t], _mm256_madd_epi16(p, scv[j])));
                                }
                        }
                    }
                }
            }
            // 32 * sum_j sc(L, j) * bsum16_j, by pairs (j, j+1): the bsums' int32 element p.
            for (int p = 0; p < 8; ++p) {
                const __m256i sp = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(col + 16 + 16 * p)));
                for (int t = 0; t < T; ++t) {
                    int32_t bp;
                    std::memcpy(&bp, a[t][i].bsums + 2 * p, 4);
                    corr[t] = pinned(_mm256_add_epi32(corr[t], _mm256_madd_epi16(sp, _mm256_set1_epi32(bp))));
                }
            }
            const __m256 dw = load8_halves(col);
            for (int t = 0; t < T; ++t) {
                const __m256i net = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(corr[t], 5));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(net), _mm256_mul_ps(dw, _mm256_set1_ps(a[t][i].d)), acc[t]);
            }
        }
        for (int t = 0; t < T; ++t) {
            float* o = out + t * out_stride;
            _mm256_storeu_ps(o, add ? _mm256_add_ps(_mm256_loadu_ps(o), acc[t]) : acc[t]);
        }
    }
};

} // namespace

void register_kquant_x8_avx2_kernels(KernelTable& t) {
    const KernelTable& ref = *kernel_table_ref();
    t.gemm_x8[TYPE_Q4_K] = gemm_kx8_tiled<K45X8<false>>;
    t.gemm_x8[TYPE_Q5_K] = gemm_kx8_tiled<K45X8<true>>;
    t.gemm_x8[TYPE_Q6_K] = gemm_kx8_tiled<K6X8>;
    for (Type type : {TYPE_Q4_K, TYPE_Q5_K, TYPE_Q6_K}) t.repack_x8[type] = ref.repack_x8[type];
}

} // namespace pyllm

#else  // not x86: nothing to register

#include "kernels/kernels.h"
namespace pyllm {
void register_kquant_x8_avx2_kernels(KernelTable&) {}
} // namespace pyllm

#endif
