// The KV cache of one sequence: per layer, the K and V rows of every cached position, each in its
// own type (llama.cpp's -ctk/-ctv: f16 by default; q8_0 halves the memory, q4_0 quarters it).
// It stores rows (quantizing them with the reference quantizers, bit-exact with ggml) and hands
// attention a view of a layer; it does not attend (ops.h's attention reads the view).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "kernels/kernels.h"
#include "quant/types.h"

namespace pyllm {

// One layer of the cache: position p's K row (all KV heads, head g's head_dim elements at
// element g*head_dim) at k + p*k_row_bytes, the same for V.
struct KvLayerView {
    Type type_k = TYPE_F16, type_v = TYPE_F16;
    const uint8_t* k = nullptr;
    const uint8_t* v = nullptr;
    size_t k_row_bytes = 0, v_row_bytes = 0;
};

// The types a cache may hold: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 (llama.cpp's list but
// iq4_nl). Parses a name (case-insensitive) or throws Error(invalid_argument) naming the choices.
Type kv_cache_type_from_name(const std::string& name);

class KvCache {
public:
    // Throws Error(invalid_argument) for a type the cache cannot hold, or a quantized type whose
    // block does not divide head_dim (a block must not straddle two heads), or when out of memory.
    KvCache(Type type_k, Type type_v, int n_layer, int64_t n_ctx, int n_kv_head, int head_dim);

    static uint64_t bytes_for(Type type_k, Type type_v, int n_layer, int64_t n_ctx, int n_kv_head, int head_dim);
    uint64_t bytes() const { return (k_row_bytes_ + v_row_bytes_) * (uint64_t)n_layer_ * n_ctx_; }
    Type type_k() const { return type_k_; }
    Type type_v() const { return type_v_; }

    // Writes position pos of layer `layer` from n_kv_head*head_dim floats of k and of v.
    void store(const KernelTable& kt, int layer, int64_t pos, const float* k, const float* v);
    KvLayerView layer(int l) const;

private:
    Type type_k_, type_v_;
    int n_layer_;
    int64_t n_ctx_, n_embd_kv_;
    size_t k_row_bytes_, v_row_bytes_;
    // calloc'd: the pages stay untouched (not resident) until a position is written, so a large
    // n_ctx costs no memory until it is used.
    struct FreeDeleter { void operator()(void* p) const { std::free(p); } };
    std::unique_ptr<uint8_t[], FreeDeleter> k_, v_;
};

} // namespace pyllm
