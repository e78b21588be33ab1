// GPTQ on GGUF block grids: second-order statistics of a linear layer's inputs (H = XᵀX), and
// the solver that quantizes a weight matrix column by column, feeding each column's rounding
// error forward onto the columns not yet quantized (Frantar et al. 2022, "GPTQ").
// One GPTQ group is one 32-weight GGUF block along the input dimension; its scale (and min) are
// fixed from the current weights when the solve reaches the block, rounded to f16 as stored.
// Not here: running the model to collect X (model/calibrate.h), choosing types (pyllm/quantize/types.py).
#pragma once
#include <cstdint>
#include <vector>

#include "core/threadpool.h"
#include "kernels/kernels.h"
#include "quant/types.h"

namespace pyllm {

// Accumulates H = XᵀX (k x k, float64; only the upper triangle is kept up to date) or only its
// diagonal (Σ x_j², the "importance" of input j), over batches of rows x (n_tok, k).
class HessianAccumulator {
public:
    HessianAccumulator(int64_t k, bool diag_only);
    // The XᵀX tiles run on kt's xtx_tile kernel (the table in use unless a test picks one).
    void add(const float* x, int64_t n_tok, ThreadPool& pool, const KernelTable& kt = kernels());

    int64_t k() const { return k_; }
    bool diag_only() const { return diag_only_; }
    int64_t n_samples() const { return n_samples_; }
    const std::vector<double>& values() const { return h_; }  // (k, k) row-major, or (k)
    // The full symmetric matrix (copies the upper triangle down), or the diagonal.
    std::vector<double> symmetric() const;

private:
    int64_t k_, k_pad_;
    bool diag_only_;
    int64_t n_samples_ = 0;
    std::vector<double> h_;
    std::vector<float> xt_;  // (k_pad, n_pad) the batch transposed, zero padded
};

struct GptqOptions {
    float damp = 0.01f;      // added to H's diagonal, as a fraction of its mean
    int block = 128;         // columns per lazy batch update (a multiple of 32)
    bool act_order = false;  // process columns by decreasing H_jj, with static groups
    bool search_scales = false;  // fit each block's scale by weighted search (imatrix rule)
                                 // instead of the reference min/max rule
};

// Types whose 32-blocks the solver can target: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
bool gptq_supports(Type t);

// Quantizes w (rows, k) float32 to rows * row_size(t, k) bytes at out, minimising
// ||(W - Q) X^T||² for the inputs whose H = XᵀX is h ((k, k) symmetric, float64).
// Returns the damping actually used (raised tenfold, at most thrice, if H + damp is not positive
// definite). Throws Error(quantize) if it never becomes so.
double gptq_quantize(Type t, const float* w, int64_t rows, int64_t k, const double* h, const GptqOptions& opt,
                     uint8_t* out, ThreadPool& pool);

} // namespace pyllm
