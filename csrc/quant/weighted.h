// Importance-weighted quantizers ("imatrix"): the same block formats as the reference ones, but
// each block's scale (and min) is searched to minimise sum_j w_j (x_j - x̂_j)^2, where w_j comes
// from the importance of input column j (the mean square of its activations on calibration text).
// Bit-exact with ggml's `quantize_qX_Y` when given quant_weights.
#pragma once
#include <cstdint>

#include "quant/types.h"

namespace pyllm {

// Quantizes one row of n floats with per-column importances qw (n of them).
using weighted_quantize_fn = void (*)(const float* x, void* dst, int64_t n, const float* qw);

// The weighted quantizer of a type, or nullptr when the type has none (then the reference one
// applies: ggml's Q8_0 ignores importances too).
weighted_quantize_fn weighted_quantizer(Type t);

void quantize_row_q4_0_weighted(const float* x, void* dst, int64_t n, const float* qw);
void quantize_row_q4_1_weighted(const float* x, void* dst, int64_t n, const float* qw);
void quantize_row_q5_0_weighted(const float* x, void* dst, int64_t n, const float* qw);
void quantize_row_q5_1_weighted(const float* x, void* dst, int64_t n, const float* qw);

} // namespace pyllm
