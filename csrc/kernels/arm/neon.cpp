// The NEON kernel table (ARMv8.2-A + dotprod + fp16): register-tiled sdot GEMM for the 32-element
// block types, float GEMM for F32/F16/BF16, the Q8_0/Q8_1/Q8_K activation quantizers, dequantizers
// and the F16 attention helpers. K-quant GEMM is in kquants_neon.cpp.
// Compiled with -march=armv8.2-a+dotprod+fp16 on aarch64 only (the flags the dispatcher checks); elsewhere the table is nullptr.
// Only kernel_table_neon() has external linkage (see kernels/tiling.h for why).
#if defined(__aarch64__)

#include <arm_neon.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>

#include "kernels/kernels.h"
#include "kernels/ref/ref.h"
#include "kernels/tiling.h"
#include "quant/blocks.h"

namespace pyllm {

void register_kquant_neon_kernels(KernelTable& t);  // kquants_neon.cpp
void register_kquant_x8_neon_kernels(KernelTable& t);  // kquants_x8_neon.cpp
void register_iquant_neon_kernels(KernelTable& t);  // iquants_neon.cpp

namespace {

// --- helpers ------------------------------------------------------------------------------------

inline float half_to_f32(uint16_t h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }
inline uint16_t f32_to_half(float f) { return vget_lane_u16(vreinterpret_u16_f16(vcvt_f16_f32(vdupq_n_f32(f))), 0); }  // nearest even
inline float bf16_bits_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; std::memcpy(&f, &u, 4); return f; }

// The compiler may fuse a multiply into a following add; the reference rounds the product first.
inline float32x4_t rounded(float32x4_t v) {
    __asm__("" : "+w"(v));
    return v;
}

inline float32x4_t load4_f16(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
inline float32x4_t load4_bf16(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }

// 16 bytes of packed nibbles -> elements 0..15 (low nibbles) and 16..31 (high nibbles), 0..15.
inline void unpack_nibbles(const uint8_t* qs, uint8x16_t& lo, uint8x16_t& hi) {
    const uint8x16_t x = vld1q_u8(qs);
    lo = vandq_u8(x, vdupq_n_u8(0x0f));
    hi = vshrq_n_u8(x, 4);
}

// 0x10 in byte j where bit j of the little-endian u32 qh is set, for bytes 0..15 and 16..31.
inline void unpack_fifth_bits(const uint8_t* qh_bytes, uint8x16_t& lo, uint8x16_t& hi) {
    uint32_t qh;
    std::memcpy(&qh, qh_bytes, 4);
    static const uint8_t kBit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t bit = vld1q_u8(kBit);
    // Bytes 0-7 see qh byte 0, 8-15 byte 1 (and 2, 3 for the high half).
    const uint8x16_t b01 = vcombine_u8(vdup_n_u8((uint8_t)qh), vdup_n_u8((uint8_t)(qh >> 8)));
    const uint8x16_t b23 = vcombine_u8(vdup_n_u8((uint8_t)(qh >> 16)), vdup_n_u8((uint8_t)(qh >> 24)));
    lo = vandq_u8(vtstq_u8(b01, bit), vdupq_n_u8(0x10));
    hi = vandq_u8(vtstq_u8(b23, bit), vdupq_n_u8(0x10));
}

// --- activation quantizers (byte-identical to the reference) ---------------------------------------

// max |x| of n (multiple of 16) floats, skipping NaN like the reference (fmaxnm prefers the number).
inline float abs_max(const float* x, int n) {
    float32x4_t m = vdupq_n_f32(0.0f);
    for (int j = 0; j < n; j += 4) m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(x + j)));
    return vmaxnmvq_f32(m);
}

// round(x*id), half away from zero (vcvta is exactly roundf), 32 values; returns their sum.
inline int quantize_32(const float* x, float id, int8_t* qs) {
    int32x4_t sum = vdupq_n_s32(0);
    for (int j = 0; j < 32; j += 8) {
        const int32x4_t a = vcvtaq_s32_f32(vmulq_n_f32(vld1q_f32(x + j), id));
        const int32x4_t b = vcvtaq_s32_f32(vmulq_n_f32(vld1q_f32(x + j + 4), id));
        sum = vaddq_s32(sum, vaddq_s32(a, b));
        vst1_s8(qs + j, vqmovn_s16(vcombine_s16(vqmovn_s32(a), vqmovn_s32(b))));
    }
    return vaddvq_s32(sum);
}

