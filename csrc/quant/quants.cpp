// Reference (de)quantizers of the 32-element block types and the float types.
#include "quant/quants.h"

#include <cassert>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <algorithm>

#include "core/fp16.h"
#include "quant/blocks.h"

namespace pyllm {

namespace {

// roundf (halves away from zero) without the libm call that a baseline x86-64 build makes for every
// element (no SSE4.1 roundps): 5x faster Q8_0 quantization. Exact for |v| < 2^23; quantized values
// here are at most 127.5 in magnitude.
inline float round_half_away(float v) {
    const float t = (float)(int32_t)v;  // toward zero
    const float r = v - t;              // exact
    return t + (r >= 0.5f ? 1.0f : (r <= -0.5f ? -1.0f : 0.0f));
}

// max |x[j]| over a block (n a multiple of 8), in 8 independent lanes the compiler turns into one
// vector max: max is exact, so the order does not matter; std::max(acc, NaN) keeps acc, as the
// running form's comparisons skip a NaN.
inline float absmax(const float* x, int n) {
    float lane[8] = {};
    for (int j = 0; j < n; j += 8)
        for (int k = 0; k < 8; ++k) lane[k] = std::max(lane[k], std::fabs(x[j + k]));
    float amax = 0.0f;
    for (float v : lane) amax = std::max(amax, v);
    return amax;
}

// The block's value of largest magnitude, the first one if several tie, as ggml's running
// `if (amax < fabs(x)) { amax = fabs(x); max = x; }` finds it, in two passes the compiler can
// vectorize. An all-zero block gives +0 (the running form never updates max).
inline float signed_absmax(const float* x, int n) {
    const float amax = absmax(x, n);
    if (amax == 0.0f) return 0.0f;
    int j = 0;
    while (std::fabs(x[j]) != amax) ++j;
    return x[j];
}

} // namespace

// --- float types -------------------------------------------------------------------------------

void dequantize_row_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
void quantize_row_f32(const float* src, void* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }

void dequantize_row_f16(const void* src, float* dst, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_f32(x[i]);
}
void quantize_row_f16(const float* src, void* dst, int64_t n) {
    uint16_t* y = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) y[i] = f32_to_fp16(src[i]);
}
void dequantize_row_bf16(const void* src, float* dst, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(x[i]);
}
void quantize_row_bf16(const float* src, void* dst, int64_t n) {
    uint16_t* y = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) y[i] = f32_to_bf16(src[i]);
}

// --- 4-bit -------------------------------------------------------------------------------------
// Nibble layout: byte j holds element j (low nibble) and element j+16 (high nibble).

