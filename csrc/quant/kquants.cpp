// K-quant reference (de)quantizers. PLACEHOLDER until the quant work lands: every entry fails loudly.
#include "quant/quants.h"
#include <cstdlib>
#include <cstdio>

namespace pyllm {
#define PYLLM_KQ_TODO(fn) void fn { std::fprintf(stderr, "pyllm: %s not implemented\n", __func__); std::abort(); }
PYLLM_KQ_TODO(dequantize_row_q2_K(const void*, float*, int64_t))
PYLLM_KQ_TODO(dequantize_row_q3_K(const void*, float*, int64_t))
PYLLM_KQ_TODO(dequantize_row_q4_K(const void*, float*, int64_t))
PYLLM_KQ_TODO(dequantize_row_q5_K(const void*, float*, int64_t))
PYLLM_KQ_TODO(dequantize_row_q6_K(const void*, float*, int64_t))
PYLLM_KQ_TODO(dequantize_row_q8_K(const void*, float*, int64_t))
PYLLM_KQ_TODO(quantize_row_q2_K(const float*, void*, int64_t))
PYLLM_KQ_TODO(quantize_row_q3_K(const float*, void*, int64_t))
PYLLM_KQ_TODO(quantize_row_q4_K(const float*, void*, int64_t))
PYLLM_KQ_TODO(quantize_row_q5_K(const float*, void*, int64_t))
PYLLM_KQ_TODO(quantize_row_q6_K(const float*, void*, int64_t))
PYLLM_KQ_TODO(quantize_row_q8_K(const float*, void*, int64_t))
} // namespace pyllm