void quantize_row_q8_0_neon(const float* x, void* dst, int64_t n) {
    block_q8_0* y = static_cast<block_q8_0*>(dst);
    for (int64_t i = 0; i < n / QK8_0; ++i, x += QK8_0) {
        const float d = abs_max(x, QK8_0) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = f32_to_half(d);
        quantize_32(x, id, y[i].qs);
    }
}

void quantize_row_q8_1_neon(const float* x, void* dst, int64_t n) {
    block_q8_1* y = static_cast<block_q8_1*>(dst);
    for (int64_t i = 0; i < n / QK8_1; ++i, x += QK8_1) {
        const float d = abs_max(x, QK8_1) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = f32_to_half(d);
        const int sum = quantize_32(x, id, y[i].qs);
        y[i].s = f32_to_half((float)sum * d);
    }
}

void quantize_row_q8_K_neon(const float* x, void* dst, int64_t n) {
    block_q8_K* y = static_cast<block_q8_K*>(dst);
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        const float amax = abs_max(x, QK_K);
        if (!(amax > 0.0f)) {
            std::memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        float max = 0.0f;  // the signed value of the first element of largest magnitude
        for (int j = 0; j < QK_K; ++j) {
            if (__builtin_fabsf(x[j]) == amax) { max = x[j]; break; }
        }
        const float iscale = -127.0f / max;
        // The reference rounds with the 1.5*2^23 trick: nearest, ties to even (vcvtn).
        for (int j = 0; j < QK_K; j += 16) {
            int32x4_t q[4];
            for (int l = 0; l < 4; ++l) q[l] = vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + j + 4 * l), iscale)), vdupq_n_s32(127));
            y[i].bsums[j / 16] = (int16_t)vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])));
            const int16x8_t lo = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
            const int16x8_t hi = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
            vst1q_s8(y[i].qs + j, vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi)));
        }
        y[i].d = 1 / iscale;
    }
}

// --- dequantizers (bit-identical: int->float exact, one rounded multiply, then + m) -----------------

inline void store_scaled16(int8x16_t q, float d, const float* m, float* y) {
    const int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_s8(vget_high_s8(q));
    const int32x4_t parts[4] = {vmovl_s16(vget_low_s16(lo)), vmovl_s16(vget_high_s16(lo)),
                                vmovl_s16(vget_low_s16(hi)), vmovl_s16(vget_high_s16(hi))};
    for (int j = 0; j < 4; ++j) {
        float32x4_t f = rounded(vmulq_n_f32(vcvtq_f32_s32(parts[j]), d));
        if (m) f = vaddq_f32(f, vdupq_n_f32(*m));
        vst1q_f32(y + 4 * j, f);
    }
}

template <int OFFSET, bool FIFTH, bool MIN, class B>
void to_float_block32(const void* src, float* y, int64_t n) {
    const B* x = static_cast<const B*>(src);
    for (int64_t i = 0; i < n / 32; ++i, y += 32) {
        uint8x16_t lo, hi;
        unpack_nibbles(x[i].qs, lo, hi);
        if constexpr (FIFTH) {
            uint8x16_t h0, h1;
            unpack_fifth_bits(x[i].qh, h0, h1);
            lo = vorrq_u8(lo, h0);
            hi = vorrq_u8(hi, h1);
        }
        const int8x16_t off = vdupq_n_s8(OFFSET);
        float m = 0.0f;
        if constexpr (MIN) m = half_to_f32(x[i].m);
        const float d = half_to_f32(x[i].d);
        store_scaled16(vsubq_s8(vreinterpretq_s8_u8(lo), off), d, MIN ? &m : nullptr, y);
        store_scaled16(vsubq_s8(vreinterpretq_s8_u8(hi), off), d, MIN ? &m : nullptr, y + 16);
    }
}

