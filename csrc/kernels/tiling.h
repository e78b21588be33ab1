// The tiling driver shared by the SIMD GEMM kernels: walks the (rows x tokens) output in register
// tiles and hands each tile to an ISA's micro-kernel. No SIMD here; the micro-kernels bring it.
// Everything has internal linkage on purpose: each ISA file gets its own copy compiled with its own
// flags, so the linker can never hand an AVX-512 instantiation to a caller on an AVX2-only CPU.
#pragma once
#include <cstddef>
#include <cstdint>

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

} // namespace
} // namespace pyllm
