// The kernel table: the hot loops, one table per ISA, chosen once from the CPU's features.
// Kernels take raw pointers, counts and strides; they never allocate, throw, log or see Python.
// The reference table (kernels/ref) is the truth every other table is tested against.
#pragma once
#include <cstddef>
#include <cstdint>
#include "quant/types.h"

namespace pyllm {

// out[t*out_stride + r] = dot(W row r, A row t)  for r < n_rows, t < n_tok.
//   w: n_rows rows of k elements of the weight type, row r at w + r*w_stride bytes
//   a: n_tok rows of k elements already quantized to the weight type's vec_dot_type
//      (F32 floats for float weights), row t at a + t*a_stride bytes
// The op layer splits rows (and tokens) across threads; a kernel tiles inside its chunk.
using gemm_fn = void (*)(int64_t k, const void* w, size_t w_stride, int64_t n_rows,
                         const void* a, size_t a_stride, int64_t n_tok,
                         float* out, int64_t out_stride);

// Attention helpers over the F16 KV cache.
using dot_f16_fn  = float (*)(int64_t n, const uint16_t* x, const float* y);          // sum x*y
using axpy_f16_fn = void (*)(int64_t n, float alpha, const uint16_t* x, float* y);    // y += alpha*x
using f32_to_f16_fn = void (*)(const float* x, uint16_t* y, int64_t n);

struct KernelTable {
    const char* isa;                      // "ref", "avx2", "avx512", "neon", ...
    gemm_fn gemm[TYPE_COUNT];             // by weight type; nullptr = not supported by this ISA
    from_float_fn quantize_act[TYPE_COUNT];// by activation type (Q8_0, Q8_1, Q8_K): one row
    to_float_fn to_float[TYPE_COUNT];     // by type: dequantize one row
    dot_f16_fn dot_f16;
    axpy_f16_fn axpy_f16;
    f32_to_f16_fn f32_to_f16;
};

// Tables, each fills missing entries from the reference table. Defined in their ISA's file;
// an ISA that is not compiled for this architecture returns nullptr.
const KernelTable* kernel_table_ref();
const KernelTable* kernel_table_avx2();
const KernelTable* kernel_table_avx512();
const KernelTable* kernel_table_neon();

// The table in use: the best the CPU supports, or the one PYLLM_ISA names. Decided once.
const KernelTable& kernels();
// A table by name if this CPU can run it, else nullptr (tests use this to compare ISAs).
const KernelTable* kernel_table_by_name(const char* isa);
// Names of the ISAs this build has and this CPU can run, best first.
const char* const* available_isas(int* count);
// CPU feature string, e.g. "avx2 fma f16c avx512f avx512bw avx512vl avx512vnni".
const char* cpu_features();

} // namespace pyllm