void to_float_q8_0_neon(const void* src, float* y, int64_t n) {
    const block_q8_0* x = static_cast<const block_q8_0*>(src);
    for (int64_t i = 0; i < n / QK8_0; ++i, y += QK8_0) {
        const float d = half_to_f32(x[i].d);
        store_scaled16(vld1q_s8(x[i].qs), d, nullptr, y);
        store_scaled16(vld1q_s8(x[i].qs + 16), d, nullptr, y + 16);
    }
}

void to_float_f16_neon(const void* src, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, load4_f16(x + i));
    for (; i < n; ++i) y[i] = half_to_f32(x[i]);
}
void to_float_bf16_neon(const void* src, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, load4_bf16(x + i));
    for (; i < n; ++i) y[i] = bf16_bits_to_f32(x[i]);
}

// --- F16 attention helpers ------------------------------------------------------------------------

void f32_to_f16_neon(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1_u16(y + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    for (; i < n; ++i) y[i] = f32_to_half(x[i]);
}

// Attention's P.V: a tile of R rows x 16 columns in 16 accumulators; each V row is converted once
// per tile and multiplied into every row.
inline float32x4_t load4_v(const uint16_t* p) { return load4_f16(p); }
inline float32x4_t load4_v(const float* p) { return vld1q_f32(p); }
inline float v_to_f32(uint16_t h) { return half_to_f32(h); }
inline float v_to_f32(float f) { return f; }

template <int R, typename V>
void pv_tile_neon(int64_t nb, int64_t d, int64_t i, int w, const float* p, int64_t p_stride,
                  const V* v, int64_t v_stride, float* out) {
    // w: 4-float columns in this tile (1..4)
    float32x4_t acc[R][4];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < w; ++c) acc[r][c] = vld1q_f32(out + r * d + i + 4 * c);
    for (int64_t j = 0; j < nb; ++j) {
        float32x4_t vv[4];
        for (int c = 0; c < w; ++c) vv[c] = load4_v(v + j * v_stride + i + 4 * c);
        for (int r = 0; r < R; ++r) {
            const float pj = p[r * p_stride + j];
            for (int c = 0; c < w; ++c) acc[r][c] = vfmaq_n_f32(acc[r][c], vv[c], pj);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < w; ++c) vst1q_f32(out + r * d + i + 4 * c, acc[r][c]);
}

// V in f16 (the cache) or f32 (a dequantized block of a quantized cache).
template <typename V>
void pv_neon(int64_t n_rows, int64_t nb, int64_t d, const float* p, int64_t p_stride,
             const V* v, int64_t v_stride, float* out) {
    const int64_t dv = d / 4 * 4;
    for (int64_t r0 = 0; r0 < n_rows; r0 += 4) {
        const int64_t rows = std::min<int64_t>(4, n_rows - r0);
        const float* pr = p + r0 * p_stride;
        float* o = out + r0 * d;
        for (int64_t i = 0; i < dv; i += 16) {
            const int w = (int)std::min<int64_t>(4, (dv - i) / 4);
            switch (rows) {
                case 4: pv_tile_neon<4, V>(nb, d, i, w, pr, p_stride, v, v_stride, o); break;
                case 3: pv_tile_neon<3, V>(nb, d, i, w, pr, p_stride, v, v_stride, o); break;
                case 2: pv_tile_neon<2, V>(nb, d, i, w, pr, p_stride, v, v_stride, o); break;
                default: pv_tile_neon<1, V>(nb, d, i, w, pr, p_stride, v, v_stride, o); break;
            }
        }
        for (int64_t r = r0; r < r0 + rows; ++r)
            for (int64_t j = 0; j < nb; ++j)
                for (int64_t i = dv; i < d; ++i) out[r * d + i] += p[r * p_stride + j] * v_to_f32(v[j * v_stride + i]);
    }
}

// e^x for x clamped to [-87, 88]: x = n*ln2 + r with |r| <= ln2/2, e^r by its degree-6 Taylor
// polynomial (relative error ~1e-7), and 2^n put into the exponent bits.
inline float32x4_t exp_neon(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.0f)), vdupq_n_f32(88.0f));
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504f)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693145751953125f));  // ln2 in two parts
    r = vfmsq_f32(r, n, vdupq_n_f32(1.428606765330187e-06f));
    float32x4_t e = vdupq_n_f32(1.0f / 720);
    for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) e = vfmaq_f32(vdupq_n_f32(c), e, r);
    const int32x4_t bits = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(e, vreinterpretq_f32_s32(bits));
}

