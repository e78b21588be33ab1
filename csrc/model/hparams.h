// Hyper-parameters: the one table of GGUF metadata keys pyllm reads ("{arch}.block_count",
// "{arch}.attention.sliding_window", "{arch}.rope.scaling.*", ...), the struct they fill, and
// their validation at the boundary. Python reads the same table through the binding
// (_core.read_hparams, _core.hparam_fields) rather than restating it.
// Not tensors (model.h checks those), not the tokenizer's keys.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace pyllm {

// A metadata value as the binding hands it over: numbers as double (exact below 2^53; every
// integer key is refused above 2^31 anyway), a bool, a string, or an array (its length only).
struct MetaValue {
    enum Kind { number, boolean, string, array, other } kind = number;
    bool integral = false;  // a GGUF integer type (not a float that happens to be whole)
    double num = 0;
    std::string str;
    int64_t len = 0;
};
using Metadata = std::unordered_map<std::string, MetaValue>;

struct HParams {
    std::string arch;
    int n_vocab = 0, n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, n_ff = 0;
    int head_dim = 0;          // per-head size of q/k/v (attention.key_length)
    int n_rot = 0;             // rotated dims per head (<= head_dim)
    int n_ctx_train = 0;
    float rms_eps = 1e-5f;
    float rope_freq_base = 10000.0f;
    float rope_freq_scale = 1.0f;  // 1/rope.scaling.factor (linear and YaRN)
    bool rope_neox = false;        // rotate (i, i + n_rot/2) pairs, not adjacent ones (the family says)

    // Rope scaling, as llama.cpp's context derives it.
    std::string rope_scaling = "linear";  // none | linear | yarn | longrope
    int rope_n_ctx_orig = 0;              // rope.scaling.original_context_length (n_ctx_train)
    float rope_attn_factor = 1.0f;        // rope.scaling.attn_factor (LongRoPE's magnitude)
    float yarn_log_mul = 0.0f;            // (deepseek2's rope.scaling.yarn_log_multiplier; unread here)
    float yarn_ext_factor = 0.0f;         // 1 for YaRN: mix of interpolated and extrapolated angles
    float yarn_attn_factor = 1.0f;        // the cos/sin magnitude before YaRN's own correction
    float yarn_beta_fast = 32.0f, yarn_beta_slow = 1.0f;

    // Sliding-window attention: layer l attends to the last n_swa positions when is_swa(l).
    int n_swa = 0;                 // attention.sliding_window; 0: every layer is global
    int swa_pattern = 0;           // every swa_pattern-th layer is global (0: all windowed)
    float rope_freq_base_swa = 0;  // rope.freq_base_swa: windowed layers' rope base (0: rope_freq_base)
    float rope_freq_scale_swa = 1; // their linear scaling (llama.cpp: 1 unless the family says)

    float attn_softcap = 0;   // attn_logit_softcapping: scores -> c*tanh(s/c) (0: off)
    float final_softcap = 0;  // final_logit_softcapping, on the logits
    float attn_scale = 0;     // scores scale; 0 means 1/sqrt(head_dim)
    float embd_scale = 1;     // token embeddings are multiplied by this (gemma: sqrt(n_embd))

    // Mixture of experts (expert_count > 0): a token's feed-forward output is the weighted sum of
    // its top n_expert_used experts' (softmax over ffn_gate_inp's logits).
    int n_expert = 0, n_expert_used = 0;
    int n_ff_exp = 0;     // expert_feed_forward_length (n_ff when absent)
    int n_ff_shexp = 0;   // expert_shared_feed_forward_length (qwen2moe's shared expert; n_ff_exp)
    bool expert_weights_norm = false;  // the family: renormalize the top-k weights to sum to 1

    bool is_swa(int layer) const {
        return n_swa > 0 && (swa_pattern == 0 || layer % swa_pattern < swa_pattern - 1);
    }
};

// Reads and checks every key of the table for md["general.architecture"]: an unknown
// architecture is Error(unsupported) naming the ones pyllm runs; a missing required key, a
// wrong kind, an integer >= 2^31 or out of its range, a NaN/inf/denormal/non-positive float
// where a positive one is needed is Error(gguf) naming the key.
HParams read_hparams(const Metadata& md);

// Checks a struct built elsewhere (a dict from Python, calibration's one-layer copy).
void validate_hparams(const HParams& h);

// The struct's fields by name, for the binding's dict conversions (both directions).
struct HParamField {
    const char* name;
    enum Kind { i32, f32, boolean, string } kind;
    int HParams::*i = nullptr;  // the one member pointer of `kind`
    float HParams::*f = nullptr;
    bool HParams::*b = nullptr;
    std::string HParams::*s = nullptr;
};
const std::vector<HParamField>& hparam_fields();

} // namespace pyllm
