// The driver of the K-quant x8 GEMMs (layout in kernels.h): walks a matrix's 8-row groups and
// the tokens and hands each (group, token tile) to an ISA's micro-kernel. No SIMD here. Internal
// linkage on purpose, as tiling.h: each ISA file compiles its own copy with its own flags.
//
// A micro-kernel MK provides kCol (bytes of one group's super-block column), kToks (tokens per
// prefill tile) and
//   template <int T> static void tile(const uint8_t* group_cols, int64_t nb, const uint8_t* const a[T],
//                                     float* out, int64_t out_stride, bool add)
// 8 rows (out[t*out_stride + 0..7]) times T Q8_K activation rows over nb super-block columns;
// `add` accumulates into out.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/kernels.h"
#include "kernels/tiling.h"
#include "quant/blocks.h"

namespace pyllm {
namespace {

template <class MK, int T>
inline void tile_kx8_any(int t_count, const uint8_t* w, int64_t nb, const uint8_t* const* a, float* out, int64_t out_stride,
                         bool add) {
    if constexpr (T > 1) {
        if (t_count < T) return tile_kx8_any<MK, T - 1>(t_count, w, nb, a, out, out_stride, add);
    }
    MK::template tile<T>(w, nb, a, out, out_stride, add);
}

// Decode: one pass down the groups (a group's columns are contiguous: one stream). Prefill:
// super-block chunks of at most kChunkBlocks, token chunks whose activations stay in L1, groups,
// then token tiles; a chunk after the first accumulates (`add`).
template <class MK>
void gemm_kx8_tiled(int64_t k, const void* w, size_t w_stride, int64_t n_rows,
                    const void* a, size_t a_stride, int64_t n_tok, float* out, int64_t out_stride) {
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const uint8_t* ab = static_cast<const uint8_t*>(a);
    const int64_t nb = k / QK_K;
    if (nb <= 0) {
        for (int64_t t = 0; t < n_tok; ++t)
            for (int64_t r = 0; r < n_rows; ++r) out[t * out_stride + r] = 0.0f;
        return;
    }
    if (n_tok == 1) {
        for (int64_t g = 0; g + kX8Rows <= n_rows; g += kX8Rows) MK::template tile<1>(wb + g * w_stride, nb, &ab, out + g, out_stride, false);
        return;
    }
    constexpr int64_t kChunkBlocks = 8;
    const size_t a_block = sizeof(block_q8_K);
    for (int64_t b0 = 0; b0 < nb; b0 += kChunkBlocks) {
        const int64_t nbc = nb - b0 < kChunkBlocks ? nb - b0 : kChunkBlocks;
        int64_t tc = (int64_t)(kChunkL1 / (nbc * a_block));
        tc = tc < MK::kToks ? MK::kToks : tc - tc % MK::kToks;
        for (int64_t t0 = 0; t0 < n_tok; t0 += tc) {
            const int64_t nt = n_tok - t0 < tc ? n_tok - t0 : tc;
            for (int64_t g = 0; g + kX8Rows <= n_rows; g += kX8Rows) {
                const uint8_t* wg = wb + g * w_stride + b0 * MK::kCol;
                for (int64_t t = 0; t < nt; t += MK::kToks) {
                    const uint8_t* at[MK::kToks];
                    const int t_count = (int)(nt - t < MK::kToks ? nt - t : MK::kToks);
                    for (int j = 0; j < t_count; ++j) at[j] = ab + (t0 + t + j) * a_stride + b0 * a_block;
                    tile_kx8_any<MK, MK::kToks>(t_count, wg, nbc, at, out + (t0 + t) * out_stride + g, out_stride, b0 > 0);
                }
            }
        }
    }
}

} // namespace
} // namespace pyllm
