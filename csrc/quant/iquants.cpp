// Reference (de)quantizers of the non-linear 4-bit types IQ4_NL and IQ4_XS.
//
// Both store 4-bit indices into ggml's fixed 16-level grid kvalues_iq4nl (quant/blocks.h); IQ4_NL
// has one f16 scale per 32 elements, IQ4_XS one f16 scale per 256 and a 6-bit scale per 32.
// The quantizers follow ggml's quantize_row_iq4_nl_impl step for step, as llama-quantize calls it
// without an importance matrix (quantize_iq4_nl / quantize_iq4_xs: weights x^2, 7 scale trials
// each side): float sums in the same order, compiled without FMA contraction, so the bytes are
// llama-quantize's. Not here: importance-weighted variants (pyllm's imatrix path covers the
// 32-element linear types only) and the other i-quants, which pyllm does not run.
#include <cassert>
#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "quant/blocks.h"
#include "quant/quants.h"

namespace pyllm {

namespace {

constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS: a sub-block below this is all zero
constexpr int kTrials = 7;              // ggml's ntry for quantize_iq4_nl / quantize_iq4_xs

// Round to nearest, ties to even, by ggml's 1.5*2^23 trick (exact for |v| < 2^22).
inline int nearest_int(float v) {
    const float shifted = v + 12582912.0f;
    int32_t bits;
    std::memcpy(&bits, &shifted, sizeof(bits));
    return (bits & 0x007fffff) - 0x00400000;
}

// Index of the grid value nearest to x, as ggml's best_index_int8 finds it: its bisection ends at
// hi = the first grid index whose value exceeds x, which a count of the values <= x gives without
// branches (the hot loop of quantizing: 16 trial scales x 32 elements), then the same float test
// between the two neighbours. A NaN ends ggml's bisection at 15.
inline int best_index(float x) {
    static constexpr float kGrid[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    const int8_t* val = kvalues_iq4nl;
    if (x <= val[0]) return 0;
    if (x >= val[15] || x != x) return 15;
    int hi = 0;
    for (int j = 0; j < 16; ++j) hi += kGrid[j] <= x;
    return x - val[hi - 1] < val[hi] - x ? hi - 1 : hi;
}

// Least-squares scale of one 32-element sub-block over the grid, weights x^2: the start from the
// largest magnitude mapped to the grid's -127, then 15 trial scales (itry + values[0]) / max, kept
// when they lower the weighted error. L receives the start's indices. Returns 0 for a zero block.
float fit_sub_block(const float* x, uint8_t* L) {
    float weight[32];
    for (int j = 0; j < 32; ++j) weight[j] = x[j] * x[j];
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; ++j) {
        const float ax = std::fabs(x[j]);
        if (ax > amax) {
            amax = ax;
            max = x[j];
        }
    }
    if (amax < kGroupMaxEps) return 0.0f;
    const int8_t* values = kvalues_iq4nl;
    float d = -max / values[0];
    float id = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int j = 0; j < 32; ++j) {
        const int l = best_index(id * x[j]);
        L[j] = (uint8_t)l;
        const float q = values[l];
        const float w = weight[j];
        sumqx += w * q * x[j];
        sumq2 += w * q * q;
    }
    d = sumq2 > 0 ? sumqx / sumq2 : 0.0f;
    float best = d * sumqx;
    for (int itry = -kTrials; itry <= kTrials; ++itry) {
        id = (itry + values[0]) / max;
        sumqx = sumq2 = 0;
        for (int j = 0; j < 32; ++j) {
            const float q = values[best_index(id * x[j])];
            const float w = weight[j];
            sumqx += w * q * x[j];
            sumq2 += w * q * q;
        }
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

// Element j and j+16 of each 32 share byte j: low nibble, high nibble.
void pack_nibbles(const uint8_t* L, uint8_t* qs, int n) {
    for (int i = 0; i < n / 32; ++i)
        for (int j = 0; j < 16; ++j) qs[16 * i + j] = (uint8_t)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

} // namespace

void quantize_row_iq4_nl(const float* x, void* dst, int64_t n) {
    assert(n % QK4_NL == 0);
    block_iq4_nl* y = static_cast<block_iq4_nl*>(dst);
    uint8_t L[QK4_NL];
    for (int64_t i = 0; i < n / QK4_NL; ++i, x += QK4_NL) {
        const float d = fit_sub_block(x, L);
        y[i].d = f32_to_fp16(d);
        // The final indices are for the fitted scale, not the start (a zero block: all index 8, +1).
        const float id = d ? 1 / d : 0.0f;
        for (int j = 0; j < QK4_NL; ++j) L[j] = (uint8_t)best_index(id * x[j]);
        pack_nibbles(L, y[i].qs, QK4_NL);
    }
}

void quantize_row_iq4_xs(const float* x, void* dst, int64_t n) {
    assert(n % QK_K == 0);
    block_iq4_xs* y = static_cast<block_iq4_xs*>(dst);
    uint8_t L[QK_K];
    float scales[QK_K / 32];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float max_scale = 0.0f, amax_scale = 0.0f;
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            scales[ib] = fit_sub_block(x + 32 * ib, L + 32 * ib);
            const float abs_d = std::fabs(scales[ib]);
            if (abs_d > amax_scale) {
                amax_scale = abs_d;
                max_scale = scales[ib];
            }
        }
        // The sub-block scale of largest magnitude becomes -32 * d (an all-zero block: d = -0).
        const float d = -max_scale / 32;
        y[i].d = f32_to_fp16(d);
        const float id = d ? 1 / d : 0.0f;
        y[i].scales_h = 0;
        std::memset(y[i].scales_l, 0, sizeof(y[i].scales_l));
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            int l = nearest_int(id * scales[ib]);
            l = l < -32 ? -32 : (l > 31 ? 31 : l);
            const float dl = d * l;
            const float idl = dl ? 1 / dl : 0.0f;
            for (int j = 0; j < 32; ++j) L[32 * ib + j] = (uint8_t)best_index(idl * x[32 * ib + j]);
            l += 32;
            y[i].scales_l[ib / 2] |= (uint8_t)((l & 0xf) << 4 * (ib % 2));
            y[i].scales_h |= (uint16_t)((l >> 4) << 2 * ib);
        }
        pack_nibbles(L, y[i].qs, QK_K);
    }
}

void dequantize_row_iq4_nl(const void* src, float* y, int64_t n) {
    const block_iq4_nl* x = static_cast<const block_iq4_nl*>(src);
    for (int64_t i = 0; i < n / QK4_NL; ++i, y += QK4_NL) {
        const float d = fp16_to_f32(x[i].d);
        for (int j = 0; j < QK4_NL / 2; ++j) {
            y[j] = d * kvalues_iq4nl[x[i].qs[j] & 0xf];
            y[j + QK4_NL / 2] = d * kvalues_iq4nl[x[i].qs[j] >> 4];
        }
    }
}

void dequantize_row_iq4_xs(const void* src, float* y, int64_t n) {
    const block_iq4_xs* x = static_cast<const block_iq4_xs*>(src);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib, y += 32) {
            const float dl = d * (iq4_xs_scale(x[i], ib) - 32);
            const uint8_t* qs = x[i].qs + 16 * ib;
            for (int j = 0; j < 16; ++j) {
                y[j] = dl * kvalues_iq4nl[qs[j] & 0xf];
                y[j + 16] = dl * kvalues_iq4nl[qs[j] >> 4];
            }
        }
    }
}

} // namespace pyllm
