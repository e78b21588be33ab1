// gemma2 (Gemma 2): gemma3 without q/k norms, with soft-capping: attention scores become
// c * tanh(s / c) (attn_logit_softcapping, 50) and so do the logits (final_logit_softcapping,
// 30). Sliding window of 4096 on every other layer (llama.cpp's set_swa_pattern(2): even layers
// windowed), one rope base for all layers. Scale and norms as gemma3.
#include <cmath>

#include "model/arch.h"

namespace pyllm {

const ArchSpec& arch_gemma2() {
    static const ArchSpec spec = [] {
        ArchSpec a;
        a.name = "gemma2";
        a.rope_neox = true;
        a.ffn_act = Activation::gelu_tanh;
        a.post_norms = true;
        a.qkv_bias = false;
        a.defaults = [](HParams& h) {
            h.n_swa = 4096;
            h.swa_pattern = 2;
            h.rope_freq_base_swa = 0;  // the global base (the key table fills it in)
        };
        a.derive = [](HParams& h, const Metadata&) {
            h.rope_freq_scale_swa = h.rope_freq_scale;
            h.embd_scale = std::sqrt((float)h.n_embd);
            h.attn_scale = h.n_layer == 46 ? 1.0f / std::sqrt((float)(h.n_embd / h.n_head)) : 1.0f / std::sqrt((float)h.head_dim);
        };
        return a;
    }();
    return spec;
}

} // namespace pyllm
