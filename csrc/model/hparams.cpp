#include "model/hparams.h"

#include <cmath>
#include <limits>

#include "core/common.h"

namespace pyllm {

namespace {

constexpr double kIntMax = 2147483647.0;
// The smallest normal float: a denormal rope base (1e-40) made every logit NaN (issue 12).
constexpr double kMinNormal = 1.1754943508222875e-38;

HParam int_row(const char* field, const char* key, int ModelConfig::*m, bool required, double fallback, const char* from,
               double lo, double hi, const char* choices = "") {
    return HParam{field, key, false, required, fallback, from, choices, lo, hi, m, nullptr};
}
HParam float_row(const char* field, const char* key, float ModelConfig::*m, bool required, double fallback, double lo,
                 double hi) {
    return HParam{field, key, true, required, fallback, "", "", lo, hi, nullptr, m};
}

}  // namespace

const std::vector<HParam>& hparam_table() {
    static const std::vector<HParam> table = {
        int_row("n_vocab", "vocab_size", &ModelConfig::n_vocab, false, 0, "len:tokenizer.ggml.tokens", 1, 1 << 24),
        int_row("n_embd", "embedding_length", &ModelConfig::n_embd, true, 0, "", 1, 1 << 16),
        int_row("n_layer", "block_count", &ModelConfig::n_layer, true, 0, "", 1, 4096),
        int_row("n_head", "attention.head_count", &ModelConfig::n_head, true, 0, "", 1, 4096),
        int_row("n_head_kv", "attention.head_count_kv", &ModelConfig::n_head_kv, false, 0, "n_head", 1, 4096),
        int_row("n_ff", "feed_forward_length", &ModelConfig::n_ff, true, 0, "", 1, 1 << 20),
        int_row("head_dim", "attention.key_length", &ModelConfig::head_dim, false, 0, "n_embd/n_head", 1, 4096),
        int_row("head_dim_v", "attention.value_length", &ModelConfig::head_dim_v, false, 0, "head_dim", 1, 4096),
        int_row("n_rot", "rope.dimension_count", &ModelConfig::n_rot, false, 0, "head_dim", 2, 4096),
        float_row("rms_eps", "attention.layer_norm_rms_epsilon", &ModelConfig::rms_eps, false, 1e-5, kMinNormal, 1.0),
        int_row("n_ctx_train", "context_length", &ModelConfig::n_ctx_train, false, 2048, "", 1, kIntMax),
        float_row("rope_freq_base", "rope.freq_base", &ModelConfig::rope_freq_base, false, 10000.0, kMinNormal, 1e30),
        float_row("rope_freq_base_swa", "rope.freq_base_swa", &ModelConfig::rope_freq_base_swa, false, 10000.0, kMinNormal, 1e30),
        // llama.cpp's default type is "linear": with no factor that is no scaling.
        int_row("rope_scaling", "rope.scaling.type", &ModelConfig::rope_scaling, false, 1, "", 0, 3, "none,linear,yarn,longrope"),
        // 0 means "not scaled", as llama.cpp reads it (it once raised ZeroDivisionError here).
        float_row("rope_scaling_factor", "rope.scaling.factor", &ModelConfig::rope_scaling_factor, false, 0.0, 0.0, 1e6),
        float_row("rope_attn_factor", "rope.scaling.attn_factor", &ModelConfig::rope_attn_factor, false, 1.0, kMinNormal, 1e6),
        int_row("rope_orig_ctx", "rope.scaling.original_context_length", &ModelConfig::rope_orig_ctx, false, 0, "n_ctx_train", 1, kIntMax),
        float_row("yarn_log_mul", "rope.scaling.yarn_log_multiplier", &ModelConfig::yarn_log_mul, false, 0.0, 0.0, 1e6),
        float_row("yarn_beta_fast", "rope.scaling.yarn_beta_fast", &ModelConfig::yarn_beta_fast, false, 32.0, kMinNormal, 1e6),
        float_row("yarn_beta_slow", "rope.scaling.yarn_beta_slow", &ModelConfig::yarn_beta_slow, false, 1.0, kMinNormal, 1e6),
        int_row("n_swa", "attention.sliding_window", &ModelConfig::n_swa, false, 0, "", 0, kIntMax),
        int_row("swa_pattern", "attention.sliding_window_pattern", &ModelConfig::swa_pattern, false, 0, "", 0, 4096),
        float_row("attn_softcap", "attn_logit_softcapping", &ModelConfig::attn_softcap, false, 0.0, 0.0, 1e6),
        float_row("final_softcap", "final_logit_softcapping", &ModelConfig::final_softcap, false, 0.0, 0.0, 1e6),
        int_row("n_expert", "expert_count", &ModelConfig::n_expert, false, 0, "", 0, 4096),
        int_row("n_expert_used", "expert_used_count", &ModelConfig::n_expert_used, false, 0, "", 0, 4096),
        int_row("n_ff_expert", "expert_feed_forward_length", &ModelConfig::n_ff_expert, false, 0, "n_ff", 1, 1 << 20),
        int_row("n_ff_shexp", "expert_shared_feed_forward_length", &ModelConfig::n_ff_shexp, false, 0, "n_ff_expert", 1, 1 << 20),
    };
    return table;
}

void check_config(const ModelConfig& c) {
    auto bad = [&](const std::string& what) { fail(ErrorKind::gguf, c.arch + ": " + what); };
    for (const HParam& h : hparam_table()) {
        const double v = h.is_float ? (double)(c.*h.float_member) : (double)(c.*h.int_member);
        if (!(v >= h.lo && v <= h.hi))
            bad(std::string("hyper-parameter ") + h.key + " = " + std::to_string(v) + " is out of range (" +
                std::to_string(h.lo) + " .. " + std::to_string(h.hi) + ")");
    }
    if (c.n_head_kv > c.n_head || c.n_head % c.n_head_kv)
        bad("attention.head_count (" + std::to_string(c.n_head) + ") is not a multiple of head_count_kv (" +
            std::to_string(c.n_head_kv) + ")");
    if (c.n_rot > c.head_dim || c.n_rot % 2)
        bad("rope.dimension_count = " + std::to_string(c.n_rot) + " must be even and at most the head size " +
            std::to_string(c.head_dim));
    if (c.head_dim_v != c.head_dim)
        bad("attention.value_length (" + std::to_string(c.head_dim_v) + ") differs from key_length (" +
            std::to_string(c.head_dim) + "); pyllm runs equal sizes");
    if (c.n_expert_used > c.n_expert) bad("expert_used_count is larger than expert_count");
    if (c.n_expert > 0 && c.n_expert_used == 0) bad("expert_used_count is missing or 0");
}

} // namespace pyllm
