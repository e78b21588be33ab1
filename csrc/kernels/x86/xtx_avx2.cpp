// The AVX2 + FMA XᵀX tile for GPTQ's Hessian (the contract: xtx_tile_fn in kernels/kernels.h).
// Compiled with the AVX2 table's flags; only its registrar has external linkage, and the AVX2 (and
// AVX-512) table is entered only after dispatch.cpp has checked the CPU.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <cstdint>

#include "kernels/kernels.h"

namespace pyllm {

void register_xtx_avx2_kernels(KernelTable& t);

namespace {

// 4 rows x 2 columns per step, 8 lanes each, summed horizontally at the end.
void xtx_tile_avx2(const float* xt, int64_t n_pad, int64_t i0, int64_t ni, int64_t j0, int64_t nj, float* out, int64_t ld) {
  for (int64_t ib = 0; ib < ni; ib += 4) {
    const float* a0 = xt + (i0 + ib + 0) * n_pad;
    const float* a1 = xt + (i0 + ib + 1) * n_pad;
    const float* a2 = xt + (i0 + ib + 2) * n_pad;
    const float* a3 = xt + (i0 + ib + 3) * n_pad;
    for (int64_t j = j0; j < j0 + nj; j += 2) {
        const float* b0 = xt + j * n_pad;
        const float* b1 = b0 + n_pad;
        __m256 s00 = _mm256_setzero_ps(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00, s30 = s00, s31 = s00;
        for (int64_t t = 0; t < n_pad; t += 8) {
            const __m256 y0 = _mm256_loadu_ps(b0 + t), y1 = _mm256_loadu_ps(b1 + t);
            __m256 x = _mm256_loadu_ps(a0 + t);
            s00 = _mm256_fmadd_ps(x, y0, s00); s01 = _mm256_fmadd_ps(x, y1, s01);
            x = _mm256_loadu_ps(a1 + t);
            s10 = _mm256_fmadd_ps(x, y0, s10); s11 = _mm256_fmadd_ps(x, y1, s11);
            x = _mm256_loadu_ps(a2 + t);
            s20 = _mm256_fmadd_ps(x, y0, s20); s21 = _mm256_fmadd_ps(x, y1, s21);
            x = _mm256_loadu_ps(a3 + t);
            s30 = _mm256_fmadd_ps(x, y0, s30); s31 = _mm256_fmadd_ps(x, y1, s31);
        }
        const __m256 s[8] = {s00, s01, s10, s11, s20, s21, s30, s31};
        for (int q = 0; q < 8; ++q) {
            // horizontal sum of 8 lanes
            __m128 v = _mm_add_ps(_mm256_castps256_ps128(s[q]), _mm256_extractf128_ps(s[q], 1));
            v = _mm_add_ps(v, _mm_movehl_ps(v, v));
            v = _mm_add_ss(v, _mm_movehdup_ps(v));
            out[(ib + q / 2) * ld + (j - j0) + (q % 2)] = _mm_cvtss_f32(v);
        }
    }
  }
}

} // namespace

void register_xtx_avx2_kernels(KernelTable& t) { t.xtx_tile = xtx_tile_avx2; }

} // namespace pyllm

#endif  // x86