float exp_sum_neon(float* s, int64_t n, float m) {
    const float32x4_t mv = vdupq_n_f32(m);
    float32x4_t acc = vdupq_n_f32(0.0f);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        const float32x4_t e = exp_neon(vsubq_f32(vld1q_f32(s + j), mv));
        vst1q_f32(s + j, e);
        acc = vaddq_f32(acc, e);
    }
    float sum = vaddvq_f32(acc);
    for (; j < n; ++j) {
        s[j] = std::exp(s[j] - m);
        sum += s[j];
    }
    return sum;
}

void swiglu_neon(float* gate, const float* up, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t g = vld1q_f32(gate + i);
        const float32x4_t e = exp_neon(vnegq_f32(g));
        vst1q_f32(gate + i, vmulq_f32(vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0f), e)), vld1q_f32(up + i)));
    }
    for (; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// --- float GEMM micro-kernel -----------------------------------------------------------------------

struct F32Weights {
    using elem = float;
    static float32x4_t load4(const float* p) { return vld1q_f32(p); }
    static float scalar(const float* p) { return *p; }
};
struct F16Weights {
    using elem = uint16_t;
    static float32x4_t load4(const uint16_t* p) { return load4_f16(p); }
    static float scalar(const uint16_t* p) { return half_to_f32(*p); }
};
struct BF16Weights {
    using elem = uint16_t;
    static float32x4_t load4(const uint16_t* p) { return load4_bf16(p); }
    static float scalar(const uint16_t* p) { return bf16_bits_to_f32(*p); }
};

template <class WT>
struct FloatMK {
    static constexpr int kRows = 4, kToks = 4, kDecodeRows = 4;
    static constexpr size_t kChunkBytes = kChunkL2;

    template <int R, int T>
    static void tile(const GemmArgs& g, int64_t r0, int64_t t0) {
        using E = typename WT::elem;
        const E* w[R];
        const float* a[T];
        for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const E*>(g.w + (r0 + r) * g.w_stride);
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const float*>(g.a + (t0 + t) * g.a_stride);
        float32x4_t acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = vdupq_n_f32(0.0f);
        int64_t i = 0;
        for (; i + 4 <= g.k; i += 4) {
            float32x4_t wv[R];
            for (int r = 0; r < R; ++r) wv[r] = WT::load4(w[r] + i);
            for (int t = 0; t < T; ++t) {
                const float32x4_t av = vld1q_f32(a[t] + i);
                for (int r = 0; r < R; ++r) acc[r][t] = vfmaq_f32(acc[r][t], wv[r], av);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) {
                float s = vaddvq_f32(acc[r][t]);
                for (int64_t j = i; j < g.k; ++j) s += WT::scalar(w[r] + j) * a[t][j];
                g.out[(t0 + t) * g.out_stride + r0 + r] = s;
            }
    }
};

// --- integer GEMM micro-kernel for the 32-element block types ------------------------------------
//
// sdot multiplies signed bytes, so weights are unpacked to their signed levels (q - offset) and
// each (row, token) block costs two sdot, one convert and one FMA with d_w*d_a. Types with a min
// (Q4_1, Q5_1) add m*s per block, spread over the 4 lanes as s/4.

struct Q4_0Weights {
    using W = block_q4_0; using A = block_q8_0;
    static constexpr bool kHasMin = false;
    static void quants(const W& b, int8x16_t& lo, int8x16_t& hi) {
        uint8x16_t l, h;
        unpack_nibbles(b.qs, l, h);
        lo = vsubq_s8(vreinterpretq_s8_u8(l), vdupq_n_s8(8));
        hi = vsubq_s8(vreinterpretq_s8_u8(h), vdupq_n_s8(8));
    }
};
struct Q4_1Weights {
    using W = block_q4_1; using A = block_q8_1;
    static constexpr bool kHasMin = true;
    static void quants(const W& b, int8x16_t& lo, int8x16_t& hi) {
        uint8x16_t l, h;
        unpack_nibbles(b.qs, l, h);
        lo = vreinterpretq_s8_u8(l);
        hi = vreinterpretq_s8_u8(h);
    }
};
struct Q5_0Weights {
    using W = block_q5_0; using A = block_q8_0;
    static constexpr bool kHasMin = false;
    static void quants(const W& b, int8x16_t& lo, int8x16_t& hi) {
        uint8x16_t l, h, h0, h1;
        unpack_nibbles(b.qs, l, h);
        unpack_fifth_bits(b.qh, h0, h1);
        lo = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(l, h0)), vdupq_n_s8(16));
        hi = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(h, h1)), vdupq_n_s8(16));
    }
};
struct Q5_1Weights {
    using W = block_q5_1; using A = block_q8_1;
    static constexpr bool kHasMin = true;
    static void quants(const W& b, int8x16_t& lo, int8x16_t& hi) {
        uint8x16_t l, h, h0, h1;
        unpack_nibbles(b.qs, l, h);
        unpack_fifth_bits(b.qh, h0, h1);
        lo = vreinterpretq_s8_u8(vorrq_u8(l, h0));
        hi = vreinterpretq_s8_u8(vorrq_u8(h, h1));
    }
};
struct Q8_0Weights {
    using W = block_q8_0; using A = block_q8_0;
    static constexpr bool kHasMin = false;
    static void quants(const W& b, int8x16_t& lo, int8x16_t& hi) {
        lo = vld1q_s8(b.qs);
        hi = vld1q_s8(b.qs + 16);
    }
};

