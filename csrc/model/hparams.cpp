#include "model/hparams.h"

#include <cmath>
#include <cstdio>
#include <limits>

#include "core/common.h"
#include "model/arch.h"

namespace pyllm {

namespace {

constexpr double kInt32Max = 2147483647.0;

// What a number must be besides lying in [lo, hi]: any finite value, or a normal positive one
// (no 0, denormal, inf or NaN: a rope base or an epsilon of 1e-40 is a corrupt file).
enum class Need { any, finite, positive };

// One row per hyper-parameter: the struct field it fills, and the GGUF key it is read from
// ("{arch}." + key), or none where the family derives it.
struct Row {
    HParamField field;
    const char* key;  // nullptr: not read from the file
    bool required;
    double lo, hi;
    Need need;
};

HParamField field(const char* n, int HParams::*p) { HParamField f{n, HParamField::i32}; f.i = p; return f; }
HParamField field(const char* n, float HParams::*p) { HParamField f{n, HParamField::f32}; f.f = p; return f; }
HParamField field(const char* n, bool HParams::*p) { HParamField f{n, HParamField::boolean}; f.b = p; return f; }
HParamField field(const char* n, std::string HParams::*p) { HParamField f{n, HParamField::string}; f.s = p; return f; }

#define F(member, kind) field(#member, &HParams::member)
const Row kTable[] = {
    {F(arch, string), nullptr, false, 0, 0, Need::any},
    {F(n_vocab, i32), "vocab_size", false, 1, 1 << 24, Need::any},
    {F(n_embd, i32), "embedding_length", true, 1, 1 << 16, Need::any},
    {F(n_layer, i32), "block_count", true, 1, 4096, Need::any},
    {F(n_head, i32), "attention.head_count", true, 1, 4096, Need::any},
    {F(n_head_kv, i32), "attention.head_count_kv", false, 1, 4096, Need::any},
    {F(n_ff, i32), "feed_forward_length", true, 1, 1 << 20, Need::any},
    {F(head_dim, i32), "attention.key_length", false, 1, 4096, Need::any},
    {F(n_rot, i32), "rope.dimension_count", false, 2, 4096, Need::any},
    {F(n_ctx_train, i32), "context_length", false, 1, kInt32Max, Need::any},
    {F(rms_eps, f32), "attention.layer_norm_rms_epsilon", false, 0, 1, Need::positive},
    {F(rope_freq_base, f32), "rope.freq_base", false, 0, 1e30, Need::positive},
    {F(rope_freq_scale, f32), nullptr, false, 0, 0, Need::any},  // 1/rope.scaling.factor, below
    {F(rope_neox, boolean), nullptr, false, 0, 0, Need::any},
    {F(rope_scaling, string), "rope.scaling.type", false, 0, 0, Need::any},
    {F(rope_n_ctx_orig, i32), "rope.scaling.original_context_length", false, 1, kInt32Max, Need::any},
    {F(rope_attn_factor, f32), "rope.scaling.attn_factor", false, 0, 1e6, Need::positive},
    // rope.scaling.yarn_log_multiplier: llama.cpp reads it for deepseek2 only; no family here does.
    {F(yarn_log_mul, f32), nullptr, false, 0, 0, Need::any},
    {F(yarn_ext_factor, f32), nullptr, false, 0, 0, Need::any},
    {F(yarn_attn_factor, f32), nullptr, false, 0, 0, Need::any},
    // llama.cpp 0.3.36 reads rope.scaling.yarn_beta_fast/_slow (which its converter writes) only
    // for grok: 32 and 1 for these families, whatever the file says.
    {F(yarn_beta_fast, f32), nullptr, false, 0, 0, Need::any},
    {F(yarn_beta_slow, f32), nullptr, false, 0, 0, Need::any},
    {F(n_swa, i32), "attention.sliding_window", false, 0, kInt32Max, Need::any},
    {F(swa_pattern, i32), "attention.sliding_window_pattern", false, 0, 4096, Need::any},
    {F(rope_freq_base_swa, f32), "rope.freq_base_swa", false, 0, 1e30, Need::positive},
    {F(rope_freq_scale_swa, f32), nullptr, false, 0, 0, Need::any},
    {F(attn_softcap, f32), "attn_logit_softcapping", false, 0, 1e6, Need::finite},
    {F(final_softcap, f32), "final_logit_softcapping", false, 0, 1e6, Need::finite},
    {F(attn_scale, f32), nullptr, false, 0, 0, Need::any},
    {F(n_expert, i32), "expert_count", false, 0, 4096, Need::any},
    {F(n_expert_used, i32), "expert_used_count", false, 0, 4096, Need::any},
    {F(n_ff_exp, i32), "expert_feed_forward_length", false, 1, 1 << 20, Need::any},
    {F(n_ff_shexp, i32), "expert_shared_feed_forward_length", false, 1, 1 << 20, Need::any},
    {F(expert_weights_norm, boolean), nullptr, false, 0, 0, Need::any},
    {F(embd_scale, f32), nullptr, false, 0, 0, Need::any},
};
#undef F

std::string show(double v) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.9g", v);
    return buf;
}

[[noreturn]] void bad_key(const std::string& key, const std::string& why) {
    fail(ErrorKind::gguf, "metadata key '" + key + "' " + why);
}

// A number under `key`, checked; false when absent.
bool read_number(const Metadata& md, const std::string& key, bool integral, double lo, double hi, Need need, double* out) {
    auto it = md.find(key);
    if (it == md.end()) return false;
    const MetaValue& v = it->second;
    if (v.kind != MetaValue::number)
        bad_key(key, v.kind == MetaValue::array ? "is an array; pyllm reads one value for every layer"
                                                : "should be a number");
    const double x = v.num;
    if (std::isnan(x) || std::isinf(x)) bad_key(key, "is " + show(x) + "; it must be a finite number");
    if (integral && x != std::floor(x)) bad_key(key, "should be an integer, got " + show(x));
    if (need == Need::positive && !(std::isnormal((float)x) && x > 0))
        bad_key(key, "is " + show(x) + "; it must be a positive normal number");
    if (x < lo || x > hi) bad_key(key, "= " + show(x) + " is out of range (" + show(lo) + ".." + show(hi) + ")");
    *out = x;
    return true;
}

} // namespace

