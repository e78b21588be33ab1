// The tiling driver shared by the SIMD GEMM kernels: walks the (rows x tokens) output in register
// tiles and hands each tile to an ISA's micro-kernel. No SIMD here; the micro-kernels bring it.
// Everything has internal linkage on purpose: each ISA file gets its own copy compiled with its own
// flags, so the linker can never hand an AVX-512 instantiation to a caller on an AVX2-only CPU.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/kernels.h"

namespace pyllm {
namespace {

// out[t*out_stride + r] = dot(W row r, A row t); rows and tokens are byte-strided.
struct GemmArgs {
    int64_t k;             // elements per row
    const uint8_t* w;      // weight rows, row r at w + r*w_stride
    size_t w_stride;
    const uint8_t* a;      // activation rows (already in the weight's vec_dot_type), row t at a + t*a_stride
    size_t a_stride;
    float* out;
    int64_t out_stride;
};

// A micro-kernel MK provides
//   template <int R, int T> static void tile(const GemmArgs&, int64_t r0, int64_t t0);
//     rows r0..r0+R-1 times tokens t0..t0+T-1, all of k
//   kRows, kToks      the prefill tile (n_tok > 1): each unpacked weight block feeds kToks tokens
//   kDecodeRows       rows per step when n_tok == 1
//   kChunkBytes       activation bytes a row tile sweeps before the next row tile
// Tails use the same template at smaller R/T, so every tile shape is compiled, none interpreted.

template <class MK, int T, int R>
inline void tile_rows(const GemmArgs& g, int r_count, int64_t r0, int64_t t0) {
    if constexpr (R > 1) {
        if (r_count < R) return tile_rows<MK, T, R - 1>(g, r_count, r0, t0);
    }
    MK::template tile<R, T>(g, r0, t0);
}

template <class MK, int T>
inline void tile_any(const GemmArgs& g, int r_count, int t_count, int64_t r0, int64_t t0) {
    if constexpr (T > 1) {
        if (t_count < T) return tile_any<MK, T - 1>(g, r_count, t_count, r0, t0);
    }
    tile_rows<MK, T, MK::kRows>(g, r_count, r0, t0);
}

// Quantized weights are small next to their activations' reuse: keep the swept activations in L1
// (32-48 KiB); larger chunks measured up to 1.6x slower at 256 tokens (Zen 4). Float weights are as
// big as the activations, so re-reading them per small chunk costs more: they use an L2-sized chunk.
constexpr size_t kChunkL1 = 24 * 1024, kChunkL2 = 256 * 1024;

template <class MK>
void gemm_tiled(int64_t k, const void* w, size_t w_stride, int64_t n_rows,
                const void* a, size_t a_stride, int64_t n_tok, float* out, int64_t out_stride) {
    const GemmArgs g{k, static_cast<const uint8_t*>(w), w_stride, static_cast<const uint8_t*>(a), a_stride,
                     out, out_stride};
    if (k <= 0) {  // micro-kernels assume at least one step
        for (int64_t t = 0; t < n_tok; ++t)
            for (int64_t r = 0; r < n_rows; ++r) out[t * out_stride + r] = 0.0f;
        return;
    }
    if (n_tok == 1) {  // decode: a tight walk down the rows, every weight byte read once
        int64_t r = 0;
        // Prefetch the rows a few tiles ahead: the rows are contiguous, but each tile reads
        // kDecodeRows separate streams, more than the hardware prefetcher tracks well.
        constexpr int64_t kAhead = 2 * MK::kDecodeRows;
        const size_t tile_bytes = (size_t)MK::kDecodeRows * w_stride;
        for (; r + MK::kDecodeRows <= n_rows; r += MK::kDecodeRows) {
            if (r + kAhead + MK::kDecodeRows <= n_rows) {
                const uint8_t* next = g.w + (r + kAhead) * w_stride;
                for (size_t off = 0; off < tile_bytes; off += 64) __builtin_prefetch(next + off, 0, 0);
            }
            MK::template tile<MK::kDecodeRows, 1>(g, r, 0);
        }
        if (r < n_rows) tile_rows<MK, 1, MK::kDecodeRows>(g, (int)(n_rows - r), r, 0);
        return;
    }
    // Prefill: rows outer, tokens inner, so a row tile's weights stay in registers/L1 while the
    // chunk's activations (in L1) stream past; the weights are re-read once per chunk.
    int64_t chunk = (int64_t)(MK::kChunkBytes / (a_stride ? a_stride : 1));
    chunk = chunk < MK::kToks ? MK::kToks : chunk - chunk % MK::kToks;
    for (int64_t tc = 0; tc < n_tok; tc += chunk) {
        const int64_t t_end = tc + chunk < n_tok ? tc + chunk : n_tok;
        for (int64_t r = 0; r < n_rows; r += MK::kRows) {
            const int r_count = (int)(n_rows - r < MK::kRows ? n_rows - r : MK::kRows);
            for (int64_t t = tc; t < t_end; t += MK::kToks) {
                const int t_count = (int)(t_end - t < MK::kToks ? t_end - t : MK::kToks);
                if (r_count == MK::kRows && t_count == MK::kToks)
                    MK::template tile<MK::kRows, MK::kToks>(g, r, t);
                else
                    tile_any<MK, MK::kToks>(g, r_count, t_count, r, t);
            }
        }
    }
}

// --- the x8 (row-interleaved) layout: 8 rows per step, outputs straight from the lanes ------------
//
// Per (token, activation block) numbers every group reuses, worked out once per call (per chunk)
// so the inner loop only broadcasts them: the activation scale d, its s = d*sum(q) (Q8_1), and
// `corr` = offset*sum(q), the integer a kernel subtracts when it multiplies unsigned quants
// (q + offset) by the activation (Q4_0: 8; Q8_0 under VNNI: 128, see the ISA files).
struct X8Act {
    float d, s;
    int32_t corr;
};

// A micro-kernel MK for the x8 layout provides
//   kColBytes   one group's block column (8 plain blocks' bytes); kToks: tokens per prefill tile
//   static void prepare(const uint8_t* a_blocks, int64_t nb, X8Act* pre)   one token's blocks
//   template <int T> static void tile(const uint8_t* group_cols, int64_t nb, const uint8_t* const a[T],
//                                     const X8Act* pre, int64_t pre_stride, float* out, int64_t out_stride, bool add)
//     kX8Rows rows (out[t*out_stride + 0..7]) times T tokens over nb block columns; `add` accumulates into out.
template <class MK, int T>
inline void tile_x8_any(int t_count, const uint8_t* w, int64_t nb, const uint8_t* const* a, const X8Act* pre,
                        int64_t pre_stride, float* out, int64_t out_stride, bool add) {
    if constexpr (T > 1) {
        if (t_count < T) return tile_x8_any<MK, T - 1>(t_count, w, nb, a, pre, pre_stride, out, out_stride, add);
    }
    MK::template tile<T>(w, nb, a, pre, pre_stride, out, out_stride, add);
}

template <class MK>
void gemm_x8_tiled(int64_t k, const void* w, size_t w_stride, int64_t n_rows,
                   const void* a, size_t a_stride, int64_t n_tok, float* out, int64_t out_stride) {
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const uint8_t* ab = static_cast<const uint8_t*>(a);
    const int64_t nb = k / 32;
    if (nb <= 0) {
        for (int64_t t = 0; t < n_tok; ++t)
            for (int64_t r = 0; r < n_rows; ++r) out[t * out_stride + r] = 0.0f;
        return;
    }
    // The per-block numbers live on the stack (kernels never allocate): blocks in chunks of at
    // most kPre / kToks (k up to 16384 in one pass), tokens in chunks whose activations stay in L1.
    constexpr int64_t kPre = 2048;
    X8Act pre[kPre];
    const size_t a_block = MK::kActBlockBytes;
    const int64_t bc = nb < kPre / MK::kToks ? nb : kPre / MK::kToks;
    for (int64_t b0 = 0; b0 < nb; b0 += bc) {
        const int64_t nbc = nb - b0 < bc ? nb - b0 : bc;
        int64_t tc = (int64_t)(kChunkL1 / (nbc * a_block));
        if (tc > kPre / nbc) tc = kPre / nbc;
        tc = tc < MK::kToks ? MK::kToks : tc - tc % MK::kToks;
        for (int64_t t0 = 0; t0 < n_tok; t0 += tc) {
            const int64_t nt = n_tok - t0 < tc ? n_tok - t0 : tc;
            for (int64_t t = 0; t < nt; ++t) MK::prepare(ab + (t0 + t) * a_stride + b0 * a_block, nbc, pre + t * nbc);
            for (int64_t g = 0; g + kX8Rows <= n_rows; g += kX8Rows) {
                const uint8_t* wg = wb + g * w_stride + b0 * MK::kColBytes;
                for (int64_t t = 0; t < nt; t += MK::kToks) {
                    const uint8_t* at[MK::kToks];
                    const int t_count = (int)(nt - t < MK::kToks ? nt - t : MK::kToks);
                    for (int j = 0; j < t_count; ++j) at[j] = ab + (t0 + t + j) * a_stride + b0 * a_block;
                    tile_x8_any<MK, MK::kToks>(t_count, wg, nbc, at, pre + t * nbc, nbc,
                                               out + (t0 + t) * out_stride + g, out_stride, b0 > 0);
                }
            }
        }
    }
}

} // namespace
} // namespace pyllm
