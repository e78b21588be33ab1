// IEEE half and bfloat16 <-> float conversions, portable scalar versions. float -> half rounds to
// nearest even, the same results as F16C's vcvtps2ph with rounding mode 0 (ggml's reference).
#pragma once
#include <cstdint>
#include <cstring>

namespace pyllm {

inline float bits_to_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f32_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float fp16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
        const float v = (float)mant * bits_to_f32(0x33800000u);
        return bits_to_f32(sign | f32_to_bits(v));
    }
    if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (mant << 13));  // inf / nan
    return bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));         // rebias 15 -> 127
}

inline uint16_t f32_to_fp16(float f) {
    const uint32_t u = f32_to_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;        // nan stays nan
    if (a >= 0x477ff000u) return sign | 0x7c00u;       // rounds to >= 65520: inf
    if (a < 0x38800000u) {
        // Subnormal half. Adding 0.5f makes the float's ulp 2^-24 (the half subnormal step), so
        // the FPU's own round-to-nearest-even does the rounding; the low bits are the result.
        const float shifted = bits_to_f32(a) + 0.5f;
        return sign | (uint16_t)(f32_to_bits(shifted) - 0x3f000000u);
    }
    // Normal: rebias the exponent (-112 << 23) and round the 13 dropped bits to nearest even.
    const uint32_t odd = (a >> 13) & 1u;
    a += 0xc8000fffu + odd;
    return sign | (uint16_t)(a >> 13);
}

inline float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

inline uint16_t f32_to_bf16(float f) {
    const uint32_t u = f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);  // quiet nan
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);               // nearest even
}

} // namespace pyllm
