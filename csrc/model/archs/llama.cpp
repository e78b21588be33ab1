// llama (and mistral, which llama.cpp converts as llama): the reference layout every other
// family is described against. Pre-norm (attn_norm, ffn_norm), SwiGLU, rope on adjacent pairs,
// optional q/k/v biases, optional rope_freqs.weight (Llama 3.x's rope scaling: the rotation
// frequencies divided by per-dimension factors), linear or YaRN rope scaling from the keys.
#include "model/arch.h"

namespace pyllm {

const ArchSpec& arch_llama() {
    static const ArchSpec spec = [] {
        ArchSpec a;
        a.name = "llama";
        return a;
    }();
    return spec;
}

} // namespace pyllm