template <class QT>
struct QuantMK {
    using W = typename QT::W;
    using A = typename QT::A;
    static constexpr int kRows = 4, kToks = 4, kDecodeRows = 4;
    static constexpr size_t kChunkBytes = kChunkL1;

    template <int R, int T>
    static void tile(const GemmArgs& g, int64_t r0, int64_t t0) {
        const int64_t nb = g.k / 32;
        const W* w[R];
        const A* a[T];
        for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const W*>(g.w + (r0 + r) * g.w_stride);
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const A*>(g.a + (t0 + t) * g.a_stride);
        float32x4_t acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = vdupq_n_f32(0.0f);
        int64_t i = 0;
        do {  // nb >= 1
            int8x16_t y0[T], y1[T];
            float ad[T], as4[T];
            for (int t = 0; t < T; ++t) {
                y0[t] = vld1q_s8(a[t][i].qs);
                y1[t] = vld1q_s8(a[t][i].qs + 16);
                ad[t] = half_to_f32(a[t][i].d);
                if constexpr (QT::kHasMin) as4[t] = half_to_f32(a[t][i].s) * 0.25f;
            }
            for (int r = 0; r < R; ++r) {
                int8x16_t q0, q1;
                QT::quants(w[r][i], q0, q1);
                const float wd = half_to_f32(w[r][i].d);
                for (int t = 0; t < T; ++t) {
                    const int32x4_t p = vdotq_s32(vdotq_s32(vdupq_n_s32(0), q0, y0[t]), q1, y1[t]);
                    acc[r][t] = vfmaq_n_f32(acc[r][t], vcvtq_f32_s32(p), wd * ad[t]);
                }
                if constexpr (QT::kHasMin) {
                    const float wm = half_to_f32(w[r][i].m);
                    for (int t = 0; t < T; ++t) acc[r][t] = vaddq_f32(acc[r][t], vdupq_n_f32(wm * as4[t]));
                }
            }
            ++i;
        } while (i < nb);
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) g.out[(t0 + t) * g.out_stride + r0 + r] = vaddvq_f32(acc[r][t]);
    }
};

// --- GPTQ's XᵀX tile (kernels.h): 4 rows x 2 columns per step, 4 lanes each -----------------------