const std::vector<HParamField>& hparam_fields() {
    static const std::vector<HParamField> fields = [] {
        std::vector<HParamField> f;
        for (const Row& r : kTable) f.push_back(r.field);
        return f;
    }();
    return fields;
}

HParams read_hparams(const Metadata& md) {
    auto it = md.find("general.architecture");
    if (it == md.end() || it->second.kind != MetaValue::string)
        fail(ErrorKind::gguf, "metadata key 'general.architecture' is missing or not a string");
    const std::string arch = it->second.str;
    const ArchSpec* spec = find_arch(arch);
    if (!spec) fail(ErrorKind::unsupported, "architecture '" + arch + "' is not supported; pyllm runs: " + supported_archs());

    HParams h;
    h.arch = arch;
    h.rope_neox = spec->rope_neox;
    h.expert_weights_norm = spec->expert_weights_norm;
    if (spec->defaults) spec->defaults(h);
    for (const Row& r : kTable) {
        if (!r.key) continue;
        const std::string key = arch + "." + r.key;
        auto kv = md.find(key);
        if (kv == md.end()) {
            if (r.required) bad_key(key, "is missing");
            continue;
        }
        switch (r.field.kind) {
        case HParamField::i32: {
            double x;
            read_number(md, key, true, r.lo, r.hi, r.need, &x);
            h.*r.field.i = (int)x;
            break;
        }
        case HParamField::f32: {
            double x;
            read_number(md, key, false, r.lo, r.hi, r.need, &x);
            h.*r.field.f = (float)x;
            break;
        }
        case HParamField::boolean:
            if (kv->second.kind != MetaValue::boolean) bad_key(key, "should be a bool");
            h.*r.field.b = kv->second.num != 0;
            break;
        case HParamField::string:
            if (kv->second.kind != MetaValue::string) bad_key(key, "should be a string");
            h.*r.field.s = kv->second.str;
            break;
        }
    }

    // Defaults that depend on other keys, as llama.cpp's loader takes them.
    if (!h.n_vocab) {
        auto tok = md.find("tokenizer.ggml.tokens");
        if (tok == md.end() || tok->second.kind != MetaValue::array)
            bad_key(arch + ".vocab_size", "is missing and there is no tokenizer.ggml.tokens list to count");
        if (tok->second.len < 1 || tok->second.len > (1 << 24))
            bad_key("tokenizer.ggml.tokens", "has " + std::to_string(tok->second.len) + " entries (1..16777216)");
        h.n_vocab = (int)tok->second.len;
    }
    if (!h.n_head_kv) h.n_head_kv = h.n_head;
    if (!h.head_dim) h.head_dim = h.n_embd / h.n_head;
    if (!h.n_rot) h.n_rot = h.head_dim;
    if (!h.n_ctx_train) h.n_ctx_train = 2048;
    if (!h.rope_n_ctx_orig) h.rope_n_ctx_orig = h.n_ctx_train;
    if (!h.n_ff_exp) h.n_ff_exp = h.n_ff;
    if (!h.n_ff_shexp) h.n_ff_shexp = h.n_ff_exp;
    double v;
    if (read_number(md, arch + ".attention.value_length", true, 1, 4096, Need::any, &v) && (int)v != h.head_dim)
        fail(ErrorKind::unsupported, arch + ".attention.value_length (" + show(v) + ") differs from the key length (" +
                                         std::to_string(h.head_dim) + "); pyllm needs them equal");

    // Rope scaling: llama.cpp's rules (llama-model.cpp load_hparams, llama-context.cpp).
    const std::string& type = h.rope_scaling;
    if (type != "none" && type != "linear" && type != "yarn" && type != "longrope")
        fail(ErrorKind::unsupported, "metadata key '" + arch + ".rope.scaling.type' is '" + type +
                                         "'; pyllm runs none, linear, yarn and longrope");
    double factor = 1.0;
    if (!read_number(md, arch + ".rope.scaling.factor", false, 0, 1e6, Need::positive, &factor))
        read_number(md, arch + ".rope.scale_linear", false, 0, 1e6, Need::positive, &factor);
    h.rope_freq_scale = type == "none" ? 1.0f : 1.0f / (float)factor;
    h.yarn_ext_factor = type == "yarn" ? 1.0f : 0.0f;
    h.yarn_attn_factor = 1.0f;
    if (h.yarn_ext_factor != 0) {
        auto get_mscale = [](float scale, float mscale) { return scale <= 1.0f ? 1.0f : (0.1f * mscale * std::log(scale) + 1.0f); };
        const float f = 1.0f / h.rope_freq_scale;
        h.yarn_attn_factor = h.yarn_log_mul != 0 ? get_mscale(f, 1.0f) / get_mscale(f, h.yarn_log_mul) : get_mscale(f, 1.0f);
        // rope_cache multiplies this by YaRN's own (1 + 0.1 ln f) again; llama.cpp cancels it here.
        h.yarn_attn_factor *= 1.0f / (1.0f + 0.1f * std::log(f));
    }
    h.yarn_attn_factor *= h.rope_attn_factor;
    if (h.rope_freq_base_swa == 0) h.rope_freq_base_swa = h.rope_freq_base;

    if (spec->derive) spec->derive(h, md);
    validate_hparams(h);
    return h;
}

