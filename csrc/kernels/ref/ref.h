// Reference row dot products, shared by the reference table and by SIMD files for their tails.
#pragma once
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

// K-quant dot products against Q8_K (kernels/ref/kquants_ref.cpp) register themselves here.
void register_kquant_ref_kernels(KernelTable& t);

// SIMD tables call this last, so any entry they leave empty runs the reference loop.
void fill_missing_from_ref(KernelTable& t);

} // namespace pyllm
