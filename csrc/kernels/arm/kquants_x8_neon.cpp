// NEON (dotprod) GEMM over the x8 layout (kernels.h) of Q4_K, Q5_K and Q6_K against Q8_K
// activations. A run's 32 bytes are two 16-byte registers, rows 0-3 and rows 4-7, 4 bytes each:
// sdot with the activation's 4 bytes broadcast leaves row L's 4-element dot in int32 lane L % 4,
// so the lanes are the outputs (no horizontal sums). The quants (0..63 at most) are valid signed
// bytes. Sub-block sums are int32 from the start (no int16 limit as in AVX2 maddubs), scaled once
// per sub-block. Compiled with the NEON flags on aarch64 only; only the registrar is external.
#if defined(__aarch64__)

#include <arm_neon.h>

#include <cstring>
#include <initializer_list>

#include "kernels/kernels.h"
#include "kernels/kx8_tiling.h"
#include "quant/blocks.h"

namespace pyllm {

namespace {

inline int8x16_t bcast4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return vreinterpretq_s8_s32(vdupq_n_s32(v));
}
inline float32x4_t halves4(const uint8_t* p) { return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p))); }

// Pair-order bytes (16 per pair of sub-blocks: row L's sub-blocks 2p, 2p+1 at 2L, 2L+1): rows 0-7's
// byte for the even (first) and odd sub-block.
inline void split_pair(uint8x16_t pair, uint8x8_t& even, uint8x8_t& odd) {
    even = vget_low_u8(vuzp1q_u8(pair, pair));
    odd = vget_low_u8(vuzp2q_u8(pair, pair));
}
inline int32x4_t lo4(int16x8_t v) { return vmovl_s16(vget_low_s16(v)); }
inline int32x4_t hi4(int16x8_t v) { return vmovl_s16(vget_high_s16(v)); }

// Q4_K / Q5_K (column layout in kernels/ref/kquants_x8.cpp).
template <bool kQ5>
struct K45X8 {
    static constexpr int kCol = kQ5 ? 1408 : 1152, kQh = 128, kQs = kQ5 ? 384 : 128, kToks = 4;

