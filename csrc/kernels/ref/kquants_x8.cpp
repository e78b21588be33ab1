// The x8 layout of the K-quants Q4_K, Q5_K and Q6_K (kernels.h), in scalar code: the repacker
// every table uses (the layout is data, the same for every ISA), the reference gemm over it, and
// one row's dequantization for embedding lookups. The reference gemm gathers a row's super-blocks
// back to plain blocks and calls the plain reference dot over the whole row, so it is
// bit-identical to the plain reference gemm for rows of up to kGatherBlocks super-blocks (k <=
// 32768; longer rows are summed in chunks of that many, within float-summation tolerance).
// Not here: Q2_K and Q3_K (they stay on the plain K-quant gemm).
#include <cstring>
#include <type_traits>

#include "kernels/kernels.h"
#include "kernels/ref/ref.h"
#include "quant/blocks.h"
#include "quant/types.h"

namespace pyllm {

namespace {

// Byte P of the "pair order" used for per-sub-block bytes (scales, mins): sub-block j of row L.
// Sub-blocks 2p and 2p+1 of the 8 rows make 16 consecutive bytes, row L's two at 2L, 2L+1, so
// widening 16 bytes to int16 gives the (j, j+1) pairs a madd with a broadcast pair of
// activation sums needs, row L in int32 lane L.
constexpr int pair_pos(int L, int j) { return 16 * (j / 2) + 2 * L + (j % 2); }

// Q4_K / Q5_K: the 6-bit scales and mins back into the 12-byte packing (the inverse of
// quant/blocks.h's q4_K_scale_min_bytes).
void pack_k4(const uint8_t* sc, const uint8_t* mn, uint8_t* q) {
    for (int j = 0; j < 4; ++j) {
        q[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        q[j + 4] = (uint8_t)((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
        q[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4));
    }
}

// Quant runs: run c of row L (4 bytes of the plain array at 4c) at 32c + 4L of the run area.
template <bool kToX8>
void move_runs(const uint8_t* from, uint8_t* to, int L, int n_runs) {
    for (int c = 0; c < n_runs; ++c) {
        if (kToX8) std::memcpy(to + 32 * c + 4 * L, from + 4 * c, 4);
        else std::memcpy(to + 4 * c, from + 32 * c + 4 * L, 4);
    }
}

// Q4_K (1152-byte column) / Q5_K (1408): d[8] f16 at 0, dmin[8] f16 at 16, sm[64] at 32 (byte
// pair_pos(L, j) = scale | (min >> 4) << 6), ml[32] at 96 (byte i: low nibble of the min at pair
// position i, high nibble that of position i + 32), Q5_K: qh runs (8) at 128, then qs runs (32).
template <bool kQ5>
struct K45 {
    using B = std::conditional_t<kQ5, block_q5_K, block_q4_K>;
    static constexpr int kCol = 8 * (int)sizeof(B);
    static constexpr int kQh = 128, kQs = kQ5 ? 384 : 128;

    static void to_x8(const B& b, int L, uint8_t* col) {
        std::memcpy(col + 2 * L, &b.d, 2);
        std::memcpy(col + 16 + 2 * L, &b.dmin, 2);
        uint8_t sm[16];  // scales 0-7, mins 0-7
        q4_K_scale_min_bytes(b.scales, sm);
        const uint8_t *sc = sm, *mn = sm + 8;
        for (int j = 0; j < 8; ++j) {
            const int p = pair_pos(L, j);
            col[32 + p] = (uint8_t)(sc[j] | ((mn[j] >> 4) << 6));
            uint8_t& nib = col[96 + p % 32];
            nib = (uint8_t)(p < 32 ? (nib & 0xF0) | (mn[j] & 0xF) : (nib & 0x0F) | ((mn[j] & 0xF) << 4));
        }
        if constexpr (kQ5) move_runs<true>(b.qh, col + kQh, L, 8);
        move_runs<true>(b.qs, col + kQs, L, 32);
    }
    static void from_x8(const uint8_t* col, int L, B& b) {
        std::memcpy(&b.d, col + 2 * L, 2);
        std::memcpy(&b.dmin, col + 16 + 2 * L, 2);
        uint8_t sc[8], mn[8];
        for (int j = 0; j < 8; ++j) {
            const int p = pair_pos(L, j);
            const uint8_t nib = p < 32 ? col[96 + p] & 0xF : col[96 + p - 32] >> 4;
            sc[j] = col[32 + p] & 63;
            mn[j] = (uint8_t)(nib | ((col[32 + p] >> 6) << 4));
        }
        pack_k4(sc, mn, b.scales);
        if constexpr (kQ5) move_runs<false>(col + kQh, b.qh, L, 8);
        move_runs<false>(col + kQs, b.qs, L, 32);
    }
};

// Q6_K (1680-byte column): d[8] f16 at 0, scales[128] (int8) at 16 by pair_pos over the 16
// sub-blocks, ql runs (32) at 144, qh runs (16) at 1168.
struct K6 {
    using B = block_q6_K;
    static constexpr int kCol = 8 * (int)sizeof(B);
    static void to_x8(const B& b, int L, uint8_t* col) {
        std::memcpy(col + 2 * L, &b.d, 2);
        for (int j = 0; j < 16; ++j) col[16 + pair_pos(L, j)] = (uint8_t)b.scales[j];
        move_runs<true>(b.ql, col + 144, L, 32);
        move_runs<true>(b.qh, col + 1168, L, 16);
    }
    static void from_x8(const uint8_t* col, int L, B& b) {
        std::memcpy(&b.d, col + 2 * L, 2);
        for (int j = 0; j < 16; ++j) b.scales[j] = (int8_t)col[16 + pair_pos(L, j)];
        move_runs<false>(col + 144, b.ql, L, 32);
        move_runs<false>(col + 1168, b.qh, L, 16);
    }
};

template <class F>
void repack_kx8_ref(const void* src, size_t row_bytes, int64_t n_rows, int64_t k, void* dst) {
    using B = typename F::B;
    const uint8_t* s = static_cast<const uint8_t*>(src);
    uint8_t* d = static_cast<uint8_t*>(dst);
    const int64_t nb = k / QK_K, full = n_rows / kX8Rows * kX8Rows;
    for (int64_t g = 0; g < full; g += kX8Rows)
        for (int64_t i = 0; i < nb; ++i) {
            uint8_t* col = d + g * row_bytes + i * F::kCol;
            std::memset(col, 0, F::kCol);
            for (int L = 0; L < kX8Rows; ++L) {
                B b;
                std::memcpy(&b, s + (g + L) * row_bytes + i * sizeof(B), sizeof(B));
                F::to_x8(b, L, col);
            }
        }
    if (n_rows > full) std::memcpy(d + full * row_bytes, s + full * row_bytes, (n_rows - full) * row_bytes);
}

constexpr int64_t kGatherBlocks = 128;

template <class F, vec_dot_fn DOT>
void gemm_kx8_ref(int64_t k, const void* w, size_t w_stride, int64_t n_rows,
                  const void* a, size_t a_stride, int64_t n_tok, float* out, int64_t out_stride) {
    using B = typename F::B;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const uint8_t* ab = static_cast<const uint8_t*>(a);
    const int64_t nb = k / QK_K, full = n_rows / kX8Rows * kX8Rows;
    B row[kGatherBlocks];
    for (int64_t r = 0; r < full; ++r) {
        const uint8_t* group = wb + (r - r % kX8Rows) * w_stride;
        for (int64_t t = 0; t < n_tok; ++t) out[t * out_stride + r] = 0.0f;
        for (int64_t b0 = 0; b0 < nb; b0 += kGatherBlocks) {
            const int64_t n = nb - b0 < kGatherBlocks ? nb - b0 : kGatherBlocks;
            for (int64_t i = 0; i < n; ++i) F::from_x8(group + (b0 + i) * F::kCol, (int)(r % kX8Rows), row[i]);
            for (int64_t t = 0; t < n_tok; ++t) {
                const float part = DOT(n * QK_K, row, ab + t * a_stride + b0 * sizeof(block_q8_K));
                out[t * out_stride + r] = b0 == 0 ? part : out[t * out_stride + r] + part;
            }
        }
    }
    if (n_rows > full)
        gemm_from_dot<DOT>(k, wb + full * w_stride, w_stride, n_rows - full, a, a_stride, n_tok, out + full, out_stride);
}

template <class F>
void row_to_float(Type type, const uint8_t* group, int L, int64_t k, float* y) {
    typename F::B b;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        F::from_x8(group + i * F::kCol, L, b);
        type_traits(type).to_float(&b, y + QK_K * i, QK_K);
    }
}

} // namespace

bool kquant_x8_row_to_float(Type type, const void* w, size_t row_bytes, int64_t row, int64_t k, float* y) {
    const uint8_t* group = static_cast<const uint8_t*>(w) + (row - row % kX8Rows) * row_bytes;
    const int L = (int)(row % kX8Rows);
    switch (type) {
        case TYPE_Q4_K: row_to_float<K45<false>>(type, group, L, k, y); return true;
        case TYPE_Q5_K: row_to_float<K45<true>>(type, group, L, k, y); return true;
        case TYPE_Q6_K: row_to_float<K6>(type, group, L, k, y); return true;
        default: return false;
    }
}

void register_kquant_x8_ref_kernels(KernelTable& t) {
    t.repack_x8[TYPE_Q4_K] = repack_kx8_ref<K45<false>>;
    t.repack_x8[TYPE_Q5_K] = repack_kx8_ref<K45<true>>;
    t.repack_x8[TYPE_Q6_K] = repack_kx8_ref<K6>;
    t.gemm_x8[TYPE_Q4_K] = gemm_kx8_ref<K45<false>, vec_dot_q4_K_q8_K_ref>;
    t.gemm_x8[TYPE_Q5_K] = gemm_kx8_ref<K45<true>, vec_dot_q5_K_q8_K_ref>;
    t.gemm_x8[TYPE_Q6_K] = gemm_kx8_ref<K6, vec_dot_q6_K_q8_K_ref>;
}

} // namespace pyllm
