// The reference kernel table: plain scalar loops, the truth every SIMD table is tested against.
// Dot products follow ggml's integer formulation (int sums per block, then one float multiply)
// so results match llama.cpp's to rounding.
#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "kernels/kernels.h"
#include "kernels/ref/ref.h"
#include "quant/blocks.h"
#include "quant/quants.h"

namespace pyllm {

// --- row dot products: weight row (k elements) . activation row ----------------------------------

float vec_dot_f32_ref(int64_t k, const void* w, const void* a) {
    const float* x = static_cast<const float*>(w);
    const float* y = static_cast<const float*>(a);
    float sum = 0.0f;
    for (int64_t i = 0; i < k; ++i) sum += x[i] * y[i];
    return sum;
}

float vec_dot_f16_ref(int64_t k, const void* w, const void* a) {
    const uint16_t* x = static_cast<const uint16_t*>(w);
    const float* y = static_cast<const float*>(a);
    float sum = 0.0f;
    for (int64_t i = 0; i < k; ++i) sum += fp16_to_f32(x[i]) * y[i];
    return sum;
}

float vec_dot_bf16_ref(int64_t k, const void* w, const void* a) {
    const uint16_t* x = static_cast<const uint16_t*>(w);
    const float* y = static_cast<const float*>(a);
    float sum = 0.0f;
    for (int64_t i = 0; i < k; ++i) sum += bf16_to_f32(x[i]) * y[i];
    return sum;
}

float vec_dot_q4_0_q8_0_ref(int64_t k, const void* w, const void* a) {
    const block_q4_0* x = static_cast<const block_q4_0*>(w);
    const block_q8_0* y = static_cast<const block_q8_0*>(a);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK8_0; ++i) {
        int sumi = 0;
        for (int j = 0; j < QK8_0 / 2; ++j) {
            sumi += ((x[i].qs[j] & 0x0f) - 8) * y[i].qs[j];
            sumi += ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + QK8_0 / 2];
        }
        sum += sumi * (fp16_to_f32(x[i].d) * fp16_to_f32(y[i].d));
    }
    return sum;
}

float vec_dot_q4_1_q8_1_ref(int64_t k, const void* w, const void* a) {
    const block_q4_1* x = static_cast<const block_q4_1*>(w);
    const block_q8_1* y = static_cast<const block_q8_1*>(a);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK8_1; ++i) {
        int sumi = 0;
        for (int j = 0; j < QK8_1 / 2; ++j) {
            sumi += (x[i].qs[j] & 0x0f) * y[i].qs[j];
            sumi += (x[i].qs[j] >> 4) * y[i].qs[j + QK8_1 / 2];
        }
        // sum_j (d*q_j + m) * dy*qy_j = d*dy*sumi + m*s  (s = dy * sum qy, stored in the block)
        sum += sumi * (fp16_to_f32(x[i].d) * fp16_to_f32(y[i].d)) + fp16_to_f32(x[i].m) * fp16_to_f32(y[i].s);
    }
    return sum;
}

float vec_dot_q5_0_q8_0_ref(int64_t k, const void* w, const void* a) {
    const block_q5_0* x = static_cast<const block_q5_0*>(w);
    const block_q8_0* y = static_cast<const block_q8_0*>(a);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK8_0; ++i) {
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, sizeof(qh));
        int sumi = 0;
        for (int j = 0; j < QK8_0 / 2; ++j) {
            const int q0 = ((x[i].qs[j] & 0x0f) | (((qh >> j) & 1) << 4)) - 16;
            const int q1 = ((x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            sumi += q0 * y[i].qs[j] + q1 * y[i].qs[j + QK8_0 / 2];
        }
        sum += sumi * (fp16_to_f32(x[i].d) * fp16_to_f32(y[i].d));
    }
    return sum;
}

float vec_dot_q5_1_q8_1_ref(int64_t k, const void* w, const void* a) {
    const block_q5_1* x = static_cast<const block_q5_1*>(w);
    const block_q8_1* y = static_cast<const block_q8_1*>(a);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK8_1; ++i) {
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, sizeof(qh));
        int sumi = 0;
        for (int j = 0; j < QK8_1 / 2; ++j) {
            const int q0 = (x[i].qs[j] & 0x0f) | (((qh >> j) & 1) << 4);
            const int q1 = (x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            sumi += q0 * y[i].qs[j] + q1 * y[i].qs[j + QK8_1 / 2];
        }
        sum += sumi * (fp16_to_f32(x[i].d) * fp16_to_f32(y[i].d)) + fp16_to_f32(x[i].m) * fp16_to_f32(y[i].s);
    }
    return sum;
}

float vec_dot_q8_0_q8_0_ref(int64_t k, const void* w, const void* a) {
    const block_q8_0* x = static_cast<const block_q8_0*>(w);
    const block_q8_0* y = static_cast<const block_q8_0*>(a);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK8_0; ++i) {
        int sumi = 0;
        for (int j = 0; j < QK8_0; ++j) sumi += x[i].qs[j] * y[i].qs[j];
        sum += sumi * (fp16_to_f32(x[i].d) * fp16_to_f32(y[i].d));
    }
    return sum;
}

// --- attention helpers --------------------------------------------------------------------------

