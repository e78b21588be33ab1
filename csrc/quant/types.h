// The type-traits table: one row per GGUF tensor type, indexed by the GGUF type id.
// Adding a format = a block struct (blocks.h), a to_float and a from_float, and one row here.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pyllm {

// Values are the GGUF type ids and never change (append-only).
enum Type : int32_t {
    TYPE_F32 = 0, TYPE_F16 = 1, TYPE_Q4_0 = 2, TYPE_Q4_1 = 3,
    TYPE_Q5_0 = 6, TYPE_Q5_1 = 7, TYPE_Q8_0 = 8, TYPE_Q8_1 = 9,
    TYPE_Q2_K = 10, TYPE_Q3_K = 11, TYPE_Q4_K = 12, TYPE_Q5_K = 13, TYPE_Q6_K = 14, TYPE_Q8_K = 15,
    TYPE_IQ4_NL = 20, TYPE_IQ4_XS = 23,
    TYPE_BF16 = 30,
    TYPE_COUNT = 31,
};

// Dequantize n elements (n a multiple of the block size) of a row to floats.
using to_float_fn = void (*)(const void* src, float* dst, int64_t n);
// Quantize n floats to n elements of the type (n a multiple of the block size).
using from_float_fn = void (*)(const float* src, void* dst, int64_t n);

struct TypeTraits {
    const char* name;        // nullptr for ids that are not a known type
    int64_t block_size;      // elements per block
    size_t type_size;        // bytes per block
    bool is_quantized;
    to_float_fn to_float;    // scalar reference dequantizer (nullptr if the type has none)
    from_float_fn from_float;// scalar reference quantizer, bit-exact with ggml (nullptr if none)
    Type vec_dot_type;       // the activation type a matmul against this weight type uses
    bool activation_only = false;  // Q8_1, Q8_K: matmul activations, never a weight type
};

bool type_is_known(int32_t id);
const TypeTraits& type_traits(Type t);  // t must be known (asserted)
Type type_from_name(const char* name);  // case-insensitive; TYPE_COUNT if unknown

// The block layout of every tensor type ggml defines, including those pyllm does not run (the
// other i-quants, TQ1_0/TQ2_0, MXFP4, integer types ...), so that a file holding them can still be
// read, listed and named in an error. nullptr for an id that is no GGUF tensor type.
struct TypeLayout {
    const char* name;
    int64_t block_size;
    size_t type_size;
};
const TypeLayout* type_layout(int32_t id);

// Bytes of a row of n elements; n must be a multiple of the block size (asserted).
inline size_t row_size(Type t, int64_t n) {
    const TypeTraits& tt = type_traits(t);
    return (size_t)(n / tt.block_size) * tt.type_size;
}

} // namespace pyllm
