#include "quant/types.h"

#include <cassert>
#include <cctype>
#include <cstring>

#include "quant/blocks.h"
#include "quant/quants.h"

namespace pyllm {

namespace {

// One row per type, at index = GGUF type id. Rows left zero are ids that are not (or no longer)
// types: 4 and 5 were Q4_2/Q4_3, 16..29 are the i-quants and integer types we don't load.
struct Table {
    TypeTraits rows[TYPE_COUNT] = {};
    Table() {
        //                 name    block  bytes                   quant  to_float              from_float          vec_dot_type
        rows[TYPE_F32]  = {"F32",  1,     4,                      false, dequantize_row_f32,   quantize_row_f32,   TYPE_F32};
        rows[TYPE_F16]  = {"F16",  1,     2,                      false, dequantize_row_f16,   quantize_row_f16,   TYPE_F32};
        rows[TYPE_BF16] = {"BF16", 1,     2,                      false, dequantize_row_bf16,  quantize_row_bf16,  TYPE_F32};
        rows[TYPE_Q4_0] = {"Q4_0", QK4_0, sizeof(block_q4_0),     true,  dequantize_row_q4_0,  quantize_row_q4_0,  TYPE_Q8_0};
        rows[TYPE_Q4_1] = {"Q4_1", QK4_1, sizeof(block_q4_1),     true,  dequantize_row_q4_1,  quantize_row_q4_1,  TYPE_Q8_1};
        rows[TYPE_Q5_0] = {"Q5_0", QK5_0, sizeof(block_q5_0),     true,  dequantize_row_q5_0,  quantize_row_q5_0,  TYPE_Q8_0};
        rows[TYPE_Q5_1] = {"Q5_1", QK5_1, sizeof(block_q5_1),     true,  dequantize_row_q5_1,  quantize_row_q5_1,  TYPE_Q8_1};
        rows[TYPE_Q8_0] = {"Q8_0", QK8_0, sizeof(block_q8_0),     true,  dequantize_row_q8_0,  quantize_row_q8_0,  TYPE_Q8_0};
        rows[TYPE_Q8_1] = {"Q8_1", QK8_1, sizeof(block_q8_1),     true,  dequantize_row_q8_1,  quantize_row_q8_1,  TYPE_Q8_1};
        rows[TYPE_Q2_K] = {"Q2_K", QK_K,  sizeof(block_q2_K),     true,  dequantize_row_q2_K,  quantize_row_q2_K,  TYPE_Q8_K};
        rows[TYPE_Q3_K] = {"Q3_K", QK_K,  sizeof(block_q3_K),     true,  dequantize_row_q3_K,  quantize_row_q3_K,  TYPE_Q8_K};
        rows[TYPE_Q4_K] = {"Q4_K", QK_K,  sizeof(block_q4_K),     true,  dequantize_row_q4_K,  quantize_row_q4_K,  TYPE_Q8_K};
        rows[TYPE_Q5_K] = {"Q5_K", QK_K,  sizeof(block_q5_K),     true,  dequantize_row_q5_K,  quantize_row_q5_K,  TYPE_Q8_K};
        rows[TYPE_Q6_K] = {"Q6_K", QK_K,  sizeof(block_q6_K),     true,  dequantize_row_q6_K,  quantize_row_q6_K,  TYPE_Q8_K};
        rows[TYPE_Q8_K] = {"Q8_K", QK_K,  sizeof(block_q8_K),     true,  dequantize_row_q8_K,  quantize_row_q8_K,  TYPE_Q8_K};
    }
};

const Table& table() {
    static const Table t;
    return t;
}

} // namespace

bool type_is_known(int32_t id) {
    return id >= 0 && id < TYPE_COUNT && table().rows[id].name != nullptr;
}

const TypeTraits& type_traits(Type t) {
    assert(type_is_known(t));
    return table().rows[t];
}

static bool equal_ignoring_case(const char* a, const char* b) {
    for (; *a && *b; ++a, ++b)
        if (std::tolower((unsigned char)*a) != std::tolower((unsigned char)*b)) return false;
    return *a == *b;
}

Type type_from_name(const char* name) {
    for (int i = 0; i < TYPE_COUNT; ++i) {
        const char* n = table().rows[i].name;
        if (n && equal_ignoring_case(n, name)) return (Type)i;
    }
    return TYPE_COUNT;
}

} // namespace pyllm
