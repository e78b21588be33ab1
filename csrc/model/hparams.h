// A model's hyper-parameters and the one table that says where each comes from in a GGUF file
// (the `{arch}.` keys, as llama.cpp's llama-arch names them), its default and its valid range.
// Python reads the metadata through this table (_core.hparam_table(); pyllm/model.py) and hands
// back a dict of the same fields; nothing else restates the keys. Not the architecture's shape
// (which tensors, norms, activation): that is model/arch.h.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pyllm {

enum class RopeScaling : int { none = 0, linear = 1, yarn = 2, longrope = 3 };

struct ModelConfig {
    std::string arch;
    int n_vocab = 0, n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, n_ff = 0;
    int head_dim = 0;            // per-head size of q and k (attention.key_length)
    int head_dim_v = 0;          // per-head size of v (attention.value_length)
    int n_rot = 0;               // rotated dims per head (<= head_dim)
    float rms_eps = 1e-5f;
    int n_ctx_train = 0;
    // Rope: theta_i = pos * base^(-2i/n_rot), scaled as rope_scaling says.
    float rope_freq_base = 10000.0f;
    float rope_freq_base_swa = 10000.0f;  // sliding-window layers' base (gemma3's local layers)
    int rope_scaling = 0;                 // RopeScaling
    float rope_scaling_factor = 0.0f;     // 0 (or absent): none, as llama.cpp reads it
    float rope_attn_factor = 1.0f;
    int rope_orig_ctx = 0;                // YaRN's original context (default: n_ctx_train)
    float yarn_log_mul = 0.0f;
    float yarn_beta_fast = 32.0f, yarn_beta_slow = 1.0f;
    // Attention.
    int n_swa = 0;                        // sliding window (positions), 0: none
    int swa_pattern = 0;                  // every swa_pattern-th layer is global (the rest slide)
    float attn_softcap = 0.0f;            // gemma2's logit soft-cap, 0: none
    float final_softcap = 0.0f;
    // Mixture of experts.
    int n_expert = 0, n_expert_used = 0;
    int n_ff_expert = 0;                  // expert_feed_forward_length (default n_ff)
    int n_ff_shexp = 0;                   // qwen2moe's shared expert (default n_ff_expert)

    float rope_freq_scale() const { return rope_scaling_factor > 0.0f ? 1.0f / rope_scaling_factor : 1.0f; }
};

// One row of the key table.
struct HParam {
    const char* field;     // the ModelConfig member (and the dict key Python passes back)
    const char* key;       // after "{arch}."; "" for fields Python fills itself (arch)
    bool is_float;
    bool required;         // a missing key is a GGUFError
    double fallback;       // when absent and not required (see from_field)
    const char* from_field;// when absent, instead of `fallback`: another field ("n_head"), a quotient of
                           // two ("n_embd/n_head"), or the length of a metadata array
                           // ("len:tokenizer.ggml.tokens"); "" for none
    const char* choices;   // a string-valued key: its comma-separated values, stored as the index
    double lo, hi;         // valid range, inclusive; a value outside is a GGUFError naming the key
    int ModelConfig::*int_member;
    float ModelConfig::*float_member;
};

const std::vector<HParam>& hparam_table();

// Checks what the table cannot (relations between fields); throws Error(gguf).
void check_config(const ModelConfig& c);

} // namespace pyllm