void quantize_row_q4_0(const float* x, void* dst, int64_t n) {
    assert(n % QK4_0 == 0);
    block_q4_0* y = static_cast<block_q4_0*>(dst);
    for (int64_t i = 0; i < n / QK4_0; ++i, x += QK4_0) {
        // The signed value of largest magnitude maps to -8, so the grid spends its extra negative
        // step on the side that needs it.
        const float max = signed_absmax(x, QK4_0);
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = f32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            const int q0 = std::min<int8_t>(15, (int8_t)(x[j] * id + 8.5f));  // truncation, as ggml
            const int q1 = std::min<int8_t>(15, (int8_t)(x[j + QK4_0 / 2] * id + 8.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void dequantize_row_q4_0(const void* src, float* y, int64_t n) {
    const block_q4_0* x = static_cast<const block_q4_0*>(src);
    for (int64_t i = 0; i < n / QK4_0; ++i, y += QK4_0) {
        const float d = fp16_to_f32(x[i].d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            y[j] = ((x[i].qs[j] & 0x0f) - 8) * d;
            y[j + QK4_0 / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void quantize_row_q4_1(const float* x, void* dst, int64_t n) {
    assert(n % QK4_1 == 0);
    block_q4_1* y = static_cast<block_q4_1*>(dst);
    for (int64_t i = 0; i < n / QK4_1; ++i, x += QK4_1) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK4_1; ++j) { min = std::min(min, x[j]); max = std::max(max, x[j]); }
        const float d = (max - min) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = f32_to_fp16(d);
        y[i].m = f32_to_fp16(min);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            const int q0 = std::min<int8_t>(15, (int8_t)((x[j] - min) * id + 0.5f));
            const int q1 = std::min<int8_t>(15, (int8_t)((x[j + QK4_1 / 2] - min) * id + 0.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void dequantize_row_q4_1(const void* src, float* y, int64_t n) {
    const block_q4_1* x = static_cast<const block_q4_1*>(src);
    for (int64_t i = 0; i < n / QK4_1; ++i, y += QK4_1) {
        const float d = fp16_to_f32(x[i].d), m = fp16_to_f32(x[i].m);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            y[j] = (x[i].qs[j] & 0x0f) * d + m;
            y[j + QK4_1 / 2] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

// --- 5-bit -------------------------------------------------------------------------------------
// Low four bits as in 4-bit; bit j of qh (little-endian u32) is the fifth bit of element j.

void quantize_row_q5_0(const float* x, void* dst, int64_t n) {
    assert(n % QK5_0 == 0);
    block_q5_0* y = static_cast<block_q5_0*>(dst);
    for (int64_t i = 0; i < n / QK5_0; ++i, x += QK5_0) {
        const float max = signed_absmax(x, QK5_0);
        const float d = max / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = f32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; ++j) {
            const int q0 = std::min<int8_t>(31, (int8_t)(x[j] * id + 16.5f));
            const int q1 = std::min<int8_t>(31, (int8_t)(x[j + QK5_0 / 2] * id + 16.5f));
            y[i].qs[j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
            qh |= (uint32_t)((q0 >> 4) & 1) << j;
            qh |= (uint32_t)((q1 >> 4) & 1) << (j + QK5_0 / 2);
        }
        std::memcpy(y[i].qh, &qh, sizeof(qh));
    }
}

void dequantize_row_q5_0(const void* src, float* y, int64_t n) {
    const block_q5_0* x = static_cast<const block_q5_0*>(src);
    for (int64_t i = 0; i < n / QK5_0; ++i, y += QK5_0) {
        const float d = fp16_to_f32(x[i].d);
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, sizeof(qh));
        for (int j = 0; j < QK5_0 / 2; ++j) {
            const int h0 = (qh >> j) & 1, h1 = (qh >> (j + QK5_0 / 2)) & 1;
            y[j] = (((x[i].qs[j] & 0x0f) | (h0 << 4)) - 16) * d;
            y[j + QK5_0 / 2] = (((x[i].qs[j] >> 4) | (h1 << 4)) - 16) * d;
        }
    }
}

void quantize_row_q5_1(const float* x, void* dst, int64_t n) {
    assert(n % QK5_1 == 0);
    block_q5_1* y = static_cast<block_q5_1*>(dst);
    for (int64_t i = 0; i < n / QK5_1; ++i, x += QK5_1) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK5_1; ++j) { min = std::min(min, x[j]); max = std::max(max, x[j]); }
        const float d = (max - min) / 31.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = f32_to_fp16(d);
        y[i].m = f32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_1 / 2; ++j) {
            const int q0 = (uint8_t)((x[j] - min) * id + 0.5f);
            const int q1 = (uint8_t)((x[j + QK5_1 / 2] - min) * id + 0.5f);
            y[i].qs[j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
            qh |= (uint32_t)((q0 >> 4) & 1) << j;
            qh |= (uint32_t)((q1 >> 4) & 1) << (j + QK5_1 / 2);
        }
        std::memcpy(y[i].qh, &qh, sizeof(qh));
    }
}

void dequantize_row_q5_1(const void* src, float* y, int64_t n) {
    const block_q5_1* x = static_cast<const block_q5_1*>(src);
    for (int64_t i = 0; i < n / QK5_1; ++i, y += QK5_1) {
        const float d = fp16_to_f32(x[i].d), m = fp16_to_f32(x[i].m);
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, sizeof(qh));
        for (int j = 0; j < QK5_1 / 2; ++j) {
            const int h0 = (qh >> j) & 1, h1 = (qh >> (j + QK5_1 / 2)) & 1;
            y[j] = ((x[i].qs[j] & 0x0f) | (h0 << 4)) * d + m;
            y[j + QK5_1 / 2] = ((x[i].qs[j] >> 4) | (h1 << 4)) * d + m;
        }
    }
}

// --- 8-bit -------------------------------------------------------------------------------------

void quantize_row_q8_0(const float* x, void* dst, int64_t n) {
    assert(n % QK8_0 == 0);
    block_q8_0* y = static_cast<block_q8_0*>(dst);
    for (int64_t i = 0; i < n / QK8_0; ++i, x += QK8_0) {
        const float amax = absmax(x, QK8_0);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = f32_to_fp16(d);
        for (int j = 0; j < QK8_0; ++j) y[i].qs[j] = (int8_t)round_half_away(x[j] * id);
    }
}

void dequantize_row_q8_0(const void* src, float* y, int64_t n) {
    const block_q8_0* x = static_cast<const block_q8_0*>(src);
    for (int64_t i = 0; i < n / QK8_0; ++i, y += QK8_0) {
        const float d = fp16_to_f32(x[i].d);
        for (int j = 0; j < QK8_0; ++j) y[j] = x[i].qs[j] * d;
    }
}

void quantize_row_q8_1(const float* x, void* dst, int64_t n) {
    assert(n % QK8_1 == 0);
    block_q8_1* y = static_cast<block_q8_1*>(dst);
    for (int64_t i = 0; i < n / QK8_1; ++i, x += QK8_1) {
        const float amax = absmax(x, QK8_1);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = f32_to_fp16(d);
        int sum = 0;
        for (int j = 0; j < QK8_1; ++j) {
            y[i].qs[j] = (int8_t)round_half_away(x[j] * id);
            sum += y[i].qs[j];
        }
        // s = d * sum(q): lets a Q4_1/Q5_1 dot product add the weights' offset m in one multiply.
        y[i].s = f32_to_fp16(sum * d);
    }
}

void dequantize_row_q8_1(const void* src, float* y, int64_t n) {
    const block_q8_1* x = static_cast<const block_q8_1*>(src);
    for (int64_t i = 0; i < n / QK8_1; ++i, y += QK8_1) {
        const float d = fp16_to_f32(x[i].d);
        for (int j = 0; j < QK8_1; ++j) y[j] = x[i].qs[j] * d;
    }
}

} // namespace pyllm