void validate_hparams(const HParams& h) {
    const ArchSpec* spec = find_arch(h.arch);
    if (!spec) fail(ErrorKind::unsupported, "architecture '" + h.arch + "' is not supported; pyllm runs: " + supported_archs());
    auto range = [](const char* what, int64_t v, int64_t lo, int64_t limit) {
        if (v < lo || v > limit)
            fail(ErrorKind::gguf, std::string("hyper-parameter ") + what + " = " + std::to_string(v) +
                 " is out of range (" + std::to_string(lo) + ".." + std::to_string(limit) + ")");
    };
    range("vocab_size", h.n_vocab, 1, 1 << 24);
    range("embedding_length", h.n_embd, 1, 1 << 16);
    range("block_count", h.n_layer, 1, 4096);
    range("attention.head_count", h.n_head, 1, 4096);
    range("attention.head_count_kv", h.n_head_kv, 1, h.n_head);
    range("feed_forward_length", h.n_ff, 1, 1 << 20);
    range("head_dim", h.head_dim, 1, 4096);
    range("attention.sliding_window", h.n_swa, 0, (int64_t)kInt32Max);
    range("attention.sliding_window_pattern", h.swa_pattern, 0, 4096);
    range("expert_count", h.n_expert, 0, 4096);
    if (h.n_expert > 0) {
        range("expert_used_count", h.n_expert_used, 1, h.n_expert);
        range("expert_feed_forward_length", h.n_ff_exp, 1, 1 << 20);
        range("expert_shared_feed_forward_length", h.n_ff_shexp, 1, 1 << 20);
        if (!spec->moe)
            fail(ErrorKind::unsupported, h.arch + " with expert_count = " + std::to_string(h.n_expert) +
                 ": pyllm runs mixture-of-experts files of llama (Mixtral), qwen2moe, qwen3moe and olmoe");
    }
    if (h.n_head % h.n_head_kv)
        fail(ErrorKind::gguf, "attention.head_count (" + std::to_string(h.n_head) + ") is not a multiple of head_count_kv (" +
             std::to_string(h.n_head_kv) + ")");
    if (h.n_rot <= 0 || h.n_rot > h.head_dim || h.n_rot % 2)
        fail(ErrorKind::gguf, "rope.dimension_count = " + std::to_string(h.n_rot) + " must be even and at most the head size " + std::to_string(h.head_dim));
    for (float x : {h.rms_eps, h.rope_freq_base, h.rope_freq_scale, h.rope_freq_base_swa, h.rope_freq_scale_swa, h.yarn_attn_factor, h.embd_scale})
        if (!(std::isnormal(x) && x > 0))
            fail(ErrorKind::gguf, "layer_norm_rms_epsilon, rope.freq_base(_swa), rope scaling and the embedding scale must be positive normal numbers");
    for (float x : {h.attn_softcap, h.final_softcap, h.attn_scale})
        if (!(std::isfinite(x) && x >= 0)) fail(ErrorKind::gguf, "soft-caps and the attention scale must be finite and >= 0");
}

} // namespace pyllm
