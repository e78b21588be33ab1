// Architecture families: what each one changes in the shared transformer (model.cpp). A family
// is a file in model/archs/ that fills an ArchSpec, plus a row in the registry (arch.cpp).
// Hyper-parameters come from the key table (hparams.h); a family only sets defaults the file may
// omit and values derived from others.
#pragma once
#include <string>

#include "model/hparams.h"

namespace pyllm {

// The feed-forward block's gate activation: silu(gate) * up (SwiGLU) or gelu_tanh(gate) * up (GeGLU).
enum class Activation { silu, gelu_tanh };

struct ArchSpec {
    const char* name = nullptr;
    bool rope_neox = false;         // rotate (i, i + n_rot/2) pairs (ggml's NEOX mode)
    Activation ffn_act = Activation::silu;
    bool fused_qkv = false;         // blk.N.attn_qkv.weight holds q, k, v rows in that order (phi3)
    bool fused_gate_up = false;     // blk.N.ffn_up.weight holds gate rows, then up rows (phi3)
    bool qk_norm = false;           // attn_q_norm / attn_k_norm: RMSNorm of each head before rope
    bool post_norms = false;        // post_attention_norm and post_ffw_norm on each block's output
    bool qkv_bias = true;           // optional attn_q/k/v.bias tensors are read
    bool qk_norm_full = false;      // attn_q_norm / attn_k_norm over the whole q and k rows (olmoe)
    // Mixture of experts, when the file has expert_count > 0: ffn_gate_inp (the router) and
    // ffn_{gate,up,down}_exps (3-D: one matrix per expert) instead of the dense FFN.
    bool moe = false;
    bool expert_weights_norm = false;  // renormalize the top-k gate weights (Mixtral, qwen3moe)
    bool shared_expert = false;        // *_shexp and its sigmoid gate ffn_gate_inp_shexp (qwen2moe)
    // Before the key table is read: defaults for keys the file may omit.
    void (*defaults)(HParams&) = nullptr;
    // After: values the family derives from the others (scales, window layout).
    void (*derive)(HParams&, const Metadata&) = nullptr;
};

// The family of a GGUF general.architecture name, or nullptr.
const ArchSpec* find_arch(const std::string& name);
// "llama, mistral, qwen2, ...": for error messages and Python.
std::string supported_archs();

// The families (model/archs/*.cpp).
const ArchSpec& arch_llama();
const ArchSpec& arch_qwen2();
const ArchSpec& arch_qwen3();
const ArchSpec& arch_gemma2();
const ArchSpec& arch_gemma3();
const ArchSpec& arch_phi3();
const ArchSpec& arch_qwen2moe();
const ArchSpec& arch_qwen3moe();
const ArchSpec& arch_olmoe();

} // namespace pyllm
