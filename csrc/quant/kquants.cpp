// K-quant reference (de)quantizers: Q2_K..Q6_K weights and the Q8_K activation type, on 256-element
// super-blocks. Quantizers reproduce ggml's `quantize_row_qN_K_ref` bit for bit, so every float
// expression below keeps ggml's operation order (this file is built with -ffp-contract=off).
// Not here: importance-weighted (imatrix) quantization; each quantizer funnels through one
// `quantize_*_impl(x, y, n, quant_weights)` so a weighted path can slot in next to the reference one.
#include "quant/quants.h"

#include <cassert>
#include <cmath>
#include <cstring>
#include <algorithm>

#include "core/fp16.h"
#include "quant/blocks.h"
#include "quant/fit.h"

namespace pyllm {

namespace {

// --- shared helpers ------------------------------------------------------------------------------

// Below this a group counts as all zeros (ggml's GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

// Round to nearest, ties to even, for |v| < 2^22: adding 1.5*2^23 leaves the integer in the low
// mantissa bits. ggml rounds with this trick rather than lrintf, so we do too.
inline int nearest_int(float v) {
    assert(std::fabs(v) <= 4194303.f);
    const float biased = v + 12582912.f;
    int32_t bits;
    std::memcpy(&bits, &biased, sizeof(bits));
    return (bits & 0x007fffff) - 0x00400000;
}

inline int clamp_int(int v, int lo, int hi) { return std::max(lo, std::min(hi, v)); }

} // namespace

// Symmetric levels [-nmax, nmax-1] for a group, fitted by weighted least squares: the first guess
// maps the signed max to -nmax, then 18 nearby inverse scales are tried and the best kept.
// L receives level + nmax. rmse_type 1 weighs by x^2 unless explicit weights qw are given.
// Only the paths the reference quantizers use are kept (rmse_type 0 and 1). Shared with the
// importance-weighted quantizers (quant/fit.h), hence outside the anonymous namespace.

float make_qx_quants(int n, int nmax, const float* x, int8_t* L, int rmse_type, const float* qw) {
    float max = 0.0f, amax = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float ax = std::fabs(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < kGroupMaxEps) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.0f;
    }
    float iscale = -nmax / max;
    if (rmse_type == 0) {
        for (int i = 0; i < n; ++i) {
            const int l = nearest_int(iscale * x[i]);
            L[i] = (int8_t)(nmax + clamp_int(l, -nmax, nmax - 1));
        }
        return 1 / iscale;
    }
    assert(rmse_type == 1);
    auto weight = [&](int i) { return qw ? qw[i] : x[i] * x[i]; };
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
        const int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        const float w = weight(i);
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    // The 18 candidate scales (is = -9..9 but 0) do not depend on each other, only the choice
    // does: their sums are accumulated side by side (18 independent chains instead of one long
    // dependent one, each in ggml's order, so bit-identical), then chosen in ggml's order.
    constexpr int kCand = 18;
    float cand_iscale[kCand], cand_lx[kCand], cand_l2[kCand];
    for (int c = 0; c < kCand; ++c) {
        const int is = c < 9 ? c - 9 : c - 8;
        cand_iscale[c] = -(nmax + 0.1f * is) / max;
        cand_lx[c] = cand_l2[c] = 0.0f;
    }
    for (int i = 0; i < n; ++i) {
        const float w = weight(i), wx = w * x[i];
        for (int c = 0; c < kCand; ++c) {
            const int l = clamp_int(nearest_int(cand_iscale[c] * x[i]), -nmax, nmax - 1);
            cand_lx[c] += wx * l;
            cand_l2[c] += w * l * l;
        }
    }
    for (int c = 0; c < kCand; ++c) {
        sumlx = cand_lx[c];
        suml2 = cand_l2[c];
        // sumlx^2/suml2 is the error reduction of the best scale for these levels; compare it
        // without dividing.
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                const int l = nearest_int(cand_iscale[c] * x[i]);
                L[i] = (int8_t)(nmax + clamp_int(l, -nmax, nmax - 1));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

namespace {

// Q3_K's group fit: levels [-nmax, nmax-1] weighted by x^2, then up to five passes of coordinate
// descent that move one level at a time while the weighted fit improves. L receives level + nmax.
float make_q3_quants(int n, int nmax, const float* x, int8_t* L, bool do_rmse) {
    float max = 0.0f, amax = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float ax = std::fabs(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < kGroupMaxEps) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.0f;
    }
    const float iscale = -nmax / max;
    if (do_rmse) {
        float sumlx = 0.0f, suml2 = 0.0f;
        for (int i = 0; i < n; ++i) {
            const int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            L[i] = (int8_t)l;
            const float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int itry = 0; itry < 5; ++itry) {
            int n_changed = 0;
            for (int i = 0; i < n; ++i) {
                const float w = x[i] * x[i];
                float slx = sumlx - w * x[i] * L[i];
                if (slx > 0) {
                    float sl2 = suml2 - w * L[i] * L[i];
                    const int new_l = clamp_int(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                    if (new_l != L[i]) {
                        slx += w * x[i] * new_l;
                        sl2 += w * new_l * new_l;
                        if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                            L[i] = (int8_t)new_l;
                            sumlx = slx;
                            suml2 = sl2;
                            ++n_changed;
                        }
                    }
                }
            }
            if (!n_changed) break;
        }
        for (int i = 0; i < n; ++i) L[i] = (int8_t)(L[i] + nmax);
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }
    for (int i = 0; i < n; ++i) {
        const int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
    }
    return 1 / iscale;
}

// Asymmetric group fit x ~ scale*L - the_min with L in [0, nmax] (the min is never above 0): start
// from the min/max grid, then try nstep+1 inverse scales (rmin + rdelta*is + nmax)/(max - min),
// solving the weighted least-squares scale and offset for each level assignment, and keep the
// assignment of least weighted error (absolute error if use_mad, else squared).
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad) {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.0f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0.0f;
    for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)clamp_int(l, 0, nmax);
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        best_error += weights[i] * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    // Steps are tried kLanes at a time, their sums accumulated side by side (independent chains,
    // each in ggml's order). A step that improves the fit changes `min`, which the later steps
    // use: those are then recomputed from the step after it. The result is bit-identical to
    // trying one step after another.
    constexpr int kLanes = 8;
    assert(n <= 32);
    uint8_t lane_L[kLanes][32];
    int is = 0;
    while (is <= nstep) {
        const int count = std::min(kLanes, nstep + 1 - is);
        float lane_iscale[kLanes], l1[kLanes], l2[kLanes], xl[kLanes];
        for (int s = 0; s < kLanes; ++s) {
            lane_iscale[s] = (rmin + rdelta * (is + s) + nmax) / (max - min);
            l1[s] = l2[s] = xl[s] = 0.0f;
        }
        for (int i = 0; i < n; ++i) {
            const float xm = x[i] - min, w = weights[i];
            for (int s = 0; s < kLanes; ++s) {
                const int l = clamp_int(nearest_int(lane_iscale[s] * xm), 0, nmax);
                lane_L[s][i] = (uint8_t)l;
                l1[s] += w * l;
                l2[s] += w * l * l;
                xl[s] += w * l * x[i];
            }
        }
        float lane_scale[kLanes], lane_min[kLanes], lane_err[kLanes];
        bool lane_ok[kLanes];
        for (int s = 0; s < kLanes; ++s) {
            const float D = sum_w * l2[s] - l1[s] * l1[s];
            lane_ok[s] = D > 0;
            lane_scale[s] = lane_min[s] = lane_err[s] = 0.0f;
            if (!lane_ok[s]) continue;
            lane_scale[s] = (sum_w * xl[s] - sum_x * l1[s]) / D;
            lane_min[s] = (l2[s] * sum_x - l1[s] * xl[s]) / D;
            if (lane_min[s] > 0) {
                lane_min[s] = 0;
                lane_scale[s] = xl[s] / l2[s];
            }
        }
        for (int i = 0; i < n; ++i)
            for (int s = 0; s < kLanes; ++s) {
                float diff = lane_scale[s] * lane_L[s][i] + lane_min[s] - x[i];
                diff = use_mad ? std::fabs(diff) : diff * diff;
                lane_err[s] += weights[i] * diff;
            }
        int next = is + count;
        for (int s = 0; s < count; ++s) {
            if (lane_ok[s] && lane_err[s] < best_error) {
                for (int i = 0; i < n; ++i) L[i] = lane_L[s][i];
                best_error = lane_err[s];
                scale = lane_scale[s];
                min = lane_min[s];
                next = is + s + 1;  // the lanes after s assumed the old min
                break;
            }
        }
        is = next;
    }
    (void)Laux;
    *the_min = -min;
    return scale;
}

