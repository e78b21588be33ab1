// NEON kernels of the non-linear 4-bit types: GEMM of IQ4_NL weights against Q8_0 activations and
// of IQ4_XS weights against Q8_K (sdot), and both dequantizers (bit-identical to the reference).
// Compiled with the NEON flags (-march=armv8.2-a+dotprod+fp16) on aarch64 only; only
// register_iquant_neon_kernels has external linkage.
//
// A block's 16 nibble bytes are split into low nibbles (elements 0-15) and high nibbles (16-31) and
// looked up in ggml's 16-entry grid kvalues_iq4nl with one vqtbl1q each: signed bytes ready for
// sdot with the activations. IQ4_NL: two sdot per (row, token) block, one convert and one FMA with
// d_w*d_a. IQ4_XS: two sdot per 32-element sub-block times its 6-bit scale (ls - 32) into an
// int32 sum per super-block (|sum| < 256 * 127 * 127 * 32 per lane), one FMA per super-block.
#if defined(__aarch64__)

#include <arm_neon.h>

#include "kernels/kernels.h"
#include "kernels/tiling.h"
#include "quant/blocks.h"

namespace pyllm {

namespace {

inline float half_to_f32(uint16_t h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }

// 16 bytes of packed indices -> the grid values of elements 0-15 (lo) and 16-31 (hi).
inline void lookup32(const int8x16_t table, const uint8_t* qs, int8x16_t& lo, int8x16_t& hi) {
    const uint8x16_t x = vld1q_u8(qs);
    lo = vqtbl1q_s8(table, vandq_u8(x, vdupq_n_u8(0x0f)));
    hi = vqtbl1q_s8(table, vshrq_n_u8(x, 4));
}

// --- GEMM micro-kernels -----------------------------------------------------------------------------

struct IQ4_NLMK {
    static constexpr int kRows = 4, kToks = 4, kDecodeRows = 4;
    static constexpr size_t kChunkBytes = kChunkL1;

    template <int R, int T>
    static void tile(const GemmArgs& g, int64_t r0, int64_t t0) {
        const int64_t nb = g.k / QK4_NL;
        const block_iq4_nl* w[R];
        const block_q8_0* a[T];
        for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const block_iq4_nl*>(g.w + (r0 + r) * g.w_stride);
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const block_q8_0*>(g.a + (t0 + t) * g.a_stride);
        const int8x16_t table = vld1q_s8(kvalues_iq4nl);
        float32x4_t acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = vdupq_n_f32(0.0f);
        int64_t i = 0;
        do {  // nb >= 1
            int8x16_t y0[T], y1[T];
            float ad[T];
            for (int t = 0; t < T; ++t) {
                y0[t] = vld1q_s8(a[t][i].qs);
                y1[t] = vld1q_s8(a[t][i].qs + 16);
                ad[t] = half_to_f32(a[t][i].d);
            }
            for (int r = 0; r < R; ++r) {
                int8x16_t q0, q1;
                lookup32(table, w[r][i].qs, q0, q1);
                const float wd = half_to_f32(w[r][i].d);
                for (int t = 0; t < T; ++t) {
                    const int32x4_t p = vdotq_s32(vdotq_s32(vdupq_n_s32(0), q0, y0[t]), q1, y1[t]);
                    acc[r][t] = vfmaq_n_f32(acc[r][t], vcvtq_f32_s32(p), wd * ad[t]);
                }
            }
            ++i;
        } while (i < nb);
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) g.out[(t0 + t) * g.out_stride + r0 + r] = vaddvq_f32(acc[r][t]);
    }
};

struct IQ4_XSMK {
    static constexpr int kRows = 1, kToks = 4, kDecodeRows = 2;
    static constexpr size_t kChunkBytes = kChunkL1;

