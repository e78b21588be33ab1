// The row-interleaved x8 layout (see kernels.h), in scalar code: the repacker every table uses
// (the layout is data, the same for every ISA), the reference gemm over it, and one row's
// dequantization for embedding lookups. The reference gemm gathers each block back and calls
// the plain reference dot, so it is bit-identical to the plain reference gemm.
#include <cstring>

#include "kernels/kernels.h"
#include "kernels/ref/ref.h"
#include "quant/types.h"

namespace pyllm {

// Q4_K, Q5_K and Q6_K (kernels/ref/kquants_x8.cpp).
bool kquant_x8_row_to_float(Type type, const void* w, size_t row_bytes, int64_t row, int64_t k, float* y);
void register_kquant_x8_ref_kernels(KernelTable& t);

namespace {

// Byte shape of one plain block: n_halves f16 fields (d, then m), for Q5 the 4 bytes qh of fifth
// bits, then quant_bytes of quants.
struct X8Format {
    int block_bytes, n_halves, quant_bytes;
    bool fifth_bits;
};

constexpr X8Format x8_format_of(Type t) {
    return t == TYPE_Q4_0 || t == TYPE_IQ4_NL ? X8Format{18, 1, 16, false}  // same bytes: d, 16 nibble bytes
           : t == TYPE_Q4_1 ? X8Format{20, 2, 16, false}
           : t == TYPE_Q5_0 ? X8Format{22, 1, 16, true}
           : t == TYPE_Q5_1 ? X8Format{24, 2, 16, true}
                            : X8Format{34, 1, 32, false};
}

bool x8_format(Type t, X8Format* f) {
    if (t != TYPE_Q4_0 && t != TYPE_Q4_1 && t != TYPE_Q5_0 && t != TYPE_Q5_1 && t != TYPE_Q8_0 && t != TYPE_IQ4_NL) return false;
    *f = x8_format_of(t);
    return true;
}

// Copies group row L's plain block to its places in a group's block column (kToX8), or back:
// f16 field h at 16h + 2L, quant run c at quants + 32c + 4L (after the fields and fifth-bit masks).
// The fifth bits go to bits 4L..4L+3 of the 8 masks (kernels.h); kToX8 expects them zeroed.
template <bool kToX8>
inline void move_block(const X8Format& f, int L, const uint8_t* from, uint8_t* to) {
    auto copy = [&](int x8_off, int plain_off, int n) {
        if (kToX8) std::memcpy(to + x8_off, from + plain_off, n);
        else std::memcpy(to + plain_off, from + x8_off, n);
    };
    for (int h = 0; h < f.n_halves; ++h) copy(16 * h + 2 * L, 2 * h, 2);
    const int x8_quants = 16 * f.n_halves + (f.fifth_bits ? 32 : 0), plain_quants = 2 * f.n_halves + (f.fifth_bits ? 4 : 0);
    for (int c = 0; c < f.quant_bytes / 4; ++c) copy(x8_quants + 32 * c + 4 * L, plain_quants + 4 * c, 4);
    if (!f.fifth_bits) return;
    const int x8_masks = 16 * f.n_halves, plain_qh = 2 * f.n_halves;
    uint32_t qh = 0, mask;
    if (kToX8) std::memcpy(&qh, from + plain_qh, 4);
    for (int m = 0; m < 8; ++m) {  // mask m = 2c + h holds qh bits 16h + 4c .. +3
        const int shift = 16 * (m & 1) + 4 * (m >> 1);
        if (kToX8) {
            std::memcpy(&mask, to + x8_masks + 4 * m, 4);
            mask |= ((qh >> shift) & 0xfu) << (4 * L);
            std::memcpy(to + x8_masks + 4 * m, &mask, 4);
        } else {
            std::memcpy(&mask, from + x8_masks + 4 * m, 4);
            qh |= ((mask >> (4 * L)) & 0xfu) << shift;
        }
    }
    if (!kToX8) std::memcpy(to + plain_qh, &qh, 4);
}

// The format is a template argument so the copies compile to fixed moves (load time).
template <Type T>
void repack_x8_ref(const void* src, size_t row_bytes, int64_t n_rows, int64_t k, void* dst) {
    constexpr X8Format f = x8_format_of(T);
    const uint8_t* s = static_cast<const uint8_t*>(src);
    uint8_t* d = static_cast<uint8_t*>(dst);
    const int64_t nb = k / 32, full = n_rows / kX8Rows * kX8Rows;
    for (int64_t g = 0; g < full; g += kX8Rows)
        for (int64_t i = 0; i < nb; ++i) {
            uint8_t* out = d + g * row_bytes + i * kX8Rows * f.block_bytes;
            if constexpr (f.fifth_bits) std::memset(out + 16 * f.n_halves, 0, 32);
            for (int L = 0; L < kX8Rows; ++L) move_block<true>(f, L, s + (g + L) * row_bytes + i * f.block_bytes, out);
        }
    if (n_rows > full) std::memcpy(d + full * row_bytes, s + full * row_bytes, (n_rows - full) * row_bytes);
}

// Plain block i of group row L, gathered back from a group's bytes.
void gather_block(const X8Format& f, const uint8_t* group, int L, int64_t i, uint8_t* blk) {
    move_block<false>(f, L, group + i * kX8Rows * f.block_bytes, blk);
}

template <Type T, vec_dot_fn DOT>
void gemm_x8_ref(int64_t k, const void* w, size_t w_stride, int64_t n_rows,
                 const void* a, size_t a_stride, int64_t n_tok, float* out, int64_t out_stride) {
    X8Format f;
    x8_format(T, &f);
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const uint8_t* ab = static_cast<const uint8_t*>(a);
    const size_t act_block = row_size(type_traits(T).vec_dot_type, 32);
    const int64_t full = n_rows / kX8Rows * kX8Rows;
    uint8_t blk[64];
    for (int64_t t = 0; t < n_tok; ++t)
        for (int64_t r = 0; r < full; ++r) {
            // Block by block in the plain dot's order: sum += per-block term, so bit-identical.
            float sum = 0.0f;
            for (int64_t i = 0; i < k / 32; ++i) {
                gather_block(f, wb + (r - r % kX8Rows) * w_stride, (int)(r % kX8Rows), i, blk);
                sum += DOT(32, blk, ab + t * a_stride + i * act_block);
            }
            out[t * out_stride + r] = sum;
        }
    if (n_rows > full)
        gemm_from_dot<DOT>(k, wb + full * w_stride, w_stride, n_rows - full, a, a_stride, n_tok, out + full, out_stride);
}

} // namespace

void x8_row_to_float(Type type, const void* w, size_t row_bytes, int64_t n_rows, int64_t row, int64_t k, float* y) {
    X8Format f;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    if (row < n_rows / kX8Rows * kX8Rows && kquant_x8_row_to_float(type, w, row_bytes, row, k, y)) return;
    const to_float_fn deq = type_traits(type).to_float;
    if (!x8_format(type, &f) || row >= n_rows / kX8Rows * kX8Rows) {  // not x8, or a plain tail row
        deq(wb + row * row_bytes, y, k);
        return;
    }
    uint8_t blk[64];
    for (int64_t i = 0; i < k / 32; ++i) {
        gather_block(f, wb + (row - row % kX8Rows) * row_bytes, (int)(row % kX8Rows), i, blk);
        deq(blk, y + 32 * i, 32);
    }
}

void register_x8_ref_kernels(KernelTable& t) {
    t.repack_x8[TYPE_Q4_0] = repack_x8_ref<TYPE_Q4_0>;
    t.repack_x8[TYPE_Q4_1] = repack_x8_ref<TYPE_Q4_1>;
    t.repack_x8[TYPE_Q5_0] = repack_x8_ref<TYPE_Q5_0>;
    t.repack_x8[TYPE_Q5_1] = repack_x8_ref<TYPE_Q5_1>;
    t.repack_x8[TYPE_Q8_0] = repack_x8_ref<TYPE_Q8_0>;
    t.gemm_x8[TYPE_Q4_0] = gemm_x8_ref<TYPE_Q4_0, vec_dot_q4_0_q8_0_ref>;
    t.gemm_x8[TYPE_Q4_1] = gemm_x8_ref<TYPE_Q4_1, vec_dot_q4_1_q8_1_ref>;
    t.gemm_x8[TYPE_Q5_0] = gemm_x8_ref<TYPE_Q5_0, vec_dot_q5_0_q8_0_ref>;
    t.gemm_x8[TYPE_Q5_1] = gemm_x8_ref<TYPE_Q5_1, vec_dot_q5_1_q8_1_ref>;
    t.gemm_x8[TYPE_Q8_0] = gemm_x8_ref<TYPE_Q8_0, vec_dot_q8_0_q8_0_ref>;
    t.repack_x8[TYPE_IQ4_NL] = repack_x8_ref<TYPE_IQ4_NL>;
    t.gemm_x8[TYPE_IQ4_NL] = gemm_x8_ref<TYPE_IQ4_NL, vec_dot_iq4_nl_q8_0_ref>;
    register_kquant_x8_ref_kernels(t);
}

} // namespace pyllm