// --- 6-bit scale packing of Q4_K / Q5_K ------------------------------------------------------------
// 8 scales and 8 mins of 6 bits in 12 bytes. Sub-blocks 0..3: low 6 bits of bytes 0..3 (scale)
// and 4..7 (min). Sub-blocks 4..7: low/high nibble of bytes 8..11 hold the low 4 bits of scale/min;
// their top 2 bits sit in the spare top bits of bytes 0..3 (scale) and 4..7 (min).

inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

inline void set_scale_min_k4(int j, uint8_t* q, uint8_t ls, uint8_t lm) {
    // Sub-blocks are written in order 0..7: bytes 0..7 get their low bits before 4..7 OR in the top.
    if (j < 4) {
        q[j] = ls;
        q[j + 4] = lm;
    } else {
        q[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        q[j - 4] |= (uint8_t)((ls >> 4) << 6);
        q[j] |= (uint8_t)((lm >> 4) << 6);
    }
}

// Q3_K's 16 six-bit signed scales (stored +32): low nibbles in bytes 0..7 (sub-blocks 0..7 low,
// 8..15 high nibble), the top 2 bits of sub-block j in byte 8 + j%4 at bit 2*(j/4).
inline int q3_K_scale(const uint8_t* s, int j) {
    const int low = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    const int high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (low | (high << 4)) - 32;
}

// 2-bit packing shared by Q2_K and Q3_K: within each 128 elements, byte l of a 32-byte run holds
// elements l, l+32, l+64, l+96 at bits 0, 2, 4, 6.
template <typename LT>
void pack_2bit(const LT* L, uint8_t* qs) {
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

// --- Q2_K ---------------------------------------------------------------------------------------
// 16 groups of 16: x = d*sc*q - dmin*m with q in 0..3 and 4-bit sc, m per group.

void quantize_q2_K_impl(const float* x, block_q2_K* y, int64_t n, const float* quant_weights) {
    assert(n % QK_K == 0);
    assert(!quant_weights && "importance-weighted Q2_K is not implemented yet");
    const float q4scale = 15.0f;
    uint8_t L[QK_K], Laux[16];
    float weights[16], mins[QK_K / 16], scales[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float max_scale = 0.0f, max_min = 0.0f;  // the min is subtracted, so scales are >= 0
        for (int j = 0; j < QK_K / 16; ++j) {
            for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        if (max_scale > 0) {
            const float iscale = q4scale / max_scale;
            for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            y[i].d = f32_to_fp16(max_scale / q4scale);
        } else {
            for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = 0;
            y[i].d = f32_to_fp16(0.0f);
        }
        if (max_min > 0) {
            const float iscale = q4scale / max_min;
            for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] |= (uint8_t)(nearest_int(iscale * mins[j]) << 4);
            y[i].dmin = f32_to_fp16(max_min / q4scale);
        } else {
            y[i].dmin = f32_to_fp16(0.0f);
        }
        // Requantize against the scales as stored (4-bit, f16 super-scales).
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = fp16_to_f32(y[i].d) * (y[i].scales[j] & 0xF);
            if (!d) continue;
            const float dm = fp16_to_f32(y[i].dmin) * (y[i].scales[j] >> 4);
            for (int ii = 0; ii < 16; ++ii) {
                const int l = nearest_int((x[16 * j + ii] + dm) / d);
                L[16 * j + ii] = (uint8_t)clamp_int(l, 0, 3);
            }
        }
        pack_2bit(L, y[i].qs);
    }
}

// --- Q3_K ---------------------------------------------------------------------------------------
// 16 groups of 16: x = d*sc*(q - 4) with q in 0..7 (two bits in qs, the third in hmask) and a
// signed 6-bit sc per group.

void quantize_q3_K_impl(const float* x, block_q3_K* y, int64_t n, const float* quant_weights) {
    assert(n % QK_K == 0);
    assert(!quant_weights && "importance-weighted Q3_K is not implemented yet");
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float max_scale = 0.0f, amax = 0.0f;
        for (int j = 0; j < QK_K / 16; ++j) {
            scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j, true);
            const float scale = std::fabs(scales[j]);
            if (scale > amax) { amax = scale; max_scale = scales[j]; }
        }
        std::memset(y[i].scales, 0, sizeof(y[i].scales));
        if (max_scale) {
            const float iscale = -32.0f / max_scale;
            for (int j = 0; j < QK_K / 16; ++j) {
                // ggml keeps the rounded value in an int8 before clamping; |iscale*scale| <= 32 so
                // nothing is lost.
                int8_t l = (int8_t)nearest_int(iscale * scales[j]);
                l = (int8_t)(clamp_int(l, -32, 31) + 32);
                if (j < 8) y[i].scales[j] = l & 0xF;
                else y[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
                l >>= 4;
                y[i].scales[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
            }
            y[i].d = f32_to_fp16(1 / iscale);
        } else {
            y[i].d = f32_to_fp16(0.0f);
        }
        for (int j = 0; j < QK_K / 16; ++j) {
            const int8_t sc = (int8_t)q3_K_scale(y[i].scales, j);
            const float d = fp16_to_f32(y[i].d) * sc;
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                const int l = clamp_int(nearest_int(x[16 * j + ii] / d), -4, 3);
                L[16 * j + ii] = (int8_t)(l + 4);
            }
        }
        // High bit of element j goes to hmask[j % 32], bit j / 32.
        std::memset(y[i].hmask, 0, sizeof(y[i].hmask));
        for (int j = 0; j < QK_K; ++j) {
            if (L[j] > 3) {
                y[i].hmask[j % (QK_K / 8)] |= (uint8_t)(1 << (j / (QK_K / 8)));
                L[j] -= 4;
            }
        }
        pack_2bit(L, y[i].qs);
    }
}

