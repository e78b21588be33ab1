// Small AVX2 helpers shared by the files compiled with AVX2 flags (avx2.cpp, kquants_avx2.cpp).
// Include only from such files: everything is in an anonymous namespace, so each file keeps its
// own copy and no AVX2 instruction can be linked into code that runs before dispatch.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace pyllm {
namespace {

// An opaque register copy: the value must exist, in a register, here. GCC otherwise reassociates
// a tile's chains of integer adds into trees that compute every product first, and spills them
// (the Q4 x8 tile at 4 tokens spilled ~100 ymm values per block column under GCC 12 -O3).
inline __m256i pinned(__m256i v) {
    __asm__("" : "+x"(v));
    return v;
}

inline float half_to_f32(uint16_t h) { return _cvtsh_ss(h); }

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline int hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

} // namespace
} // namespace pyllm
