// What an architecture family is, as data: which tensors a layer has, where the norms sit, the
// activation, the attention and rope options. The generic runtime (model/model.cpp) reads a spec
// and never asks which family it runs; each family is one file in model/families/ holding its
// spec (and a row in arch.cpp's list). Hyper-parameters are not here: model/hparams.h.
#pragma once
#include <string>
#include <vector>

namespace pyllm {

enum class Activation : int { swiglu, geglu_tanh };

// Which layers use the sliding window (when the file sets attention.sliding_window).
enum class SwaLayers : int {
    none,            // every layer global
    all,             // every layer slides (mistral's window)
    all_but_period,  // layer l is global iff l % swa_pattern == swa_pattern - 1 (gemma2/3)
};

struct ArchSpec {
    const char* name;
    bool rope_neox = false;         // rotate (i, i + n_rot/2) pairs, not adjacent ones
    bool qkv_bias = false;          // optional attn_{q,k,v}.bias (qwen2)
    bool qk_norm = false;           // attn_q_norm / attn_k_norm: RMSNorm over each head (qwen3, gemma3)
    bool post_norms = false;        // post_attention_norm and post_ffw_norm after the sub-blocks (gemma2/3)
    bool embed_scale = false;       // the embedding row times sqrt(n_embd) (gemma)
    bool fused_qkv = false;         // one attn_qkv matrix (phi3): q, k, v rows in that order
    bool fused_gate_up = false;     // ffn_up holds the gate rows, then the up rows (phi3)
    bool rope_freqs = false;        // an optional rope_freqs.weight of per-pair divisors (llama3)
    bool rope_long_short = false;   // rope_factors_long/short (phi3's LongRoPE)
    Activation act = Activation::swiglu;
    SwaLayers swa = SwaLayers::none;
    int swa_pattern_default = 0;    // when the file has no attention.sliding_window_pattern
    bool scale_query = false;       // scale q by 1/sqrt(head_dim) before the dot (gemma, phi3), not the scores
    bool swa_local_rope = false;    // sliding layers use rope.freq_base_swa, unscaled (gemma3)
    bool moe = false;               // ffn_gate_inp + ffn_{gate,up,down}_exps
    bool moe_shared_expert = false; // qwen2moe: *_shexp and ffn_gate_inp_shexp
    bool moe_norm_weights = false;  // renormalize the top-k gate weights to sum to 1
};

// The spec of a family name (general.architecture), or nullptr.
const ArchSpec* find_arch(const std::string& name);
// Every family pyllm runs, by name.
std::vector<std::string> arch_names();

} // namespace pyllm