// --- Q4_K / Q5_K ----------------------------------------------------------------------------------
// 8 groups of 32: x = d*sc*q - dmin*m with q in 0..15 (Q4_K) or 0..31 (Q5_K), 6-bit sc and m.

// Shared by Q4_K (nmax 15) and Q5_K (nmax 31): fits the groups, packs the scales, and fills
// L[256] with the final levels. The search constants differ per type, as in ggml.
void fit_q45_K_superblock(const float* x, int nmax, float rmin, float rdelta, int nstep,
                          uint8_t* scales_out, uint16_t* d_out, uint16_t* dmin_out, uint8_t* L) {
    uint8_t Laux[32];
    float weights[32], mins[QK_K / 32], scales[QK_K / 32];
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < QK_K / 32; ++j) {
        // Weight each element by the group's rms plus its own magnitude.
        float sum_x2 = 0.0f;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = std::sqrt(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep, false);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = std::min<uint8_t>(63, ls);
        lm = std::min<uint8_t>(63, lm);
        set_scale_min_k4(j, scales_out, ls, lm);
    }
    *d_out = f32_to_fp16(max_scale / 63.0f);
    *dmin_out = f32_to_fp16(max_min / 63.0f);
    // Requantize against the stored scales; a group whose scale rounds to 0 keeps its fit levels.
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t sc, m;
        get_scale_min_k4(j, scales_out, &sc, &m);
        const float d = fp16_to_f32(*d_out) * sc;
        if (!d) continue;
        const float dm = fp16_to_f32(*dmin_out) * m;
        for (int ii = 0; ii < 32; ++ii) {
            const int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)clamp_int(l, 0, nmax);
        }
    }
}

