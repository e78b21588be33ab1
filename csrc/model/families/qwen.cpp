// Qwen: qwen2 (q/k/v biases), qwen3 (q/k RMSNorm per head, no biases) and their MoE siblings
// qwen2moe (a shared expert behind a sigmoid gate, top-k weights not renormalized) and qwen3moe.
// All rotate neox pairs; Qwen2.5's long-context files use YaRN (rope.scaling.type = yarn).
#include "model/arch.h"

namespace pyllm {

extern const ArchSpec kQwen2Spec = [] {
    ArchSpec s{"qwen2"};
    s.rope_neox = true;
    s.qkv_bias = true;
    return s;
}();

extern const ArchSpec kQwen3Spec = [] {
    ArchSpec s{"qwen3"};
    s.rope_neox = true;
    s.qk_norm = true;
    return s;
}();

extern const ArchSpec kQwen2MoeSpec = [] {
    ArchSpec s = kQwen2Spec;
    s.name = "qwen2moe";
    s.moe = true;
    s.moe_shared_expert = true;
    return s;
}();

extern const ArchSpec kQwen3MoeSpec = [] {
    ArchSpec s = kQwen3Spec;
    s.name = "qwen3moe";
    s.moe = true;
    s.moe_norm_weights = true;
    return s;
}();

} // namespace pyllm
