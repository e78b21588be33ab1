// Gemma 2 and 3: the embedding scaled by sqrt(n_embd), four RMSNorms per layer (before and after
// each sub-block), GeGLU with tanh-GELU, queries scaled before the dot, and sliding-window layers
// interleaved with global ones. Gemma 3 adds q/k RMSNorm and a local rope base of 10000 for its
// sliding layers (five of every six); Gemma 2 soft-caps attention and output logits instead and
// alternates sliding and global layers. The converter stores the norm weights with gemma's +1
// already added, so they are used as they are.
#include "model/arch.h"

namespace pyllm {

extern const ArchSpec kGemma2Spec = [] {
    ArchSpec s{"gemma2"};
    s.rope_neox = true;
    s.post_norms = true;
    s.embed_scale = true;
    s.scale_query = true;
    s.act = Activation::geglu_tanh;
    s.swa = SwaLayers::all_but_period;
    s.swa_pattern_default = 2;
    return s;
}();

extern const ArchSpec kGemma3Spec = [] {
    ArchSpec s = kGemma2Spec;
    s.name = "gemma3";
    s.qk_norm = true;
    s.swa_pattern_default = 6;
    s.swa_local_rope = true;
    return s;
}();

} // namespace pyllm
