// GPTQ: Hessian accumulation, the inverse-Hessian factor, and the column-by-column solve on GGUF
// 32-blocks. See gptq.h for the contract.
#include "quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>

#include "core/common.h"
#include "core/fp16.h"
#include "quant/blocks.h"
#include "quant/weighted.h"

namespace pyllm {

namespace {

// Four partial sums (a fixed order the compiler can vectorize; plain C++ for every compiler).
double dot(const double* a, const double* b, int64_t n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    double s = s0 + s1 + s2 + s3;
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

} // namespace

// --- H = XᵀX ---------------------------------------------------------------------------------------

HessianAccumulator::HessianAccumulator(int64_t k, bool diag_only)
    : k_(k), k_pad_((k + 3) / 4 * 4), diag_only_(diag_only), h_(diag_only ? k : k * k, 0.0) {}

void HessianAccumulator::add(const float* x, int64_t n_tok, ThreadPool& pool, const KernelTable& kt) {
    if (n_tok <= 0) return;
    n_samples_ += n_tok;
    if (diag_only_) {
        for (int64_t t = 0; t < n_tok; ++t) {
            const float* xr = x + t * k_;
            for (int64_t j = 0; j < k_; ++j) h_[j] += (double)xr[j] * xr[j];
        }
        return;
    }
    // Transpose so that each H entry is a dot product of two contiguous rows; pad with zeros.
    const int64_t n_pad = (n_tok + 7) / 8 * 8;
    xt_.assign((size_t)k_pad_ * n_pad, 0.0f);
    constexpr int64_t tile = 64;  // transpose in tiles to keep both sides in cache
    for (int64_t t0 = 0; t0 < n_tok; t0 += tile)
        for (int64_t j0 = 0; j0 < k_; j0 += tile)
            for (int64_t t = t0; t < std::min(n_tok, t0 + tile); ++t)
                for (int64_t j = j0; j < std::min(k_, j0 + tile); ++j) xt_[(size_t)j * n_pad + t] = x[t * k_ + j];
    // Task = a 64x64 tile of H's upper triangle, so both sets of rows stay in L2; the table's
    // xtx_tile kernel inside. Float sums over this batch (at most a few thousand tokens) are
    // added to the float64 total.
    constexpr int64_t T = 64;
    const int64_t nt = ceil_div(k_pad_, T);
    std::vector<std::pair<int64_t, int64_t>> tiles;
    for (int64_t ti = 0; ti < nt; ++ti)
        for (int64_t tj = ti; tj < nt; ++tj) tiles.emplace_back(ti * T, tj * T);
    std::vector<std::vector<float>> sums(pool.size(), std::vector<float>((size_t)T * T));
    pool.parallel_for((int64_t)tiles.size(), [&](int64_t task, int thread) {
        const int64_t i0 = tiles[task].first, j0 = tiles[task].second;
        const int64_t ni = std::min(T, k_pad_ - i0), nj = std::min(T, k_pad_ - j0);
        float* out = sums[thread].data();
        kt.xtx_tile(xt_.data(), n_pad, i0, ni, j0, nj, out, T);
        for (int64_t p = 0; p < ni; ++p) {
            const int64_t i = i0 + p;
            if (i >= k_) break;
            double* hi = h_.data() + (size_t)i * k_;
            for (int64_t j = std::max(i, j0); j < std::min(k_, j0 + nj); ++j) hi[j] += out[p * T + (j - j0)];
        }
    });
}

std::vector<double> HessianAccumulator::symmetric() const {
    std::vector<double> h = h_;
    if (diag_only_) return h;
    for (int64_t i = 0; i < k_; ++i)
        for (int64_t j = 0; j < i; ++j) h[(size_t)i * k_ + j] = h[(size_t)j * k_ + i];
    return h;
}

// --- the inverse-Hessian factor -----------------------------------------------------------------------
// GPTQ needs U upper triangular with Uᵀ U = H⁻¹ (its rows give each column's error propagation).
// With P the order-reversing permutation and P H P = L Lᵀ (an ordinary Cholesky factorization),
// H = R Rᵀ for the upper triangular R = P L P, so H⁻¹ = R⁻ᵀ R⁻¹ and U = R⁻¹ = P L⁻¹ P: one
// factorization and one triangular inverse, no explicit H⁻¹.

namespace {

// In-place lower Cholesky factor of a (n x n, row-major, symmetric); false if not positive definite.
// Row by row (each entry a dot product of two rows already computed). Single-threaded on purpose:
// a column-parallel version needs n barriers, which costs more than it saves on a busy laptop,
// and the factorization is a small part of a layer's work.
bool cholesky_lower(double* a, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        double* ri = a + i * n;
        for (int64_t j = 0; j < i; ++j) {
            const double* rj = a + j * n;
            ri[j] = (ri[j] - dot(ri, rj, j)) / rj[j];
        }
        const double s = ri[i] - dot(ri, ri, i);
        if (!(s > 0) || !std::isfinite(s)) return false;
        ri[i] = std::sqrt(s);
    }
    return true;
}

// U (n x n, float, upper) = P L⁻¹ P from the lower factor L (see above). Columns of L⁻¹ are
// independent forward substitutions: one task per block of columns, so few barriers.
void inverse_factor(const double* L, int64_t n, float* U, ThreadPool& pool) {
    std::fill(U, U + n * n, 0.0f);
    std::vector<std::vector<double>> scratch(pool.size(), std::vector<double>(n));
    constexpr int64_t cols = 32;
    pool.parallel_for(ceil_div(n, cols), [&](int64_t task, int thread) {
        double* m = scratch[thread].data();  // column j of L⁻¹, rows j..n-1
        for (int64_t j = task * cols; j < std::min(n, (task + 1) * cols); ++j) {
            m[j] = 1.0 / L[j * n + j];
            for (int64_t i = j + 1; i < n; ++i) m[i] = -dot(L + i * n + j, m + j, i - j) / L[i * n + i];
            for (int64_t i = j; i < n; ++i) U[(n - 1 - i) * n + (n - 1 - j)] = (float)m[i];
        }
    });
}

// --- the block grids ------------------------------------------------------------------------------

struct Grid {
    Type type;
    size_t block_bytes;
    int nmax;        // levels 0..nmax (Q8_0: -128..127 stored as is)
    int zero;        // level of 0 for the symmetric types (8, 16); 0 for the ones with a min
    bool has_min;
};

Grid grid_of(Type t) {
    switch (t) {
        case TYPE_Q4_0: return {t, sizeof(block_q4_0), 15, 8, false};
        case TYPE_Q4_1: return {t, sizeof(block_q4_1), 15, 0, true};
        case TYPE_Q5_0: return {t, sizeof(block_q5_0), 31, 16, false};
        case TYPE_Q5_1: return {t, sizeof(block_q5_1), 31, 0, true};
        case TYPE_Q8_0: return {t, sizeof(block_q8_0), 127, 0, false};
        default: fail(ErrorKind::quantize, std::string("GPTQ cannot target type ") + type_traits(t).name);
    }
}

// A block's dequantization parameters: x = d*(L - zero) (+ m).
struct BlockParams { float d, m; };

// Fits a block to 32 weights with the type's own rule (reference min/max, or the importance-
// weighted search), writes its header into blk, and returns the stored (f16-rounded) parameters.
BlockParams fit_block(const Grid& g, const float* x, const float* importance, uint8_t* blk) {
    weighted_quantize_fn wq = importance ? weighted_quantizer(g.type) : nullptr;
    if (wq) wq(x, blk, 32, importance);
    else type_traits(g.type).from_float(x, blk, 32);
    uint16_t d, m = 0;
    std::memcpy(&d, blk, 2);
    if (g.has_min) std::memcpy(&m, blk + 2, 2);
    return {fp16_to_f32(d), g.has_min ? fp16_to_f32(m) : 0.0f};
}

// The stored level of w on the block's grid, and its dequantized value.
inline int quantize_one(const Grid& g, const BlockParams& p, float w, float* deq) {
    int q;
    if (g.type == TYPE_Q8_0) {
        q = p.d != 0.0f ? std::max(-128, std::min(127, (int)std::nearbyint(w / p.d))) : 0;
        *deq = (float)q * p.d;
        return q;
    }
    if (g.has_min) {
        q = p.d != 0.0f ? std::max(0, std::min(g.nmax, (int)std::nearbyint((w - p.m) / p.d))) : 0;
        *deq = (float)q * p.d + p.m;
    } else {
        q = p.d != 0.0f ? std::max(0, std::min(g.nmax, (int)std::nearbyint(w / p.d) + g.zero)) : g.zero;
        *deq = (float)(q - g.zero) * p.d;
    }
    return q;
}

// Writes 32 levels into a block whose header fit_block already wrote.
void pack_levels(const Grid& g, const int16_t* L, uint8_t* blk) {
    switch (g.type) {
        case TYPE_Q4_0: case TYPE_Q4_1: {
            uint8_t* qs = blk + (g.has_min ? 4 : 2);
            for (int j = 0; j < 16; ++j) qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
            break;
        }
        case TYPE_Q5_0: case TYPE_Q5_1: {
            uint8_t* qh = blk + (g.has_min ? 4 : 2);
            uint8_t* qs = qh + 4;
            uint32_t h = 0;
            for (int j = 0; j < 16; ++j) {
                qs[j] = (uint8_t)((L[j] & 0x0F) | ((L[j + 16] & 0x0F) << 4));
                h |= (uint32_t)((L[j] >> 4) & 1) << j;
                h |= (uint32_t)((L[j + 16] >> 4) & 1) << (j + 16);
            }
            std::memcpy(qh, &h, 4);
            break;
        }
        case TYPE_Q8_0: {
            int8_t* qs = reinterpret_cast<int8_t*>(blk + 2);
            for (int j = 0; j < 32; ++j) qs[j] = (int8_t)L[j];
            break;
        }
        default: break;
    }
}

} // namespace

bool gptq_supports(Type t) {
    return t == TYPE_Q4_0 || t == TYPE_Q4_1 || t == TYPE_Q5_0 || t == TYPE_Q5_1 || t == TYPE_Q8_0;
}

// --- the solve -------------------------------------------------------------------------------------

double gptq_quantize(Type t, const float* w, int64_t rows, int64_t k, const double* h, const GptqOptions& opt,
                     uint8_t* out, ThreadPool& pool) {
    const Grid g = grid_of(t);
    if (k % 32) fail(ErrorKind::quantize, "GPTQ needs rows of a multiple of 32 weights, got " + std::to_string(k));
    const int64_t block = std::max<int64_t>(32, opt.block / 32 * 32);
    const int64_t n_groups = k / 32;

    // Column order: natural, or by decreasing H_jj (act-order). Inputs that were always zero
    // (H_jj = 0) get H_jj = 1 so the factorization exists; their errors then propagate nowhere.
    std::vector<double> diag(k);
    double mean_diag = 0;
    for (int64_t j = 0; j < k; ++j) {
        diag[j] = h[j * k + j] > 0 ? h[j * k + j] : 1.0;
        mean_diag += diag[j];
    }
    mean_diag /= k;
    std::vector<int64_t> perm(k);
    std::iota(perm.begin(), perm.end(), 0);
    if (opt.act_order)
        std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return diag[a] > diag[b]; });

    // U from H permuted, damped and reversed (see "the inverse-Hessian factor").
    std::vector<float> U((size_t)k * k);
    std::vector<double> a((size_t)k * k);
    double damp = opt.damp * mean_diag;
    for (int attempt = 0;; ++attempt) {
        for (int64_t i = 0; i < k; ++i) {
            const int64_t pi = perm[k - 1 - i];
            for (int64_t j = 0; j < k; ++j) a[i * k + j] = h[pi * k + perm[k - 1 - j]];
            a[i * k + i] = diag[pi] + damp;
        }
        if (cholesky_lower(a.data(), k)) break;
        if (attempt == 3)
            fail(ErrorKind::quantize, "GPTQ: the input statistics are not positive definite even with damping " +
                 std::to_string(damp / mean_diag) + "; use more calibration tokens or a larger --damp");
        damp *= 10;
    }
    inverse_factor(a.data(), k, U.data(), pool);

    // Static groups (act-order): every block's parameters come from the original weights, fitted
    // in natural order before the solve; otherwise a block is fitted when the solve reaches it.
    std::vector<float> importance;
    if (opt.search_scales) {
        importance.resize(k);
        for (int64_t j = 0; j < k; ++j) importance[j] = (float)diag[j];
    }
    const size_t rs = row_size(t, k);
    constexpr int64_t R = 16;  // rows per task: each streams U once for all of them
    pool.parallel_for(ceil_div(rows, R), [&](int64_t task, int) {
        const int64_t r0 = task * R, nr = std::min(R, rows - r0);
        std::vector<float> W((size_t)nr * k);             // (nr, k) in solve order, updated in place
        std::vector<float> E((size_t)nr * block);         // scaled errors of the current batch
        std::vector<int16_t> L((size_t)nr * k);           // levels, natural order
        std::vector<BlockParams> P((size_t)nr * n_groups);
        for (int64_t r = 0; r < nr; ++r)
            for (int64_t i = 0; i < k; ++i) W[r * k + i] = w[(r0 + r) * k + perm[i]];
        auto blk = [&](int64_t r, int64_t grp) { return out + (r0 + r) * rs + grp * g.block_bytes; };
        if (opt.act_order)
            for (int64_t r = 0; r < nr; ++r)
                for (int64_t grp = 0; grp < n_groups; ++grp)
                    P[r * n_groups + grp] = fit_block(g, w + (r0 + r) * k + grp * 32,
                                                      opt.search_scales ? importance.data() + grp * 32 : nullptr, blk(r, grp));
        for (int64_t i1 = 0; i1 < k; i1 += block) {
            const int64_t i2 = std::min(k, i1 + block);
            for (int64_t i = i1; i < i2; ++i) {
                const float* ui = U.data() + i * k;
                const float uii = ui[i];
                const int64_t col = perm[i], grp = col / 32;
                for (int64_t r = 0; r < nr; ++r) {
                    float* wr = W.data() + r * k;
                    if (!opt.act_order && i % 32 == 0)  // natural order: i is the block's first column
                        P[r * n_groups + grp] = fit_block(g, wr + i, opt.search_scales ? importance.data() + i : nullptr, blk(r, grp));
                    float deq;
                    L[r * k + col] = (int16_t)quantize_one(g, P[r * n_groups + grp], wr[i], &deq);
                    const float err = (wr[i] - deq) / uii;
                    for (int64_t j = i + 1; j < i2; ++j) wr[j] -= err * ui[j];
                    E[r * block + (i - i1)] = err;
                }
            }
            // Lazy batch update: the columns after this batch receive its errors all at once.
            for (int64_t c = i1; c < i2; ++c) {
                const float* uc = U.data() + c * k;
                for (int64_t r = 0; r < nr; ++r) {
                    const float e = E[r * block + (c - i1)];
                    float* wr = W.data() + r * k;
                    for (int64_t j = i2; j < k; ++j) wr[j] -= e * uc[j];
                }
            }
        }
        for (int64_t r = 0; r < nr; ++r)
            for (int64_t grp = 0; grp < n_groups; ++grp) pack_levels(g, L.data() + r * k + grp * 32, blk(r, grp));
    });
    return damp / mean_diag;
}

} // namespace pyllm