void quantize_q4_K_impl(const float* x, block_q4_K* y, int64_t n, const float* quant_weights) {
    assert(n % QK_K == 0);
    assert(!quant_weights && "importance-weighted Q4_K is not implemented yet");
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        fit_q45_K_superblock(x, 15, -1.0f, 0.1f, 20, y[i].scales, &y[i].d, &y[i].dmin, L);
        // Each 64 elements: 32 bytes, element l in the low nibble and l+32 in the high nibble.
        uint8_t* q = y[i].qs;
        for (int j = 0; j < QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

void quantize_q5_K_impl(const float* x, block_q5_K* y, int64_t n, const float* quant_weights) {
    assert(n % QK_K == 0);
    assert(!quant_weights && "importance-weighted Q5_K is not implemented yet");
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        fit_q45_K_superblock(x, 31, -0.5f, 0.1f, 15, y[i].scales, &y[i].d, &y[i].dmin, L);
        // Low nibbles as Q4_K; the fifth bit of element 64*k + l (+32) is bit 2k (2k+1) of qh[l].
        uint8_t* qh = y[i].qh;
        uint8_t* ql = y[i].qs;
        std::memset(qh, 0, QK_K / 8);
        uint8_t m1 = 1, m2 = 2;
        for (int j = 0; j < QK_K; j += 64, ql += 32) {
            for (int l = 0; l < 32; ++l) {
                int l1 = L[j + l], l2 = L[j + l + 32];
                if (l1 > 15) { l1 -= 16; qh[l] |= m1; }
                if (l2 > 15) { l2 -= 16; qh[l] |= m2; }
                ql[l] = (uint8_t)(l1 | (l2 << 4));
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }
}

// --- Q6_K ---------------------------------------------------------------------------------------
// 16 groups of 16: x = d*sc*(q - 32) with q in 0..63 and a signed 8-bit sc per group.

void quantize_q6_K_impl(const float* x, block_q6_K* y, int64_t n, const float* quant_weights) {
    assert(n % QK_K == 0);
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float max_scale = 0.0f, max_abs_scale = 0.0f;
        for (int ib = 0; ib < QK_K / 16; ++ib) {
            const float* qw = quant_weights ? quant_weights + QK_K * i + 16 * ib : nullptr;
            const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, 1, qw);
            scales[ib] = scale;
            const float abs_scale = std::fabs(scale);
            if (abs_scale > max_abs_scale) { max_abs_scale = abs_scale; max_scale = scale; }
        }
        if (max_abs_scale < kGroupMaxEps) {
            std::memset(&y[i], 0, sizeof(block_q6_K));
            continue;
        }
        const float iscale = -128.0f / max_scale;
        y[i].d = f32_to_fp16(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ++ib) y[i].scales[ib] = (int8_t)std::min(127, nearest_int(iscale * scales[ib]));
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = fp16_to_f32(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                const int l = clamp_int(nearest_int(x[16 * j + ii] / d), -32, 31);
                L[16 * j + ii] = (int8_t)(l + 32);
            }
        }
        // Each 128 elements: ql holds low nibbles (l | l+64 in bytes 0..31, l+32 | l+96 in 32..63),
        // qh[l] holds the top 2 bits of l, l+32, l+64, l+96 at bits 0, 2, 4, 6.
        uint8_t* ql = y[i].ql;
        uint8_t* qh = y[i].qh;
        for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; ++l) {
                const int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
                ql[l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
                ql[l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
                qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
            }
        }
    }
}

} // namespace

