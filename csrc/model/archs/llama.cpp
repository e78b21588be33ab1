// llama (and mistral, which llama.cpp converts as llama): the reference layout every other
// family is described against. Pre-norm (attn_norm, ffn_norm), SwiGLU, rope on adjacent pairs,
// optional q/k/v biases, optional rope_freqs.weight (Llama 3.x's rope scaling: the rotation
// frequencies divided by per-dimension factors), linear or YaRN rope scaling from the keys. A
// llama file with expert_count is Mixtral-style mixture of experts: top-k of a softmax router,
// the k weights renormalized.
#include "model/arch.h"

namespace pyllm {

const ArchSpec& arch_llama() {
    static const ArchSpec spec = [] {
        ArchSpec a;
        a.name = "llama";
        a.moe = true;
        a.expert_weights_norm = true;
        return a;
    }();
    return spec;
}

} // namespace pyllm