void xtx_tile_neon(const float* xt, int64_t n_pad, int64_t i0, int64_t ni, int64_t j0, int64_t nj, float* out,
                   int64_t ld) {
    for (int64_t ib = 0; ib < ni; ib += 4) {
        const float* a[4];
        for (int p = 0; p < 4; ++p) a[p] = xt + (i0 + ib + p) * n_pad;
        for (int64_t j = j0; j < j0 + nj; j += 2) {
            const float* b0 = xt + j * n_pad;
            const float* b1 = b0 + n_pad;
            float32x4_t acc[4][2];
            for (int p = 0; p < 4; ++p) acc[p][0] = acc[p][1] = vdupq_n_f32(0.0f);
            for (int64_t t = 0; t < n_pad; t += 4) {
                const float32x4_t y0 = vld1q_f32(b0 + t), y1 = vld1q_f32(b1 + t);
                for (int p = 0; p < 4; ++p) {
                    const float32x4_t x = vld1q_f32(a[p] + t);
                    acc[p][0] = vfmaq_f32(acc[p][0], x, y0);
                    acc[p][1] = vfmaq_f32(acc[p][1], x, y1);
                }
            }
            for (int p = 0; p < 4; ++p)
                for (int q = 0; q < 2; ++q) out[(ib + p) * ld + (j - j0) + q] = vaddvq_f32(acc[p][q]);
        }
    }
}

// --- the table ----------------------------------------------------------------------------------

KernelTable make_neon_table() {
    KernelTable t{};
    t.isa = "neon";
    t.gemm[TYPE_F32] = gemm_tiled<FloatMK<F32Weights>>;
    t.gemm[TYPE_F16] = gemm_tiled<FloatMK<F16Weights>>;
    t.gemm[TYPE_BF16] = gemm_tiled<FloatMK<BF16Weights>>;
    t.gemm[TYPE_Q4_0] = gemm_tiled<QuantMK<Q4_0Weights>>;
    t.gemm[TYPE_Q4_1] = gemm_tiled<QuantMK<Q4_1Weights>>;
    t.gemm[TYPE_Q5_0] = gemm_tiled<QuantMK<Q5_0Weights>>;
    t.gemm[TYPE_Q5_1] = gemm_tiled<QuantMK<Q5_1Weights>>;
    t.gemm[TYPE_Q8_0] = gemm_tiled<QuantMK<Q8_0Weights>>;
    t.quantize_act[TYPE_Q8_0] = quantize_row_q8_0_neon;
    t.quantize_act[TYPE_Q8_1] = quantize_row_q8_1_neon;
    t.quantize_act[TYPE_Q8_K] = quantize_row_q8_K_neon;
    t.to_float[TYPE_F16] = to_float_f16_neon;
    t.to_float[TYPE_BF16] = to_float_bf16_neon;
    t.to_float[TYPE_Q4_0] = to_float_block32<8, false, false, block_q4_0>;
    t.to_float[TYPE_Q4_1] = to_float_block32<0, false, true, block_q4_1>;
    t.to_float[TYPE_Q5_0] = to_float_block32<16, true, false, block_q5_0>;
    t.to_float[TYPE_Q5_1] = to_float_block32<0, true, true, block_q5_1>;
    t.to_float[TYPE_Q8_0] = to_float_q8_0_neon;
    t.f32_to_f16 = f32_to_f16_neon;
    t.pv_f16 = pv_neon<uint16_t>;
    t.pv_f32 = pv_neon<float>;
    t.exp_sum = exp_sum_neon;
    t.swiglu = swiglu_neon;
    t.xtx_tile = xtx_tile_neon;
    register_kquant_neon_kernels(t);
    register_kquant_x8_neon_kernels(t);
    register_iquant_neon_kernels(t);
    fill_missing_from_ref(t);
    return t;
}

} // namespace

const KernelTable* kernel_table_neon() {
    static const KernelTable table = make_neon_table();
    return &table;
}

} // namespace pyllm

#else  // not aarch64: this ISA is not compiled here

#include "kernels/kernels.h"
namespace pyllm {
const KernelTable* kernel_table_neon() { return nullptr; }
} // namespace pyllm

#endif
