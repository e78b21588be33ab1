// NEON K-quant kernels: GEMM of Q2_K..Q6_K weights against Q8_K activations with sdot.
// Compiled with the NEON flags (-march=armv8.2-a+dotprod+fp16) on aarch64 only; the Q8_K
// activation quantizer lives in neon.cpp with the other quantizers.
//
// The integer formulation is the AVX2 one (kernels/x86/kquant_scales.h), per 256-element super-block:
//   sum_g sc[g] * dot16(q_g, y_g) - sum_g coef[g] * bsum[g]     (integers; g = 16-element group)
// with q the unsigned quants (0..63 at most, so they are valid signed bytes for sdot). coef is
// offset*sc for the types whose levels are q - offset (Q3_K: 4, Q6_K: 32); for the types with
// mins (Q2_K, Q4_K, Q5_K) it is the group's min, and that second sum is scaled by dmin, not d.
// Every integer sum fits int32 (worst, Q6_K: 256 * 63 * 127 * 128 < 2^31), so only the float
// steps differ from the reference, by accumulation order.
#if defined(__aarch64__)

#include <arm_neon.h>

#include <cstring>

#include "kernels/kernels.h"
#include "kernels/tiling.h"
#include "quant/blocks.h"

namespace pyllm {

namespace {

inline float half_to_f32(uint16_t h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }

// (bytes >> shift) & mask per byte; the shift is a run-time amount (ushl by a negative count).
inline uint8x16_t bits_at(const uint8_t* p, int shift, uint8_t mask) {
    return vandq_u8(vshlq_u8(vld1q_u8(p), vdupq_n_s8((int8_t)-shift)), vdupq_n_u8(mask));
}

// `value` in the bytes of p[0..15] that have bit `bit` set, else 0.
inline uint8x16_t bit_to_bytes(const uint8_t* p, int bit, uint8_t value) {
    return vandq_u8(vtstq_u8(vld1q_u8(p), vdupq_n_u8((uint8_t)(1u << bit))), vdupq_n_u8(value));
}

// --- per-type unpacking ---------------------------------------------------------------------------
//
// Per type: scales() -> the 16 group scales and coefs as int16 (groups 0-7, 8-15); chunk(c) -> the
// 32 unsigned quants of elements 32c..32c+31 in element order (q0: the first 16, q1: the rest).
// kScalePer32: the two groups of a chunk share one scale, so a chunk needs one multiply, not two.

struct Q2_KNeon {
    using W = block_q2_K;
    static constexpr bool kHasMin = true, kScalePer32 = false;
    static float d(const W& b) { return half_to_f32(b.d); }
    static float dmin(const W& b) { return half_to_f32(b.dmin); }
    static void scales(const W& b, int16x8_t sc[2], int16x8_t coef[2]) {  // low nibble scale, high nibble min
        const uint8x16_t x = vld1q_u8(b.scales);
        const uint8x16_t s = vandq_u8(x, vdupq_n_u8(0xF)), m = vshrq_n_u8(x, 4);
        sc[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(s)));
        sc[1] = vreinterpretq_s16_u16(vmovl_high_u8(s));
        coef[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(m)));
        coef[1] = vreinterpretq_s16_u16(vmovl_high_u8(m));
    }
    // 128-element halves; in each, bits 2s..2s+1 of the 32 bytes hold chunk s.
    static void chunk(const W& b, int c, int8x16_t& q0, int8x16_t& q1) {
        const uint8_t* p = b.qs + 32 * (c / 4);
        q0 = vreinterpretq_s8_u8(bits_at(p, 2 * (c % 4), 3));
        q1 = vreinterpretq_s8_u8(bits_at(p + 16, 2 * (c % 4), 3));
    }
};

struct Q3_KNeon {
    using W = block_q3_K;
    static constexpr bool kHasMin = false, kScalePer32 = false;
    static float d(const W& b) { return half_to_f32(b.d); }
    static float dmin(const W&) { return 0.0f; }
    // 16 six-bit scales with a +32 bias (quant/blocks.h unpacks them).
    static void scales(const W& b, int16x8_t sc[2], int16x8_t coef[2]) {
        uint8_t bytes[16];
        q3_K_scale_bytes(b.scales, bytes);
        const uint8x16_t s = vld1q_u8(bytes);
        sc[0] = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(s))), vdupq_n_s16(32));
        sc[1] = vsubq_s16(vreinterpretq_s16_u16(vmovl_high_u8(s)), vdupq_n_s16(32));
        coef[0] = vshlq_n_s16(sc[0], 2);
        coef[1] = vshlq_n_s16(sc[1], 2);
    }
    // Low two bits as Q2_K; hmask bit c is the third bit (level = q - 4).
    static void chunk(const W& b, int c, int8x16_t& q0, int8x16_t& q1) {
        const uint8_t* p = b.qs + 32 * (c / 4);
        q0 = vreinterpretq_s8_u8(vorrq_u8(bits_at(p, 2 * (c % 4), 3), bit_to_bytes(b.hmask, c, 4)));
        q1 = vreinterpretq_s8_u8(vorrq_u8(bits_at(p + 16, 2 * (c % 4), 3), bit_to_bytes(b.hmask + 16, c, 4)));
    }
};

