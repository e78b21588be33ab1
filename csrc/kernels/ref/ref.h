// Reference row dot products, shared by the reference table and by SIMD files for their tails.
#pragma once
#include <cstddef>
#include <cstdint>
#include "kernels/kernels.h"

namespace pyllm {

using vec_dot_fn = float (*)(int64_t k, const void* w, const void* a);

float vec_dot_f32_ref(int64_t k, const void* w, const void* a);
float vec_dot_f16_ref(int64_t k, const void* w, const void* a);
float vec_dot_bf16_ref(int64_t k, const void* w, const void* a);
float vec_dot_q4_0_q8_0_ref(int64_t k, const void* w, const void* a);
float vec_dot_q4_1_q8_1_ref(int64_t k, const void* w, const void* a);
float vec_dot_q5_0_q8_0_ref(int64_t k, const void* w, const void* a);
float vec_dot_q5_1_q8_1_ref(int64_t k, const void* w, const void* a);
float vec_dot_q8_0_q8_0_ref(int64_t k, const void* w, const void* a);

// gemm by calling a row dot for every (token, row) pair: the reference gemm of every weight type.
// `static` on purpose: each file that uses it gets its own copy compiled with its own flags, so the
// linker can never pick up a copy built for a wider ISA (the SIGILL trap of shared inline code).
template <vec_dot_fn DOT>
static void gemm_from_dot(int64_t k, const void* w, size_t w_stride, int64_t n_rows,
                          const void* a, size_t a_stride, int64_t n_tok, float* out, int64_t out_stride) {
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const uint8_t* ab = static_cast<const uint8_t*>(a);
    for (int64_t t = 0; t < n_tok; ++t)
        for (int64_t r = 0; r < n_rows; ++r)
            out[t * out_stride + r] = DOT(k, wb + r * w_stride, ab + t * a_stride);
}

float vec_dot_q2_K_q8_K_ref(int64_t k, const void* w, const void* a);
float vec_dot_q3_K_q8_K_ref(int64_t k, const void* w, const void* a);
float vec_dot_q4_K_q8_K_ref(int64_t k, const void* w, const void* a);
float vec_dot_q5_K_q8_K_ref(int64_t k, const void* w, const void* a);
float vec_dot_q6_K_q8_K_ref(int64_t k, const void* w, const void* a);

// K-quant dot products against Q8_K (kernels/ref/kquants_ref.cpp) register themselves here.
void register_kquant_ref_kernels(KernelTable& t);

// IQ4_NL . Q8_0 and IQ4_XS . Q8_K (kernels/ref/iquants_ref.cpp).
float vec_dot_iq4_nl_q8_0_ref(int64_t k, const void* w, const void* a);
float vec_dot_iq4_xs_q8_K_ref(int64_t k, const void* w, const void* a);
void register_iquant_ref_kernels(KernelTable& t);

// The x8 layout's repackers and reference gemm (kernels/ref/x8.cpp). SIMD tables take the
// repacker of each type they have an x8 gemm for from the reference table.
void register_x8_ref_kernels(KernelTable& t);

// SIMD tables call this last, so any entry they leave empty runs the reference loop (except the
// x8 entries: an ISA without its own x8 kernel keeps the plain layout).
void fill_missing_from_ref(KernelTable& t);

} // namespace pyllm
