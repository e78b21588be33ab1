// IQ4_NL . Q8_0 and IQ4_XS . Q8_K reference dot products, registered into the reference kernel
// table. They follow ggml's generic kernels: integer sums of grid value times activation per
// 32-element sub-block, then one float multiply-add per sub-block in order, so results match
// llama.cpp's scalar kernels to the last bit and its SIMD kernels to rounding.
#include "core/fp16.h"
#include "kernels/ref/ref.h"
#include "quant/blocks.h"

namespace pyllm {

namespace {

// sum over one 32-element sub-block: grid values of 16 nibble bytes times 32 activations.
inline int dot_sub_block(const uint8_t* qs, const int8_t* y) {
    int sum_lo = 0, sum_hi = 0;
    for (int j = 0; j < 16; ++j) {
        sum_lo += y[j] * kvalues_iq4nl[qs[j] & 0xf];
        sum_hi += y[j + 16] * kvalues_iq4nl[qs[j] >> 4];
    }
    return sum_lo + sum_hi;
}

} // namespace

float vec_dot_iq4_nl_q8_0_ref(int64_t k, const void* w, const void* a) {
    const block_iq4_nl* x = static_cast<const block_iq4_nl*>(w);
    const block_q8_0* y = static_cast<const block_q8_0*>(a);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK4_NL; ++i)
        sum += (fp16_to_f32(y[i].d) * fp16_to_f32(x[i].d)) * dot_sub_block(x[i].qs, y[i].qs);
    return sum;
}

float vec_dot_iq4_xs_q8_K_ref(int64_t k, const void* w, const void* a) {
    const block_iq4_xs* x = static_cast<const block_iq4_xs*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(a);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = fp16_to_f32(x[i].d) * y[i].d;
        for (int ib = 0; ib < QK_K / 32; ++ib)
            sum += (d * (iq4_xs_scale(x[i], ib) - 32)) * dot_sub_block(x[i].qs + 16 * ib, y[i].qs + 32 * ib);
    }
    return sum;
}

void register_iquant_ref_kernels(KernelTable& t) {
    t.gemm[TYPE_IQ4_NL] = gemm_from_dot<vec_dot_iq4_nl_q8_0_ref>;
    t.gemm[TYPE_IQ4_XS] = gemm_from_dot<vec_dot_iq4_xs_q8_K_ref>;
}

} // namespace pyllm
