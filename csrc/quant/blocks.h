// Packed block layouts of the GGUF quantized types (byte-for-byte the file format).
// Half floats are stored as raw uint16_t bits; see core/fp16.h.
#pragma once
#include <cstdint>
#include <cstring>

namespace pyllm {

constexpr int QK4_0 = 32, QK4_1 = 32, QK5_0 = 32, QK5_1 = 32, QK8_0 = 32, QK8_1 = 32;
constexpr int QK_K = 256;         // K-quant super-block
constexpr int K_SCALE_SIZE = 12;  // 8 six-bit scales + 8 six-bit mins, packed
constexpr int QK4_NL = 32;        // IQ4_NL block

struct block_q4_0 { uint16_t d; uint8_t qs[QK4_0 / 2]; };                       // x = d*(q-8)
struct block_q4_1 { uint16_t d, m; uint8_t qs[QK4_1 / 2]; };                    // x = d*q + m
struct block_q5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; };        // x = d*(q-16)
struct block_q5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; };     // x = d*q + m
struct block_q8_0 { uint16_t d; int8_t qs[QK8_0]; };                            // x = d*q
struct block_q8_1 { uint16_t d, s; int8_t qs[QK8_1]; };                         // s = d*sum(q)

// K-quants: super-blocks of 256 with sub-block scales.
struct block_q2_K { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; uint16_t d, dmin; };
struct block_q3_K { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; uint16_t d; };
struct block_q4_K { uint16_t d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; };
struct block_q5_K { uint16_t d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; };
struct block_q6_K { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; };
struct block_q8_K { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; };    // activations only

// The non-linear 4-bit types: each nibble indexes ggml's fixed 16-level grid kvalues_iq4nl (denser
// near zero, where trained weights are), x = d * kvalues_iq4nl[q].
struct block_iq4_nl { uint16_t d; uint8_t qs[QK4_NL / 2]; };                    // nibbles as Q4_0
// 256-element super-block of 8 sub-blocks of 32: sub-block scale ls in 0..63 (6 bits: low nibble in
// scales_l[ib/2] (ib odd: high nibble), top 2 bits at bit 2*ib of scales_h), x = d*(ls-32)*kvalues[q].
struct block_iq4_xs { uint16_t d; uint16_t scales_h; uint8_t scales_l[QK_K / 64]; uint8_t qs[QK_K / 2]; };

alignas(16) inline constexpr int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// IQ4_XS sub-block ib's 6-bit scale (0..63, biased by 32).
inline int iq4_xs_scale(const block_iq4_xs& b, int ib) {
    return ((b.scales_l[ib / 2] >> 4 * (ib % 2)) & 0xf) | (((b.scales_h >> 2 * ib) & 3) << 4);
}

static_assert(sizeof(block_q4_0) == 18, "q4_0 block");
static_assert(sizeof(block_q4_1) == 20, "q4_1 block");
static_assert(sizeof(block_q5_0) == 22, "q5_0 block");
static_assert(sizeof(block_q5_1) == 24, "q5_1 block");
static_assert(sizeof(block_q8_0) == 34, "q8_0 block");
static_assert(sizeof(block_q8_1) == 36, "q8_1 block");
static_assert(sizeof(block_q2_K) == 84, "q2_K block");
static_assert(sizeof(block_q3_K) == 110, "q3_K block");
static_assert(sizeof(block_q4_K) == 144, "q4_K block");
static_assert(sizeof(block_q5_K) == 176, "q5_K block");
static_assert(sizeof(block_q6_K) == 210, "q6_K block");
static_assert(sizeof(block_q8_K) == 292, "q8_K block");
static_assert(sizeof(block_iq4_nl) == 18, "iq4_nl block");
static_assert(sizeof(block_iq4_xs) == 136, "iq4_xs block");

// Q3_K's 16 six-bit scales, one byte each (still biased by 32): the low nibbles are in bytes 0-7
// (groups 0-7, then their high nibbles for groups 8-15), the two high bits of group g in bits
// 2*(g/4) of byte 8 + g%4. Shared by the SIMD kernels, which widen the 16 bytes in one step.
inline void q3_K_scale_bytes(const uint8_t* scales12, uint8_t out[16]) {
    uint32_t a[3], u[4];
    std::memcpy(a, scales12, 12);
    const uint32_t low4 = 0x0f0f0f0fu, low2 = 0x03030303u;
    u[0] = (a[0] & low4) | (((a[2] >> 0) & low2) << 4);
    u[1] = (a[1] & low4) | (((a[2] >> 2) & low2) << 4);
    u[2] = ((a[0] >> 4) & low4) | (((a[2] >> 4) & low2) << 4);
    u[3] = ((a[1] >> 4) & low4) | (((a[2] >> 6) & low2) << 4);
    std::memcpy(out, u, 16);
}

// Q4_K / Q5_K's 8 six-bit scales and 8 six-bit mins, one byte each: out = scales 0-7, mins 0-7.
// Entries 0-3 are the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); entries 4-7 the nibbles of
// bytes 8-11 plus the top two bits of bytes 0-3 (scales) and 4-7 (mins).
inline void q4_K_scale_min_bytes(const uint8_t* packed12, uint8_t out[16]) {
    uint32_t a[3], u[4];
    std::memcpy(a, packed12, 12);
    const uint32_t low6 = 0x3f3f3f3fu, low4 = 0x0f0f0f0fu, top2 = 0x03030303u;
    u[0] = a[0] & low6;
    u[1] = (a[2] & low4) | (((a[0] >> 6) & top2) << 4);
    u[2] = a[1] & low6;
    u[3] = ((a[2] >> 4) & low4) | (((a[1] >> 6) & top2) << 4);
    std::memcpy(out, u, 16);
}

} // namespace pyllm
