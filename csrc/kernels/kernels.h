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

// --- the row-interleaved ("x8") weight layout, made once at load for decode -----------------------
//
// Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 rows in groups of kX8Rows = 8 (IQ4_NL: as Q4_0, whose block
// bytes it shares; its nibbles are grid indices). For each 32-element block
// column a group stores exactly the bytes of its 8 plain blocks, rearranged:
//   the 8 rows' f16 scales d (16 bytes), for Q4_1/Q5_1 then the 8 mins m (16 bytes),
//   for Q5 then the fifth bits (32 bytes) as 8 little-endian u32 masks, mask 2c+h for run c's low
//   (h = 0) or high (h = 1) nibbles: bit 4L+b = row L's qh bit 16h+4c+b, so bit j of a mask
//   belongs to byte j of the run's 32-byte load (an AVX-512 k-mask as it stands),
//   then the quants as 4-byte runs: run c of row L at byte 32*c + 4*L, holding the plain block's
//   qs[4c..4c+3] (Q4/Q5: 4 runs, low nibble = element 4c+b, high = 16+4c+b; Q8_0: 8 runs).
// So one 32-byte load is one run of all 8 rows: 4 activation bytes broadcast to 8 lanes feed the
// 8 rows, the 8 int32 lanes are the 8 outputs (no horizontal sums), and the 8 scales convert with
// one vcvtph2ps. A group is 8 plain rows' bytes, so the tensor keeps its size and row r (a
// multiple of 8) still starts at r*row_bytes (the bytes are a permutation of the plain ones, but for
// Q5's fifth bits, which are a permutation of bits). Rows after the last full group stay plain.
//
// Q4_K, Q5_K and Q6_K, the same idea per 256-element super-block column (8 plain blocks' bytes,
// so again the same size and row starts; kernels/ref/kquants_x8.cpp is the repacker). Per-sub-block
// bytes are in "pair order": sub-blocks 2p and 2p+1 of the 8 rows make 16 bytes, row L's at
// 16p + 2L and 16p + 2L + 1 (widened to int16, a madd with a broadcast pair of activation sums
// leaves row L's term in int32 lane L; a byte shuffle gives one sub-block's scale to both of row
// L's maddubs words). Quant runs are 4 bytes of the plain array, run c of row L at 32c + 4L.
//   Q4_K (1152 B): d[8] f16 | dmin[8] f16 | sm[64]: byte (pair order) = scale | (min >> 4) << 6 |
//        ml[32]: byte i = low nibble of the min at pair position i, high nibble that of i + 32 |
//        qs runs (32).  The 12-byte 6-bit packing becomes 8+8 directly usable fields (same 96 bits).
//   Q5_K (1408 B): as Q4_K, then qh runs (8) before the qs runs.
//   Q6_K (1680 B): d[8] f16 | scales[128] int8 (pair order over 16 sub-blocks) | ql runs (32) |
//        qh runs (16).  A byte permutation.
// Q2_K and Q3_K have no x8 layout (they stay on the plain K-quant gemm).
constexpr int kX8Rows = 8;
// dst (same size as src) = the x8 layout of n_rows plain rows of k elements, row_bytes apart.
using repack_fn = void (*)(const void* src, size_t row_bytes, int64_t n_rows, int64_t k, void* dst);

// Attention helpers over the F16 KV cache.
using f32_to_f16_fn = void (*)(const float* x, uint16_t* y, int64_t n);
// Attention's P.V for a block of cache positions: out[r*d + i] += sum_{j < nb} p[r*p_stride + j] *
// v[j*v_stride + i] (v in f16), r < n_rows, i < d. Each V row is converted once for all rows.
using pv_f16_fn = void (*)(int64_t n_rows, int64_t nb, int64_t d, const float* p, int64_t p_stride,
                           const uint16_t* v, int64_t v_stride, float* out);
// SwiGLU: gate[i] = silu(gate[i]) * up[i]. SIMD versions use a polynomial exp (~1e-7 relative).
// The same over a block of V rows already in f32 (a quantized V cache, dequantized a block at a time).
using pv_f32_fn = void (*)(int64_t n_rows, int64_t nb, int64_t d, const float* p, int64_t p_stride,
                           const float* v, int64_t v_stride, float* out);
// Attention's softmax step: s[j] = e^(s[j] - m) for j < n, returns their sum. SIMD versions use
// the polynomial exp (~1e-7 relative); m >= every s[j], so the arguments are <= 0.
using exp_sum_fn = float (*)(float* s, int64_t n, float m);
using swiglu_fn = void (*)(float* gate, const float* up, int64_t n);
// A tile of XᵀX for GPTQ's Hessian (quant/gptq.cpp). xt: the inputs transposed, (k_pad, n_pad)
// floats, row i at xt + i*n_pad, n_pad a multiple of 8 and zero padded. For i in [i0, i0+ni) and
// j in [j0, j0+nj) (ni a multiple of 4, nj of 2): out[(i-i0)*ld + (j-j0)] = sum_t xt[i][t]*xt[j][t],
// float sums (SIMD tables differ from the reference by summation order and FMA only).
using xtx_tile_fn = void (*)(const float* xt, int64_t n_pad, int64_t i0, int64_t ni, int64_t j0, int64_t nj,
                             float* out, int64_t ld);

struct KernelTable {
    const char* isa;                      // "ref", "avx2", "avx512", "neon", ...
    gemm_fn gemm[TYPE_COUNT];             // by weight type; nullptr = not supported by this ISA
    // The x8 layout (above), by weight type; nullptr = this ISA does not repack that type (and
    // fill_missing_from_ref leaves it so). gemm_x8 has gemm's ABI; w starts at a group boundary
    // and n_rows is a multiple of kX8Rows (a matrix's plain tail rows go to gemm).
    repack_fn repack_x8[TYPE_COUNT];
    gemm_fn gemm_x8[TYPE_COUNT];
    from_float_fn quantize_act[TYPE_COUNT];// by activation type (Q8_0, Q8_1, Q8_K): one row
    to_float_fn to_float[TYPE_COUNT];     // by type: dequantize one row
    f32_to_f16_fn f32_to_f16;
    pv_f16_fn pv_f16;
    pv_f32_fn pv_f32;
    exp_sum_fn exp_sum;
    swiglu_fn swiglu;
    xtx_tile_fn xtx_tile;
};

// Row `row` of an x8-layout matrix (n_rows rows, row_bytes apart) dequantized to y (k floats),
// bit-identical to the plain row's to_float: the embedding lookup of a repacked tied output.
void x8_row_to_float(Type type, const void* w, size_t row_bytes, int64_t n_rows, int64_t row, int64_t k, float* y);

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