    template <int T>
    static void tile(const uint8_t* w, int64_t nb, const uint8_t* const* a_rows, float* out, int64_t out_stride, bool add) {
        const block_q8_K* a[T];
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const block_q8_K*>(a_rows[t]);
        const uint8x16_t low4 = vdupq_n_u8(0x0f);
        float32x4_t acc[T][2];
        for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = vdupq_n_f32(0.0f);
        for (int64_t i = 0; i < nb; ++i) {
            const uint8_t* col = w + i * kCol;
            int32x4_t isum[T][2], corr[T][2];
            for (int t = 0; t < T; ++t) isum[t][0] = isum[t][1] = corr[t][0] = corr[t][1] = vdupq_n_s32(0);
            for (int jj = 0; jj < 4; ++jj) {  // sub-blocks 2jj (low nibbles) and 2jj+1 (high)
                const uint8x16_t sm = vld1q_u8(col + 32 + 16 * jj);
                const uint8x16_t mlb = vld1q_u8(col + 96 + 16 * (jj & 1));
                const uint8x16_t mnib = jj < 2 ? vandq_u8(mlb, low4) : vshrq_n_u8(mlb, 4);
                const uint8x16_t mins = vorrq_u8(mnib, vshlq_n_u8(vshrq_n_u8(sm, 6), 4));
                uint8x8_t se, so, me, mo;
                split_pair(vandq_u8(sm, vdupq_n_u8(63)), se, so);
                split_pair(mins, me, mo);
                const int16x8_t sc_lo = vreinterpretq_s16_u16(vmovl_u8(se)), sc_hi = vreinterpretq_s16_u16(vmovl_u8(so));
                const int16x8_t mn_lo = vreinterpretq_s16_u16(vmovl_u8(me)), mn_hi = vreinterpretq_s16_u16(vmovl_u8(mo));
                int32x4_t dlo[T][2], dhi[T][2];
                for (int t = 0; t < T; ++t) dlo[t][0] = dlo[t][1] = dhi[t][0] = dhi[t][1] = vdupq_n_s32(0);
                for (int r = 0; r < 8; ++r) {
                    const uint8_t* run = col + kQs + 32 * (8 * jj + r);
                    uint8x16_t lo[2], hi[2];
                    for (int h = 0; h < 2; ++h) {
                        const uint8x16_t raw = vld1q_u8(run + 16 * h);
                        lo[h] = vandq_u8(raw, low4);
                        hi[h] = vshrq_n_u8(raw, 4);
                        if constexpr (kQ5) {
                            const uint8x16_t qh = vld1q_u8(col + kQh + 32 * r + 16 * h);
                            const uint8x16_t x10 = vdupq_n_u8(0x10);
                            lo[h] = vorrq_u8(lo[h], vandq_u8(vtstq_u8(qh, vdupq_n_u8((uint8_t)(1u << (2 * jj)))), x10));
                            hi[h] = vorrq_u8(hi[h], vandq_u8(vtstq_u8(qh, vdupq_n_u8((uint8_t)(2u << (2 * jj)))), x10));
                        }
                    }
                    for (int t = 0; t < T; ++t) {
                        const int8_t* q8 = a[t][i].qs + 64 * jj + 4 * r;
                        const int8x16_t yl = bcast4(q8), yh = bcast4(q8 + 32);
                        for (int h = 0; h < 2; ++h) {
                            dlo[t][h] = vdotq_s32(dlo[t][h], vreinterpretq_s8_u8(lo[h]), yl);
                            dhi[t][h] = vdotq_s32(dhi[t][h], vreinterpretq_s8_u8(hi[h]), yh);
                        }
                    }
                }
                for (int t = 0; t < T; ++t) {
                    isum[t][0] = vmlaq_s32(vmlaq_s32(isum[t][0], dlo[t][0], lo4(sc_lo)), dhi[t][0], lo4(sc_hi));
                    isum[t][1] = vmlaq_s32(vmlaq_s32(isum[t][1], dlo[t][1], hi4(sc_lo)), dhi[t][1], hi4(sc_hi));
                    const int16_t* bs = a[t][i].bsums + 4 * jj;
                    const int32_t b_lo = bs[0] + bs[1], b_hi = bs[2] + bs[3];
                    corr[t][0] = vmlaq_n_s32(vmlaq_n_s32(corr[t][0], lo4(mn_lo), b_lo), lo4(mn_hi), b_hi);
                    corr[t][1] = vmlaq_n_s32(vmlaq_n_s32(corr[t][1], hi4(mn_lo), b_lo), hi4(mn_hi), b_hi);
                }
            }
            for (int h = 0; h < 2; ++h) {
                const float32x4_t dw = halves4(col + 8 * h), mw = halves4(col + 16 + 8 * h);
                for (int t = 0; t < T; ++t) {
                    const float dy = a[t][i].d;
                    acc[t][h] = vfmaq_f32(acc[t][h], vcvtq_f32_s32(isum[t][h]), vmulq_n_f32(dw, dy));
                    acc[t][h] = vfmsq_f32(acc[t][h], vcvtq_f32_s32(corr[t][h]), vmulq_n_f32(mw, dy));
                }
            }
        }
        for (int t = 0; t < T; ++t)
            for (int h = 0; h < 2; ++h) {
                float* o = out + t * out_stride + 4 * h;
                vst1q_f32(o, add ? vaddq_f32(vld1q_f32(o), acc[t][h]) : acc[t][h]);
            }
    }
};

// Q6_K (column layout in kernels/ref/kquants_x8.cpp): levels q - 32, so
// dot = sum_j sc_j * (dot(q, y)_j - 32 * bsum16_j).
struct K6X8 {
    static constexpr int kCol = 1680, kToks = 4;