// --- public quantizers ----------------------------------------------------------------------------

void quantize_row_q2_K(const float* src, void* dst, int64_t n) { quantize_q2_K_impl(src, static_cast<block_q2_K*>(dst), n, nullptr); }
void quantize_row_q3_K(const float* src, void* dst, int64_t n) { quantize_q3_K_impl(src, static_cast<block_q3_K*>(dst), n, nullptr); }
void quantize_row_q4_K(const float* src, void* dst, int64_t n) { quantize_q4_K_impl(src, static_cast<block_q4_K*>(dst), n, nullptr); }
void quantize_row_q5_K(const float* src, void* dst, int64_t n) { quantize_q5_K_impl(src, static_cast<block_q5_K*>(dst), n, nullptr); }
void quantize_row_q6_K(const float* src, void* dst, int64_t n) { quantize_q6_K_impl(src, static_cast<block_q6_K*>(dst), n, nullptr); }

// Q8_K (activations): the signed value of largest magnitude maps to -127 (so q never needs -128),
// d = 1/iscale kept as f32, and bsums carries the sum of each 16 quants for the K-quant dots' mins.
void quantize_row_q8_K(const float* x, void* dst, int64_t n) {
    assert(n % QK_K == 0);
    block_q8_K* y = static_cast<block_q8_K*>(dst);
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < QK_K; ++j) {
            const float ax = std::fabs(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
        if (!amax) {
            // ggml leaves bsums untouched here; zero them so the block is fully defined.
            std::memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; ++j) y[i].qs[j] = (int8_t)std::min(127, nearest_int(iscale * x[j]));
        for (int j = 0; j < QK_K / 16; ++j) {
            int sum = 0;
            for (int l = 0; l < 16; ++l) sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

// --- dequantizers -------------------------------------------------------------------------------

void dequantize_row_q2_K(const void* src, float* y, int64_t n) {
    const block_q2_K* x = static_cast<const block_q2_K*>(src);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_f32(x[i].d), min = fp16_to_f32(x[i].dmin);
        const uint8_t* q = x[i].qs;
        int is = 0;
        for (int k = 0; k < QK_K; k += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int half = 0; half < 2; ++half) {
                    const uint8_t sc = x[i].scales[is++];
                    const float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                    for (int l = 0; l < 16; ++l) *y++ = dl * ((q[16 * half + l] >> shift) & 3) - ml;
                }
            }
        }
    }
}

