// Importance-weighted quantizers of the 32-element block types (see weighted.h). Each element's
// weight is its column importance times sqrt(sigma2 + x^2), sigma2 the row's mean square: the
// importance says which inputs matter, the second factor keeps large weights from being crushed.
// Float expressions keep ggml's operation order (this directory builds with -ffp-contract=off).
#include "quant/weighted.h"

#include <cassert>
#include <cmath>
#include <cstring>
#include <algorithm>

#include "core/fp16.h"
#include "quant/blocks.h"
#include "quant/fit.h"

namespace pyllm {

namespace {

// Round half to even via the 1.5*2^23 trick, as ggml does (valid for |v| < 2^22).
inline int nearest_int(float v) {
    assert(std::fabs(v) <= 4194303.f);
    const float biased = v + 12582912.f;
    int32_t bits;
    std::memcpy(&bits, &biased, sizeof(bits));
    return (bits & 0x007fffff) - 0x00400000;
}

// Asymmetric levels 0..nmax with x ≈ scale*L - the_min (min <= 0 kept at 0 when all x >= 0):
// start from the min..max grid, then try nstep+1 inverse scales around nmax/(max-min), refit scale
// and min by weighted least squares for each level assignment, keep the best weighted error.
float make_qkx3_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep) {
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
    if (max <= min) {
        std::memset(L, 0, n);
        *the_min = -min;
        return 0.0f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_err = 0;
    for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)std::max(0, std::min(nmax, l));
        const float diff = scale * L[i] + min - x[i];
        best_err += weights[i] * (diff * diff);
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * (x[i] - min));
            l = std::max(0, std::min(nmax, l));
            Laux[i] = (uint8_t)l;
            const float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float err = 0;
            for (int i = 0; i < n; ++i) {
                const float diff = this_scale * Laux[i] + this_min - x[i];
                err += weights[i] * (diff * diff);
            }
            if (err < best_err) {
                std::memcpy(L, Laux, n);
                best_err = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

float row_mean_square(const float* x, int64_t n) {
    float sum_x2 = 0;
    for (int64_t j = 0; j < n; ++j) sum_x2 += x[j] * x[j];
    return sum_x2 / n;
}

void block_weights(const float* xb, const float* qw, float sigma2, float* weight) {
    for (int j = 0; j < 32; ++j) weight[j] = qw[j] * std::sqrt(sigma2 + xb[j] * xb[j]);
}

// Packs 32 five-bit levels: low nibbles as in 4-bit blocks, fifth bits into qh.
void pack_q5(const uint8_t* L, uint8_t* qs, uint8_t* qh_out) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        qs[j] = (uint8_t)((L[j] & 0x0F) | ((L[j + 16] & 0x0F) << 4));
        qh |= (uint32_t)((L[j] & 0x10u) >> 4) << j;
        qh |= (uint32_t)((L[j + 16] & 0x10u) >> 4) << (j + 16);
    }
    std::memcpy(qh_out, &qh, sizeof(qh));
}

} // namespace

void quantize_row_q4_0_weighted(const float* x, void* dst, int64_t n, const float* qw) {
    assert(n % QK4_0 == 0);
    block_q4_0* y = static_cast<block_q4_0*>(dst);
    const float sigma2 = row_mean_square(x, n);
    float weight[QK4_0];
    int8_t L[QK4_0];
    for (int64_t ib = 0; ib < n / QK4_0; ++ib) {
        const float* xb = x + QK4_0 * ib;
        block_weights(xb, qw + QK4_0 * ib, sigma2, weight);
        const float d = make_qx_quants(QK4_0, 8, xb, L, 1, weight);
        y[ib].d = f32_to_fp16(d);
        for (int j = 0; j < 16; ++j) y[ib].qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
    }
}

void quantize_row_q5_0_weighted(const float* x, void* dst, int64_t n, const float* qw) {
    assert(n % QK5_0 == 0);
    block_q5_0* y = static_cast<block_q5_0*>(dst);
    const float sigma2 = row_mean_square(x, n);
    float weight[QK5_0];
    int8_t L[QK5_0];
    for (int64_t ib = 0; ib < n / QK5_0; ++ib) {
        const float* xb = x + QK5_0 * ib;
        block_weights(xb, qw + QK5_0 * ib, sigma2, weight);
        const float d = make_qx_quants(QK5_0, 16, xb, L, 1, weight);
        y[ib].d = f32_to_fp16(d);
        pack_q5(reinterpret_cast<const uint8_t*>(L), y[ib].qs, y[ib].qh);
    }
}

void quantize_row_q4_1_weighted(const float* x, void* dst, int64_t n, const float* qw) {
    assert(n % QK4_1 == 0);
    block_q4_1* y = static_cast<block_q4_1*>(dst);
    const float sigma2 = row_mean_square(x, n);
    float weight[QK4_1];
    uint8_t L[QK4_1], Laux[QK4_1];
    for (int64_t ib = 0; ib < n / QK4_1; ++ib) {
        const float* xb = x + QK4_1 * ib;
        block_weights(xb, qw + QK4_1 * ib, sigma2, weight);
        float min;
        const float d = make_qkx3_quants(QK4_1, 15, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36);
        y[ib].d = f32_to_fp16(d);
        y[ib].m = f32_to_fp16(-min);
        for (int j = 0; j < 16; ++j) y[ib].qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
    }
}

void quantize_row_q5_1_weighted(const float* x, void* dst, int64_t n, const float* qw) {
    assert(n % QK5_1 == 0);
    block_q5_1* y = static_cast<block_q5_1*>(dst);
    const float sigma2 = row_mean_square(x, n);
    float weight[QK5_1];
    uint8_t L[QK5_1], Laux[QK5_1];
    for (int64_t ib = 0; ib < n / QK5_1; ++ib) {
        const float* xb = x + QK5_1 * ib;
        block_weights(xb, qw + QK5_1 * ib, sigma2, weight);
        float min;
        const float d = make_qkx3_quants(QK5_1, 31, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36);
        y[ib].d = f32_to_fp16(d);
        y[ib].m = f32_to_fp16(-min);
        pack_q5(L, y[ib].qs, y[ib].qh);
    }
}

weighted_quantize_fn weighted_quantizer(Type t) {
    switch (t) {
        case TYPE_Q4_0: return quantize_row_q4_0_weighted;
        case TYPE_Q4_1: return quantize_row_q4_1_weighted;
        case TYPE_Q5_0: return quantize_row_q5_0_weighted;
        case TYPE_Q5_1: return quantize_row_q5_1_weighted;
        default: return nullptr;
    }
}

} // namespace pyllm