    template <int T>
    static void tile(const uint8_t* w, int64_t nb, const uint8_t* const* a_rows, float* out, int64_t out_stride, bool add) {
        const block_q8_K* a[T];
        for (int t = 0; t < T; ++t) a[t] = reinterpret_cast<const block_q8_K*>(a_rows[t]);
        const uint8x16_t low4 = vdupq_n_u8(0x0f), x30 = vdupq_n_u8(0x30);
        float32x4_t acc[T][2];
        for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = vdupq_n_f32(0.0f);
        for (int64_t i = 0; i < nb; ++i) {
            const uint8_t* col = w + i * kCol;
            const uint8_t* ql = col + 144;
            const uint8_t* qhp = col + 1168;
            int16x8_t sc[16];  // sub-block j's scales, rows 0-7
            for (int p = 0; p < 8; ++p) {
                uint8x8_t e, o;
                split_pair(vld1q_u8(col + 16 + 16 * p), e, o);
                sc[2 * p] = vmovl_s8(vreinterpret_s8_u8(e));
                sc[2 * p + 1] = vmovl_s8(vreinterpret_s8_u8(o));
            }
            int32x4_t isum[T][2];
            for (int t = 0; t < T; ++t) {
                // The offset term first: -32 * sum_j sc_j * bsum16_j.
                int32x4_t c0 = vdupq_n_s32(0), c1 = vdupq_n_s32(0);
                for (int j = 0; j < 16; ++j) {
                    c0 = vmlaq_n_s32(c0, lo4(sc[j]), a[t][i].bsums[j]);
                    c1 = vmlaq_n_s32(c1, hi4(sc[j]), a[t][i].bsums[j]);
                }
                isum[t][0] = vmulq_n_s32(c0, -32);
                isum[t][1] = vmulq_n_s32(c1, -32);
            }
            for (int hh = 0; hh < 2; ++hh)
                for (int s = 0; s < 2; ++s) {
                    int32x4_t d[T][4][2];
                    for (int t = 0; t < T; ++t)
                        for (int v = 0; v < 4; ++v) d[t][v][0] = d[t][v][1] = vdupq_n_s32(0);
                    for (int m = 4 * s; m < 4 * s + 4; ++m) {
                        uint8x16_t q[4][2];
                        for (int h = 0; h < 2; ++h) {
                            const uint8x16_t qa = vld1q_u8(ql + 32 * (16 * hh + m) + 16 * h);
                            const uint8x16_t qb = vld1q_u8(ql + 32 * (16 * hh + 8 + m) + 16 * h);
                            const uint8x16_t qh = vld1q_u8(qhp + 32 * (8 * hh + m) + 16 * h);
                            q[0][h] = vorrq_u8(vandq_u8(qa, low4), vandq_u8(vshlq_n_u8(qh, 4), x30));
                            q[1][h] = vorrq_u8(vandq_u8(qb, low4), vandq_u8(vshlq_n_u8(qh, 2), x30));
                            q[2][h] = vorrq_u8(vshrq_n_u8(qa, 4), vandq_u8(qh, x30));
                            q[3][h] = vorrq_u8(vshrq_n_u8(qb, 4), vandq_u8(vshrq_n_u8(qh, 2), x30));
                        }
                        for (int t = 0; t < T; ++t)
                            for (int v = 0; v < 4; ++v) {
                                const int8x16_t y = bcast4(a[t][i].qs + 128 * hh + 32 * v + 4 * m);
                                for (int h = 0; h < 2; ++h) d[t][v][h] = vdotq_s32(d[t][v][h], vreinterpretq_s8_u8(q[v][h]), y);
                            }
                    }
                    for (int v = 0; v < 4; ++v) {
                        const int16x8_t scj = sc[8 * hh + 2 * v + s];
                        for (int t = 0; t < T; ++t) {
                            isum[t][0] = vmlaq_s32(isum[t][0], d[t][v][0], lo4(scj));
                            isum[t][1] = vmlaq_s32(isum[t][1], d[t][v][1], hi4(scj));
                        }
                    }
                }
            for (int h = 0; h < 2; ++h) {
                const float32x4_t dw = halves4(col + 8 * h);
                for (int t = 0; t < T; ++t)
                    acc[t][h] = vfmaq_f32(acc[t][h], vcvtq_f32_s32(isum[t][h]), vmulq_n_f32(dw, a[t][i].d));
            }
        }
        for (int t = 0; t < T; ++t)
            for (int h = 0; h < 2; ++h) {
                float* o = out + t * out_stride + 4 * h;
                vst1q_f32(o, add ? vaddq_f32(vld1q_f32(o), acc[t][h]) : acc[t][h]);
            }
    }
};

} // namespace

void register_kquant_x8_neon_kernels(KernelTable& t) {
    const KernelTable& ref = *kernel_table_ref();
    t.gemm_x8[TYPE_Q4_K] = gemm_kx8_tiled<K45X8<false>>;
    t.gemm_x8[TYPE_Q5_K] = gemm_kx8_tiled<K45X8<true>>;
    t.gemm_x8[TYPE_Q6_K] = gemm_kx8_tiled<K6X8>;
    for (Type type : {TYPE_Q4_K, TYPE_Q5_K, TYPE_Q6_K}) t.repack_x8[type] = ref.repack_x8[type];
}

} // namespace pyllm

#else  // not aarch64: nothing to register

#include "kernels/kernels.h"
namespace pyllm {
void register_kquant_x8_neon_kernels(KernelTable&) {}
} // namespace pyllm

#endif
