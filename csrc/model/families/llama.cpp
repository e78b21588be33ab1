// llama: Llama 1-3.x, Mistral, SmolLM and the Mixtral-style MoE (a llama file with expert_count).
// Pre-norm residual blocks, SwiGLU, adjacent-pair rope; Llama 3.1+ files add rope_freqs.weight
// (per-pair divisors of the rotation frequencies). A sliding-window key in a llama file is ignored,
// as llama.cpp does.
#include "model/arch.h"

namespace pyllm {

extern const ArchSpec kLlamaSpec = [] {
    ArchSpec s{"llama"};
    s.rope_freqs = true;
    s.qkv_bias = true;           // absent in every known file; harmless to look for
    s.moe = true;
    s.moe_norm_weights = true;   // Mixtral renormalizes its top-2 gate weights
    return s;
}();

extern const ArchSpec kMistralSpec = [] {
    ArchSpec s = kLlamaSpec;
    s.name = "mistral";
    return s;
}();

} // namespace pyllm