    template <int R, int T>
    static void tile(const GemmArgs& g, int64_t r0, int64_t t0) {
        const int64_t nb = g.k / QK_K;
        const block_iq4_xs* w[R];
        const block_q8_K* a[T];
        for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const block_iq4_xs*>(g.w + (r0 + r) * g.w_stride);
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const block_q8_K*>(g.a + (t0 + t) * g.a_stride);
        const int8x16_t table = vld1q_s8(kvalues_iq4nl);
        const int32x4_t zero = vdupq_n_s32(0);
        float32x4_t acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = vdupq_n_f32(0.0f);
        int64_t i = 0;
        do {  // nb >= 1
            for (int r = 0; r < R; ++r) {
                const block_iq4_xs& b = w[r][i];
                int32x4_t isum[T];
                for (int t = 0; t < T; ++t) isum[t] = zero;
                for (int ib = 0; ib < QK_K / 32; ++ib) {
                    int8x16_t q0, q1;
                    lookup32(table, b.qs + 16 * ib, q0, q1);
                    const int32_t sc = iq4_xs_scale(b, ib) - 32;
                    for (int t = 0; t < T; ++t) {
                        const int8_t* y = a[t][i].qs + 32 * ib;
                        const int32x4_t p = vdotq_s32(vdotq_s32(zero, q0, vld1q_s8(y)), q1, vld1q_s8(y + 16));
                        isum[t] = vmlaq_n_s32(isum[t], p, sc);
                    }
                }
                const float d = half_to_f32(b.d);
                for (int t = 0; t < T; ++t) acc[r][t] = vfmaq_n_f32(acc[r][t], vcvtq_f32_s32(isum[t]), d * a[t][i].d);
            }
            ++i;
        } while (i < nb);
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) g.out[(t0 + t) * g.out_stride + r0 + r] = vaddvq_f32(acc[r][t]);
    }
};

// --- dequantizers: d times the grid value, one rounded multiply as the reference ----------------------

inline void store_scaled16(const int8x16_t q, float d, float* y) {
    const int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_high_s8(q);
    vst1q_f32(y, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), d));
    vst1q_f32(y + 4, vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(lo)), d));
    vst1q_f32(y + 8, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), d));
    vst1q_f32(y + 12, vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(hi)), d));
}

void to_float_iq4_nl_neon(const void* src, float* y, int64_t n) {
    const block_iq4_nl* x = static_cast<const block_iq4_nl*>(src);
    const int8x16_t table = vld1q_s8(kvalues_iq4nl);
    for (int64_t i = 0; i < n / QK4_NL; ++i, y += QK4_NL) {
        int8x16_t lo, hi;
        lookup32(table, x[i].qs, lo, hi);
        const float d = half_to_f32(x[i].d);
        store_scaled16(lo, d, y);
        store_scaled16(hi, d, y + 16);
    }
}

void to_float_iq4_xs_neon(const void* src, float* y, int64_t n) {
    const block_iq4_xs* x = static_cast<const block_iq4_xs*>(src);
    const int8x16_t table = vld1q_s8(kvalues_iq4nl);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = half_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib, y += 32) {
            int8x16_t lo, hi;
            lookup32(table, x[i].qs + 16 * ib, lo, hi);
            const float dl = d * (iq4_xs_scale(x[i], ib) - 32);
            store_scaled16(lo, dl, y);
            store_scaled16(hi, dl, y + 16);
        }
    }
}

} // namespace

void register_iquant_neon_kernels(KernelTable& t) {
    t.gemm[TYPE_IQ4_NL] = gemm_tiled<IQ4_NLMK>;
    t.gemm[TYPE_IQ4_XS] = gemm_tiled<IQ4_XSMK>;
    t.to_float[TYPE_IQ4_NL] = to_float_iq4_nl_neon;
    t.to_float[TYPE_IQ4_XS] = to_float_iq4_xs_neon;
}

} // namespace pyllm

#else  // not aarch64: nothing to register

#include "kernels/kernels.h"
namespace pyllm {
void register_iquant_neon_kernels(KernelTable&) {}
} // namespace pyllm

#endif