void dequantize_row_q3_K(const void* src, float* y, int64_t n) {
    const block_q3_K* x = static_cast<const block_q3_K*>(src);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d_all = fp16_to_f32(x[i].d);
        const uint8_t* q = x[i].qs;
        const uint8_t* hm = x[i].hmask;
        uint8_t m = 1;
        int is = 0;
        for (int k = 0; k < QK_K; k += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
                for (int half = 0; half < 2; ++half) {
                    const float dl = d_all * q3_K_scale(x[i].scales, is++);
                    for (int l = 16 * half; l < 16 * half + 16; ++l)
                        *y++ = dl * (((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
                }
            }
        }
    }
}

void dequantize_row_q4_K(const void* src, float* y, int64_t n) {
    const block_q4_K* x = static_cast<const block_q4_K*>(src);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_f32(x[i].d), min = fp16_to_f32(x[i].dmin);
        const uint8_t* q = x[i].qs;
        for (int j = 0, is = 0; j < QK_K; j += 64, q += 32, is += 2) {
            uint8_t sc, m;
            get_scale_min_k4(is, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

void dequantize_row_q5_K(const void* src, float* y, int64_t n) {
    const block_q5_K* x = static_cast<const block_q5_K*>(src);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_f32(x[i].d), min = fp16_to_f32(x[i].dmin);
        const uint8_t* ql = x[i].qs;
        const uint8_t* qh = x[i].qh;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0, is = 0; j < QK_K; j += 64, ql += 32, is += 2, u1 <<= 2, u2 <<= 2) {
            uint8_t sc, m;
            get_scale_min_k4(is, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
    }
}

void dequantize_row_q6_K(const void* src, float* y, int64_t n) {
    const block_q6_K* x = static_cast<const block_q6_K*>(src);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_f32(x[i].d);
        const uint8_t* ql = x[i].ql;
        const uint8_t* qh = x[i].qh;
        const int8_t* sc = x[i].scales;
        for (int k = 0; k < QK_K; k += 128, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                // (d*sc)*q, in ggml's order
                y[l] = d * sc[is] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

void dequantize_row_q8_K(const void* src, float* y, int64_t n) {
    const block_q8_K* x = static_cast<const block_q8_K*>(src);
    for (int64_t i = 0; i < n / QK_K; ++i)
        for (int j = 0; j < QK_K; ++j) *y++ = x[i].d * x[i].qs[j];
}

} // namespace pyllm
