#include "ops/kv_cache.h"

#include <cassert>

#include "core/common.h"

namespace pyllm {

static bool kv_type_allowed(Type t) {
    switch (t) {
        case TYPE_F32: case TYPE_F16: case TYPE_BF16: case TYPE_Q8_0: case TYPE_Q4_0: case TYPE_Q4_1:
        case TYPE_Q5_0: case TYPE_Q5_1: return true;
        default: return false;
    }
}

Type kv_cache_type_from_name(const std::string& name) {
    const Type t = type_from_name(name.c_str());
    if (t == TYPE_COUNT || !kv_type_allowed(t))
        fail(ErrorKind::invalid_argument, "unknown KV cache type '" + name +
             "': choose one of f16, q8_0, q4_0, f32, bf16, q4_1, q5_0, q5_1");
    return t;
}

static void check_kv_type(Type t, int head_dim, const char* which) {
    if (!kv_type_allowed(t))
        fail(ErrorKind::invalid_argument, std::string("KV cache type ") + std::to_string((int)t) + " is not supported for " + which);
    const int64_t bs = type_traits(t).block_size;
    if (head_dim % bs != 0)
        fail(ErrorKind::invalid_argument, std::string(which) + " cache type " + type_traits(t).name + " needs a head size that is a multiple of " +
             std::to_string(bs) + "; this model's is " + std::to_string(head_dim));
}

uint64_t KvCache::bytes_for(Type type_k, Type type_v, int n_layer, int64_t n_ctx, int n_kv_head, int head_dim) {
    const int64_t n = (int64_t)n_kv_head * head_dim;
    return (uint64_t)(row_size(type_k, n) + row_size(type_v, n)) * n_layer * n_ctx;
}

KvCache::KvCache(Type type_k, Type type_v, int n_layer, int64_t n_ctx, int n_kv_head, int head_dim)
    : type_k_(type_k), type_v_(type_v), n_layer_(n_layer), n_ctx_(n_ctx), n_embd_kv_((int64_t)n_kv_head * head_dim) {
    check_kv_type(type_k, head_dim, "K");
    check_kv_type(type_v, head_dim, "V");
    k_row_bytes_ = row_size(type_k, n_embd_kv_);
    v_row_bytes_ = row_size(type_v, n_embd_kv_);
    const size_t rows = (size_t)n_layer * n_ctx;
    k_.reset(static_cast<uint8_t*>(std::calloc(rows, k_row_bytes_)));
    v_.reset(static_cast<uint8_t*>(std::calloc(rows, v_row_bytes_)));
    if (!k_ || !v_)
        fail(ErrorKind::invalid_argument, "cannot allocate a KV cache of " + std::to_string(bytes() >> 20) +
             " MiB for n_ctx=" + std::to_string(n_ctx));
}

// f16 through the table's converter; other types through the activation quantizer where the table
// has one for the type (byte-identical to the reference), else the reference quantizer.
static void store_row(const KernelTable& kt, Type t, const float* x, uint8_t* dst, int64_t n) {
    if (t == TYPE_F16) { kt.f32_to_f16(x, reinterpret_cast<uint16_t*>(dst), n); return; }
    from_float_fn q = kt.quantize_act[t] ? kt.quantize_act[t] : type_traits(t).from_float;
    q(x, dst, n);
}

void KvCache::store(const KernelTable& kt, int layer, int64_t pos, const float* k, const float* v) {
    assert(layer >= 0 && layer < n_layer_ && pos >= 0 && pos < n_ctx_);
    const size_t row = (size_t)layer * n_ctx_ + pos;
    store_row(kt, type_k_, k, k_.get() + row * k_row_bytes_, n_embd_kv_);
    store_row(kt, type_v_, v, v_.get() + row * v_row_bytes_, n_embd_kv_);
}

KvLayerView KvCache::layer(int l) const {
    assert(l >= 0 && l < n_layer_);
    const size_t row = (size_t)l * n_ctx_;
    return {type_k_, type_v_, k_.get() + row * k_row_bytes_, v_.get() + row * v_row_bytes_, k_row_bytes_, v_row_bytes_};
}

} // namespace pyllm
