#include "quant/types.h"

#include <cassert>
#include <cctype>
#include <cstring>

#include "quant/blocks.h"
#include "quant/quants.h"

namespace pyllm {

namespace {

// One row per type, at index = GGUF type id. Rows left zero are ids that are not (or no longer)
// types we run: 4 and 5 were Q4_2/Q4_3; the other i-quants and the integer types have only a
// TypeLayout (below).
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
        rows[TYPE_IQ4_NL] = {"IQ4_NL", QK4_NL, sizeof(block_iq4_nl), true, dequantize_row_iq4_nl, quantize_row_iq4_nl, TYPE_Q8_0};
        rows[TYPE_IQ4_XS] = {"IQ4_XS", QK_K,   sizeof(block_iq4_xs), true, dequantize_row_iq4_xs, quantize_row_iq4_xs, TYPE_Q8_K};
        rows[TYPE_Q8_1].activation_only = rows[TYPE_Q8_K].activation_only = true;
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

// ggml's type table (ggml/include/ggml.h, ggml-common.h): name, elements per block, bytes per block.
// Ids 31-33 and 36-38 were repacked layouts that GGUF files no longer hold.
const TypeLayout* type_layout(int32_t id) {
    static const struct Foreign { int32_t id; TypeLayout layout; } kForeign[] = {
        {16, {"IQ2_XXS", 256, 66}}, {17, {"IQ2_XS", 256, 74}}, {18, {"IQ3_XXS", 256, 98}},
        {19, {"IQ1_S", 256, 50}},   {21, {"IQ3_S", 256, 110}}, {22, {"IQ2_S", 256, 82}},
        {24, {"I8", 1, 1}},         {25, {"I16", 1, 2}},       {26, {"I32", 1, 4}},
        {27, {"I64", 1, 8}},        {28, {"F64", 1, 8}},       {29, {"IQ1_M", 256, 56}},
        {34, {"TQ1_0", 256, 54}},   {35, {"TQ2_0", 256, 66}},  {39, {"MXFP4", 32, 17}},
        {40, {"NVFP4", 64, 36}},    {41, {"Q1_0", 128, 18}},   {42, {"Q2_0", 64, 18}},
    };
    static const struct Layouts {
        TypeLayout rows[64] = {};
        Layouts() {
            for (int i = 0; i < TYPE_COUNT; ++i)
                if (type_is_known(i)) rows[i] = {table().rows[i].name, table().rows[i].block_size, table().rows[i].type_size};
            for (const Foreign& f : kForeign) rows[f.id] = f.layout;
        }
    } layouts;
    if (id < 0 || id >= 64 || !layouts.rows[id].name) return nullptr;
    return &layouts.rows[id];
}

} // namespace pyllm
