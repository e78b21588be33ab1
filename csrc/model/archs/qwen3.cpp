// qwen3 (Qwen3 dense): qwen2 without biases, with an RMSNorm of each query and key head
// (attn_q_norm, attn_k_norm: head_dim weights) before rope. Its head size comes from
// attention.key_length (128 with n_embd / n_head often 64 or 80).
#include "model/arch.h"

namespace pyllm {

const ArchSpec& arch_qwen3() {
    static const ArchSpec spec = [] {
        ArchSpec a;
        a.name = "qwen3";
        a.rope_neox = true;
        a.qk_norm = true;
        return a;
    }();
    return spec;
}

} // namespace pyllm
