// Group-fitting helpers shared by the reference and the importance-weighted quantizers.
#pragma once
#include <cstdint>

namespace pyllm {

// Symmetric levels [-nmax, nmax-1] for a group of n values, fitted by weighted least squares
// (rmse_type 1; weights qw, or x^2 when qw is null). L receives level + nmax; returns the scale.
// (quant/kquants.cpp)
float make_qx_quants(int n, int nmax, const float* x, int8_t* L, int rmse_type, const float* qw);

} // namespace pyllm