// Q4_K / Q5_K: 8 six-bit scales and 8 six-bit mins in 12 bytes: entries 0-3 in the low 6 bits of
// bytes 0-3 (scales) and 4-7 (mins); entries 4-7 in the nibbles of bytes 8-11 plus the top two bits
// of bytes 0-3 (scales) and 4-7 (mins). Each is repeated for its chunk's two 16-groups.
inline void scales_mins_k4(const uint8_t* packed, int16x8_t sc[2], int16x8_t mins[2]) {
    uint8_t bytes[16];
    q4_K_scale_min_bytes(packed, bytes);
    const uint8x16_t x = vld1q_u8(bytes);  // s0..s7 | m0..m7
    const int16x8_t s = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(x)));
    const int16x8_t m = vreinterpretq_s16_u16(vmovl_high_u8(x));
    sc[0] = vzip1q_s16(s, s);
    sc[1] = vzip2q_s16(s, s);
    mins[0] = vzip1q_s16(m, m);
    mins[1] = vzip2q_s16(m, m);
}

struct Q4_KNeon {
    using W = block_q4_K;
    static constexpr bool kHasMin = true, kScalePer32 = true;
    static float d(const W& b) { return half_to_f32(b.d); }
    static float dmin(const W& b) { return half_to_f32(b.dmin); }
    static void scales(const W& b, int16x8_t sc[2], int16x8_t coef[2]) { scales_mins_k4(b.scales, sc, coef); }
    // 32 bytes per 64 elements: low nibbles are chunk 2j, high nibbles chunk 2j+1.
    static void chunk(const W& b, int c, int8x16_t& q0, int8x16_t& q1) {
        const uint8_t* p = b.qs + 32 * (c / 2);
        q0 = vreinterpretq_s8_u8(bits_at(p, 4 * (c % 2), 0xF));
        q1 = vreinterpretq_s8_u8(bits_at(p + 16, 4 * (c % 2), 0xF));
    }
};

struct Q5_KNeon {
    using W = block_q5_K;
    static constexpr bool kHasMin = true, kScalePer32 = true;
    static float d(const W& b) { return half_to_f32(b.d); }
    static float dmin(const W& b) { return half_to_f32(b.dmin); }
    static void scales(const W& b, int16x8_t sc[2], int16x8_t coef[2]) { scales_mins_k4(b.scales, sc, coef); }
    // Q4_K's nibbles, with bit c of qh[l] as the fifth bit.
    static void chunk(const W& b, int c, int8x16_t& q0, int8x16_t& q1) {
        const uint8_t* p = b.qs + 32 * (c / 2);
        q0 = vreinterpretq_s8_u8(vorrq_u8(bits_at(p, 4 * (c % 2), 0xF), bit_to_bytes(b.qh, c, 0x10)));
        q1 = vreinterpretq_s8_u8(vorrq_u8(bits_at(p + 16, 4 * (c % 2), 0xF), bit_to_bytes(b.qh + 16, c, 0x10)));
    }
};

struct Q6_KNeon {
    using W = block_q6_K;
    static constexpr bool kHasMin = false, kScalePer32 = false;
    static float d(const W& b) { return half_to_f32(b.d); }
    static float dmin(const W&) { return 0.0f; }
    static void scales(const W& b, int16x8_t sc[2], int16x8_t coef[2]) {  // int8 scales, levels q - 32
        const int8x16_t s = vld1q_s8(b.scales);
        sc[0] = vmovl_s8(vget_low_s8(s));
        sc[1] = vmovl_high_s8(s);
        coef[0] = vshlq_n_s16(sc[0], 5);
        coef[1] = vshlq_n_s16(sc[1], 5);
    }
    // Per 128-element half h: chunk w has the low (w < 2) or high nibbles of ql[64h + 32(w%2) ..],
    // with bits 2w..2w+1 of qh[32h ..] on top.
    static void chunk(const W& b, int c, int8x16_t& q0, int8x16_t& q1) {
        const int h = c / 4, w = c % 4;
        const uint8_t* ql = b.ql + 64 * h + 32 * (w % 2);
        const uint8_t* qh = b.qh + 32 * h;
        q0 = vreinterpretq_s8_u8(vorrq_u8(bits_at(ql, 4 * (w / 2), 0xF), vshlq_n_u8(bits_at(qh, 2 * w, 3), 4)));
        q1 = vreinterpretq_s8_u8(vorrq_u8(bits_at(ql + 16, 4 * (w / 2), 0xF), vshlq_n_u8(bits_at(qh + 16, 2 * w, 3), 4)));
    }
};

