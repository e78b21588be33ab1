// Scalar unpacking of K-quant super-block scales, shared by the x86 K-quant files (no SIMD here).
// Internal linkage on purpose: each ISA file compiles its own copy with its own flags.
//
// Every K-quant . Q8_K dot product is written the same way per 256-element super-block:
//   sum_g sc[g] * dot16(q_g, y_g) - sum_g coef[g] * bsum[g]     (integers; g = 16-element group)
// with q the unsigned quants. coef is offset*sc for the types whose levels are q - offset (Q3_K: 4,
// Q6_K: 32), and it is the group's min for the types with mins (Q2_K, Q4_K, Q5_K), whose second sum
// is then scaled by dmin instead of d. bsum[g] (the Q8_K block's bsums) is the activation sum of the group.
#pragma once
#include <cstdint>
#include <cstring>

#include "quant/blocks.h"

namespace pyllm {
namespace {

struct KScales {
    alignas(32) int16_t sc[16];    // per 16-element group
    alignas(32) int16_t coef[16];  // per group: offset*sc, or the min
};

inline void kscales_q2_K(const block_q2_K& b, KScales& s) {
    for (int g = 0; g < 16; ++g) {
        s.sc[g] = (int16_t)(b.scales[g] & 0xF);
        s.coef[g] = (int16_t)(b.scales[g] >> 4);
    }
}

inline void kscales_q3_K(const block_q3_K& b, KScales& s) {
    for (int g = 0; g < 16; ++g) {
        const int low = g < 8 ? b.scales[g] & 0xF : b.scales[g - 8] >> 4;
        const int high = (b.scales[8 + g % 4] >> (2 * (g / 4))) & 3;
        s.sc[g] = (int16_t)((low | (high << 4)) - 32);
        s.coef[g] = (int16_t)(4 * s.sc[g]);
    }
}

// Q4_K / Q5_K: 8 six-bit scales and 8 six-bit mins, one per 32 elements (two groups).
inline void kscales_q45_K(const uint8_t* q, KScales& s) {
    for (int j = 0; j < 8; ++j) {
        const int sc = j < 4 ? q[j] & 63 : (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        const int mn = j < 4 ? q[j + 4] & 63 : (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        s.sc[2 * j] = s.sc[2 * j + 1] = (int16_t)sc;
        s.coef[2 * j] = s.coef[2 * j + 1] = (int16_t)mn;
    }
}

inline void kscales_q6_K(const block_q6_K& b, KScales& s) {
    for (int g = 0; g < 16; ++g) {
        s.sc[g] = b.scales[g];
        s.coef[g] = (int16_t)(32 * b.scales[g]);
    }
}

} // namespace
} // namespace pyllm
