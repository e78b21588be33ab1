// K-quant . Q8_K reference dot products, registered into the reference kernel table.
// They follow ggml's scalar integer formulation: integer sums per sub-block, float products per
// super-block, and (for Q3_K..Q6_K) eight float lanes summed at the end, so results match
// llama.cpp's generic kernels to the last bit and its SIMD kernels to rounding.
#include <cstring>

#include "core/fp16.h"
#include "kernels/ref/ref.h"
#include "quant/blocks.h"

namespace pyllm {

namespace {

// ggml's generic kernels accumulate element l of every 8 into lane l (int32), then add
// d*lane into 8 float sums that are folded at the very end. Integer sums are exact in any
// order; the float steps are what must keep this shape.
struct Lanes8 {
    float sums[8] = {};
    int32_t acc[8];
    void begin_block() { std::memset(acc, 0, sizeof(acc)); }
    // acc[l] += scale * q8[l]*a[l] for 16 consecutive elements (two groups of 8).
    void add16(int scale, const int8_t* q8, const int8_t* a) {
        for (int l = 0; l < 8; ++l) acc[l] += scale * (int16_t)(q8[l] * a[l]);
        for (int l = 0; l < 8; ++l) acc[l] += scale * (int16_t)(q8[l + 8] * a[l + 8]);
    }
    void end_block(float d) { for (int l = 0; l < 8; ++l) sums[l] += d * acc[l]; }
    float fold(float sumf) const { for (int l = 0; l < 8; ++l) sumf += sums[l]; return sumf; }
};

// The 8 six-bit scales and mins of Q4_K / Q5_K (layout in quant/kquants.cpp).
void unpack_scales_mins_k4(const uint8_t* q, uint8_t* scales, uint8_t* mins) {
    for (int j = 0; j < 4; ++j) {
        scales[j] = q[j] & 63;
        mins[j] = q[j + 4] & 63;
    }
    for (int j = 4; j < 8; ++j) {
        scales[j] = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        mins[j] = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

} // namespace

// --- Q2_K -----------------------------------------------------------------------------------------

float vec_dot_q2_K_q8_K_ref(int64_t k, const void* w, const void* a) {
    const block_q2_K* x = static_cast<const block_q2_K*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(a);
    float sumf = 0.0f;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const uint8_t* q2 = x[i].qs;
        const int8_t* q8 = y[i].qs;
        const uint8_t* sc = x[i].scales;
        // sum_j dmin*m_j * sum(q8 of group j): the mins need only the activation's group sums.
        int summs = 0;
        for (int j = 0; j < 16; ++j) summs += y[i].bsums[j] * (sc[j] >> 4);
        const float dall = y[i].d * fp16_to_f32(x[i].d);
        const float dmin = y[i].d * fp16_to_f32(x[i].dmin);
        int isum = 0, is = 0;
        for (int n = 0; n < QK_K / 128; ++n, q2 += 32) {
            for (int shift = 0; shift < 8; shift += 2, q8 += 32) {
                for (int half = 0; half < 2; ++half) {
                    const int d = sc[is++] & 0xF;
                    int isuml = 0;
                    for (int l = 16 * half; l < 16 * half + 16; ++l) isuml += q8[l] * ((q2[l] >> shift) & 3);
                    isum += d * isuml;
                }
            }
        }
        sumf += dall * isum - dmin * summs;
    }
    return sumf;
}

// --- Q3_K -----------------------------------------------------------------------------------------

float vec_dot_q3_K_q8_K_ref(int64_t k, const void* w, const void* a) {
    const block_q3_K* x = static_cast<const block_q3_K*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(a);
    int8_t vals[QK_K];
    Lanes8 lanes;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        // Unpack to signed levels q - 4 (the high bit set means "no -4").
        const uint8_t* q3 = x[i].qs;
        const uint8_t* hm = x[i].hmask;
        int8_t* v = vals;
        uint8_t m = 1;
        for (int j = 0; j < QK_K; j += 128, q3 += 32)
            for (int shift = 0; shift < 8; shift += 2, m <<= 1, v += 32)
                for (int l = 0; l < 32; ++l) v[l] = (int8_t)(((q3[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
        int scales[16];
        for (int j = 0; j < 16; ++j) {
            const int low = j < 8 ? x[i].scales[j] & 0xF : x[i].scales[j - 8] >> 4;
            const int high = (x[i].scales[8 + j % 4] >> (2 * (j / 4))) & 3;
            scales[j] = (low | (high << 4)) - 32;
        }
        lanes.begin_block();
        for (int j = 0; j < QK_K / 16; ++j) lanes.add16(scales[j], y[i].qs + 16 * j, vals + 16 * j);
        lanes.end_block(fp16_to_f32(x[i].d) * y[i].d);
    }
    return lanes.fold(0.0f);
}

// --- Q4_K / Q5_K ----------------------------------------------------------------------------------

// x = d*sc*q - dmin*m per group of 32, so dot = d*dy*sum(sc*q*q8) - dmin*dy*sum(m*bsum).
template <bool FIFTH_BIT, typename Block>
static float dot_q45_K(int64_t k, const Block* x, const block_q8_K* y) {
    int8_t vals[QK_K];
    Lanes8 lanes;
    float sumf = 0.0f;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const uint8_t* q4 = x[i].qs;
        int8_t* v = vals;
        uint8_t m = 1;
        for (int j = 0; j < QK_K / 64; ++j, q4 += 32) {
            for (int nib = 0; nib < 2; ++nib, m <<= 1, v += 32) {
                for (int l = 0; l < 32; ++l) {
                    int q = nib ? q4[l] >> 4 : q4[l] & 0xF;
                    if constexpr (FIFTH_BIT) q += (x[i].qh[l] & m) ? 16 : 0;
                    v[l] = (int8_t)q;
                }
            }
        }
        uint8_t scales[8], mins[8];
        unpack_scales_mins_k4(x[i].scales, scales, mins);
        int sumi = 0;
        for (int j = 0; j < QK_K / 16; ++j) sumi += y[i].bsums[j] * mins[j / 2];
        lanes.begin_block();
        for (int j = 0; j < QK_K / 32; ++j) {
            lanes.add16(scales[j], y[i].qs + 32 * j, vals + 32 * j);
            lanes.add16(scales[j], y[i].qs + 32 * j + 16, vals + 32 * j + 16);
        }
        lanes.end_block(fp16_to_f32(x[i].d) * y[i].d);
        const float dmin = fp16_to_f32(x[i].dmin) * y[i].d;
        sumf -= dmin * sumi;
    }
    return lanes.fold(sumf);
}

float vec_dot_q4_K_q8_K_ref(int64_t k, const void* w, const void* a) {
    return dot_q45_K<false>(k, static_cast<const block_q4_K*>(w), static_cast<const block_q8_K*>(a));
}

float vec_dot_q5_K_q8_K_ref(int64_t k, const void* w, const void* a) {
    return dot_q45_K<true>(k, static_cast<const block_q5_K*>(w), static_cast<const block_q8_K*>(a));
}

// --- Q6_K -----------------------------------------------------------------------------------------

float vec_dot_q6_K_q8_K_ref(int64_t k, const void* w, const void* a) {
    const block_q6_K* x = static_cast<const block_q6_K*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(a);
    int8_t vals[QK_K];
    Lanes8 lanes;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const uint8_t* ql = x[i].ql;
        const uint8_t* qh = x[i].qh;
        int8_t* v = vals;
        for (int j = 0; j < QK_K; j += 128, v += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; ++l) {
                v[l] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                v[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                v[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                v[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        lanes.begin_block();
        for (int j = 0; j < QK_K / 16; ++j) lanes.add16(x[i].scales[j], y[i].qs + 16 * j, vals + 16 * j);
        lanes.end_block(fp16_to_f32(x[i].d) * y[i].d);
    }
    return lanes.fold(0.0f);
}

// --- registration -----------------------------------------------------------------------------------

void register_kquant_ref_kernels(KernelTable& t) {
    t.gemm[TYPE_Q2_K] = gemm_from_dot<vec_dot_q2_K_q8_K_ref>;
    t.gemm[TYPE_Q3_K] = gemm_from_dot<vec_dot_q3_K_q8_K_ref>;
    t.gemm[TYPE_Q4_K] = gemm_from_dot<vec_dot_q4_K_q8_K_ref>;
    t.gemm[TYPE_Q5_K] = gemm_from_dot<vec_dot_q5_K_q8_K_ref>;
    t.gemm[TYPE_Q6_K] = gemm_from_dot<vec_dot_q6_K_q8_K_ref>;
}

} // namespace pyllm