static void pv_f16_ref(int64_t n_rows, int64_t nb, int64_t d, const float* p, int64_t p_stride,
                       const uint16_t* v, int64_t v_stride, float* out) {
    for (int64_t r = 0; r < n_rows; ++r)
        for (int64_t j = 0; j < nb; ++j) {
            const float pj = p[r * p_stride + j];
            for (int64_t i = 0; i < d; ++i) out[r * d + i] += pj * fp16_to_f32(v[j * v_stride + i]);
        }
}

static void pv_f32_ref(int64_t n_rows, int64_t nb, int64_t d, const float* p, int64_t p_stride,
                       const float* v, int64_t v_stride, float* out) {
    for (int64_t r = 0; r < n_rows; ++r)
        for (int64_t j = 0; j < nb; ++j) {
            const float pj = p[r * p_stride + j];
            for (int64_t i = 0; i < d; ++i) out[r * d + i] += pj * v[j * v_stride + i];
        }
}

static float exp_sum_ref(float* s, int64_t n, float m) {
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
        s[j] = std::exp(s[j] - m);
        sum += s[j];
    }
    return sum;
}

static void swiglu_ref(float* gate, const float* up, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const float g = gate[i];
        gate[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
}

// GPTQ's XᵀX tile (kernels.h): 4 rows x 2 columns per step, each sum kept in 4 lanes (t mod 4)
// and added pairwise at the end, so compilers can vectorize it and the order is fixed.
static void xtx_tile_ref(const float* xt, int64_t n_pad, int64_t i0, int64_t ni, int64_t j0, int64_t nj,
                         float* out, int64_t ld) {
    for (int64_t ib = 0; ib < ni; ib += 4) {
        const float* a[4];
        for (int p = 0; p < 4; ++p) a[p] = xt + (i0 + ib + p) * n_pad;
        for (int64_t j = j0; j < j0 + nj; j += 2) {
            const float* b[2] = {xt + j * n_pad, xt + (j + 1) * n_pad};
            float acc[4][2][4] = {};
            for (int64_t t = 0; t < n_pad; t += 4)
                for (int p = 0; p < 4; ++p)
                    for (int q = 0; q < 2; ++q)
                        for (int l = 0; l < 4; ++l) acc[p][q][l] += a[p][t + l] * b[q][t + l];
            for (int p = 0; p < 4; ++p)
                for (int q = 0; q < 2; ++q)
                    out[(ib + p) * ld + (j - j0) + q] = (acc[p][q][0] + acc[p][q][1]) + (acc[p][q][2] + acc[p][q][3]);
        }
    }
}

// --- the table ----------------------------------------------------------------------------------

static KernelTable make_ref_table() {
    KernelTable t{};
    t.isa = "ref";
    t.gemm[TYPE_F32] = gemm_from_dot<vec_dot_f32_ref>;
    t.gemm[TYPE_F16] = gemm_from_dot<vec_dot_f16_ref>;
    t.gemm[TYPE_BF16] = gemm_from_dot<vec_dot_bf16_ref>;
    t.gemm[TYPE_Q4_0] = gemm_from_dot<vec_dot_q4_0_q8_0_ref>;
    t.gemm[TYPE_Q4_1] = gemm_from_dot<vec_dot_q4_1_q8_1_ref>;
    t.gemm[TYPE_Q5_0] = gemm_from_dot<vec_dot_q5_0_q8_0_ref>;
    t.gemm[TYPE_Q5_1] = gemm_from_dot<vec_dot_q5_1_q8_1_ref>;
    t.gemm[TYPE_Q8_0] = gemm_from_dot<vec_dot_q8_0_q8_0_ref>;
    register_kquant_ref_kernels(t);
    register_iquant_ref_kernels(t);
    register_x8_ref_kernels(t);
    t.quantize_act[TYPE_F32] = quantize_row_f32;
    t.quantize_act[TYPE_Q8_0] = quantize_row_q8_0;
    t.quantize_act[TYPE_Q8_1] = quantize_row_q8_1;
    t.quantize_act[TYPE_Q8_K] = quantize_row_q8_K;
    for (int i = 0; i < TYPE_COUNT; ++i)
        if (type_is_known(i)) t.to_float[i] = type_traits((Type)i).to_float;
    t.f32_to_f16 = [](const float* x, uint16_t* y, int64_t n) { quantize_row_f16(x, y, n); };
    t.pv_f16 = pv_f16_ref;
    t.pv_f32 = pv_f32_ref;
    t.exp_sum = exp_sum_ref;
    t.swiglu = swiglu_ref;
    t.xtx_tile = xtx_tile_ref;
    return t;
}

const KernelTable* kernel_table_ref() {
    static const KernelTable table = make_ref_table();
    return &table;
}

void fill_missing_from_ref(KernelTable& t) {
    const KernelTable& r = *kernel_table_ref();
    for (int i = 0; i < TYPE_COUNT; ++i) {
        if (!t.gemm[i]) t.gemm[i] = r.gemm[i];
        if (!t.quantize_act[i]) t.quantize_act[i] = r.quantize_act[i];
        if (!t.to_float[i]) t.to_float[i] = r.to_float[i];
    }
    if (!t.f32_to_f16) t.f32_to_f16 = r.f32_to_f16;
    if (!t.pv_f16) t.pv_f16 = r.pv_f16;
    if (!t.pv_f32) t.pv_f32 = r.pv_f32;
    if (!t.exp_sum) t.exp_sum = r.exp_sum;
    if (!t.swiglu) t.swiglu = r.swiglu;
    if (!t.xtx_tile) t.xtx_tile = r.xtx_tile;
}

} // namespace pyllm
