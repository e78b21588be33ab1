// K-quant weight unpacking with AVX2 intrinsics, shared by kquants_avx2.cpp and kquants_avx512.cpp
// (include only from files compiled with at least the AVX2 flags). Internal linkage on purpose:
// each ISA file compiles its own copy with its own flags, so none can leak into another's callers.
//
// Every K-quant . Q8_K dot product is written the same way per 256-element super-block:
//   sum_g sc[g] * dot16(q_g, y_g) - sum_g coef[g] * bsum[g]     (integers; g = 16-element group)
// with q the unsigned quants. coef is offset*sc for the types whose levels are q - offset (Q3_K: 4,
// Q6_K: 32); for the types with mins (Q2_K, Q4_K, Q5_K) it is the group's min, and that second sum
// is scaled by dmin instead of d. bsum[g] (the Q8_K block's bsums) is the activations' group sum.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "quant/blocks.h"

namespace pyllm {
namespace {

inline __m256i kq_load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i kq_load16(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// Bytes equal to `value` where the byte of `bits` has bit `bit` set, else 0.
inline __m256i kq_bit_to_bytes(__m256i bits, int bit, char value) {
    const __m256i m = _mm256_set1_epi8((char)(1 << bit));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bits, m), m), _mm256_set1_epi8(value));
}

// (bytes >> shift) & mask per byte (a 16-bit shift leaks only into bits the mask drops).
inline __m256i kq_bits_at(__m256i bytes, int shift, char mask) {
    return _mm256_and_si256(_mm256_srli_epi16(bytes, shift), _mm256_set1_epi8(mask));
}

// 16 scales stored once per 32 elements as 8 bytes -> each repeated for its two 16-groups.
inline void kq_widen_per32(__m128i scales_then_mins, __m256i& sc, __m256i& mins) {
    const __m256i w = _mm256_cvtepu8_epi16(scales_then_mins);  // [s0..s7 | m0..m7]
    const __m256i lo = _mm256_unpacklo_epi16(w, w), hi = _mm256_unpackhi_epi16(w, w);
    sc = _mm256_permute2x128_si256(lo, hi, 0x20);
    mins = _mm256_permute2x128_si256(lo, hi, 0x31);
}

// Per type: scales() -> 16 int16 group scales and coefs; chunk(c) -> the 32 unsigned quants of
// elements 32c..32c+31 in element order.

struct Q2_KBase {
    using W = block_q2_K;
    static constexpr bool kHasMin = true;
    static float d(const W& b) { return _cvtsh_ss(b.d); }
    static float dmin(const W& b) { return _cvtsh_ss(b.dmin); }
    static void scales(const W& b, __m256i& sc, __m256i& coef) {  // low nibble scale, high nibble min
        const __m128i x = kq_load16(b.scales);
        sc = _mm256_cvtepu8_epi16(_mm_and_si128(x, _mm_set1_epi8(0xF)));
        coef = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(x, 4), _mm_set1_epi8(0xF)));
    }
    // 128-element halves; in each, bits 2s..2s+1 of the 32 bytes hold chunk s.
    static __m256i chunk(const W& b, int c) { return kq_bits_at(kq_load32(b.qs + 32 * (c / 4)), 2 * (c % 4), 3); }
};

struct Q3_KBase {
    using W = block_q3_K;
    static constexpr bool kHasMin = false;
    static float d(const W& b) { return _cvtsh_ss(b.d); }
    static float dmin(const W&) { return 0.0f; }
    // 16 six-bit scales with a +32 bias (quant/blocks.h unpacks them).
    static void scales(const W& b, __m256i& sc, __m256i& coef) {
        uint8_t u[16];
        q3_K_scale_bytes(b.scales, u);
        sc = _mm256_sub_epi16(_mm256_cvtepu8_epi16(kq_load16(u)), _mm256_set1_epi16(32));
        coef = _mm256_slli_epi16(sc, 2);
    }
    // Low two bits as Q2_K; hmask bit c is the third bit (level = q - 4).
    static __m256i chunk(const W& b, int c) {
        return _mm256_or_si256(kq_bits_at(kq_load32(b.qs + 32 * (c / 4)), 2 * (c % 4), 3), kq_bit_to_bytes(kq_load32(b.hmask), c, 4));
    }
};

// Q4_K / Q5_K: 8 six-bit scales and 8 six-bit mins in 12 bytes: entries 0-3 in the low 6 bits of
// bytes 0-3 (scales) and 4-7 (mins); entries 4-7 in the nibbles of bytes 8-11 plus the top two bits
// of bytes 0-3 (scales) and 4-7 (mins).
inline void kq_scales_mins_k4(const uint8_t* packed, __m256i& sc, __m256i& mins) {
    uint8_t u[16];
    q4_K_scale_min_bytes(packed, u);
    kq_widen_per32(kq_load16(u), sc, mins);
}

struct Q4_KBase {
    using W = block_q4_K;
    static constexpr bool kHasMin = true;
    static float d(const W& b) { return _cvtsh_ss(b.d); }
    static float dmin(const W& b) { return _cvtsh_ss(b.dmin); }
    static void scales(const W& b, __m256i& sc, __m256i& coef) { kq_scales_mins_k4(b.scales, sc, coef); }
    // 32 bytes per 64 elements: low nibbles are chunk 2j, high nibbles chunk 2j+1.
    static __m256i chunk(const W& b, int c) { return kq_bits_at(kq_load32(b.qs + 32 * (c / 2)), 4 * (c % 2), 0xF); }
};

struct Q5_KBase {
    using W = block_q5_K;
    static constexpr bool kHasMin = true;
    static float d(const W& b) { return _cvtsh_ss(b.d); }
    static float dmin(const W& b) { return _cvtsh_ss(b.dmin); }
    static void scales(const W& b, __m256i& sc, __m256i& coef) { kq_scales_mins_k4(b.scales, sc, coef); }
    static __m256i chunk(const W& b, int c) {
        return _mm256_or_si256(kq_bits_at(kq_load32(b.qs + 32 * (c / 2)), 4 * (c % 2), 0xF), kq_bit_to_bytes(kq_load32(b.qh), c, 0x10));
    }
};

struct Q6_KBase {
    using W = block_q6_K;
    static constexpr bool kHasMin = false;
    static float d(const W& b) { return _cvtsh_ss(b.d); }
    static float dmin(const W&) { return 0.0f; }
    static void scales(const W& b, __m256i& sc, __m256i& coef) {  // int8 scales, levels q - 32
        sc = _mm256_cvtepi8_epi16(kq_load16(b.scales));
        coef = _mm256_slli_epi16(sc, 5);
    }
    // Per 128-element half h: chunk w has the low (w < 2) or high nibbles of ql[64h + 32(w%2) ..],
    // with bits 2w..2w+1 of qh[32h ..] on top.
    static __m256i chunk(const W& b, int c) {
        const int h = c / 4, w = c % 4;
        const __m256i low = kq_bits_at(kq_load32(b.ql + 64 * h + 32 * (w % 2)), 4 * (w / 2), 0xF);
        const __m256i high = _mm256_slli_epi16(kq_bits_at(kq_load32(b.qh + 32 * h), 2 * w, 3), 4);
        return _mm256_or_si256(low, high);
    }
};

} // namespace
} // namespace pyllm