// --- GEMM micro-kernel -----------------------------------------------------------------------------
//
// One weight super-block is unpacked chunk by chunk and each chunk feeds T tokens: sdot of 16 quants
// with 16 activations -> 4 int32 lanes, times the group's scale into the token's int32 sum. The
// bsums correction is four widening multiplies per super-block and token. The float steps happen
// once per super-block: the integer sums are exact, so only their conversion rounds.

template <class KT>
struct KQuantMK {
    using W = typename KT::W;
    static constexpr int kRows = 1, kToks = 4, kDecodeRows = 2;
    static constexpr size_t kChunkBytes = kChunkL1;

    template <int R, int T>
    static void tile(const GemmArgs& g, int64_t r0, int64_t t0) {
        const int64_t nb = g.k / QK_K;
        const W* w[R];
        const block_q8_K* a[T];
        for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const W*>(g.w + (r0 + r) * g.w_stride);
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const block_q8_K*>(g.a + (t0 + t) * g.a_stride);
        float32x4_t acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = vdupq_n_f32(0.0f);
        const int32x4_t zero = vdupq_n_s32(0);
        int64_t i = 0;
        do {  // nb >= 1
            for (int r = 0; r < R; ++r) {
                const W& b = w[r][i];
                int16x8_t sc[2], coef[2];
                KT::scales(b, sc, coef);
                // The scales as scalars: vmla by a scalar is one instruction, lane picks need constants.
                int16_t s[16];
                vst1q_s16(s, sc[0]);
                vst1q_s16(s + 8, sc[1]);
                int32x4_t isum[T];
                for (int t = 0; t < T; ++t) isum[t] = zero;
                for (int c = 0; c < 8; ++c) {
                    int8x16_t q0, q1;
                    KT::chunk(b, c, q0, q1);
                    for (int t = 0; t < T; ++t) {
                        const int8_t* y = a[t][i].qs + 32 * c;
                        if constexpr (KT::kScalePer32) {
                            const int32x4_t p = vdotq_s32(vdotq_s32(zero, q0, vld1q_s8(y)), q1, vld1q_s8(y + 16));
                            isum[t] = vmlaq_n_s32(isum[t], p, s[2 * c]);
                        } else {
                            isum[t] = vmlaq_n_s32(isum[t], vdotq_s32(zero, q0, vld1q_s8(y)), s[2 * c]);
                            isum[t] = vmlaq_n_s32(isum[t], vdotq_s32(zero, q1, vld1q_s8(y + 16)), s[2 * c + 1]);
                        }
                    }
                }
                const float d = KT::d(b);
                for (int t = 0; t < T; ++t) {
                    const int16x8_t bs0 = vld1q_s16(a[t][i].bsums), bs1 = vld1q_s16(a[t][i].bsums + 8);
                    int32x4_t corr = vmull_s16(vget_low_s16(bs0), vget_low_s16(coef[0]));
                    corr = vmlal_high_s16(corr, bs0, coef[0]);
                    corr = vmlal_s16(corr, vget_low_s16(bs1), vget_low_s16(coef[1]));
                    corr = vmlal_high_s16(corr, bs1, coef[1]);
                    const float dy = a[t][i].d;
                    if constexpr (KT::kHasMin) {
                        acc[r][t] = vfmaq_n_f32(acc[r][t], vcvtq_f32_s32(isum[t]), d * dy);
                        acc[r][t] = vfmsq_f32(acc[r][t], vcvtq_f32_s32(corr), vdupq_n_f32(KT::dmin(b) * dy));
                    } else {
                        acc[r][t] = vfmaq_n_f32(acc[r][t], vcvtq_f32_s32(vsubq_s32(isum[t], corr)), d * dy);
                    }
                }
            }
            ++i;
        } while (i < nb);
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) g.out[(t0 + t) * g.out_stride + r0 + r] = vaddvq_f32(acc[r][t]);
    }
};

} // namespace

void register_kquant_neon_kernels(KernelTable& t) {
    t.gemm[TYPE_Q2_K] = gemm_tiled<KQuantMK<Q2_KNeon>>;
    t.gemm[TYPE_Q3_K] = gemm_tiled<KQuantMK<Q3_KNeon>>;
    t.gemm[TYPE_Q4_K] = gemm_tiled<KQuantMK<Q4_KNeon>>;
    t.gemm[TYPE_Q5_K] = gemm_tiled<KQuantMK<Q5_KNeon>>;
    t.gemm[TYPE_Q6_K] = gemm_tiled<KQuantMK<Q6_KNeon>>;
}

} // namespace pyllm

#else  // not aarch64: nothing to register

#include "kernels/kernels.h"
namespace pyllm {
void register_kquant_neon_kernels(KernelTable&) {}
} // namespace pyllm

#endif
