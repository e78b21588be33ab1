// gemma3 (Gemma 3 text models). Against llama:
// - token embeddings scaled by sqrt(n_embd);
// - four norms per layer: attn_norm before attention, post_attention_norm on its output before
//   the residual add, ffn_norm before the feed-forward, post_ffw_norm on its output (the GGUF
//   converter already adds Gemma's +1 to every norm weight, so they are used as stored);
// - q/k RMSNorm per head; GeGLU with tanh-GELU; NEOX rope;
// - sliding-window attention (attention.sliding_window) on every layer but each 6th
//   (llama.cpp's set_swa_pattern(6): layer l is windowed when l % 6 < 5; the file may say
//   otherwise with attention.sliding_window_pattern), whose rope uses base rope.freq_base_swa
//   (10000) and no scaling, while the global layers use rope.freq_base (1e6) and the scaling;
// - attention scale 1/sqrt(attention.key_length), but 1/sqrt(n_embd / n_head) for the 27B
//   (query_pre_attn_scalar, as llama.cpp picks it by its 62 layers);
// - final_logit_softcapping if the file has it.
#include <cmath>

#include "model/arch.h"

namespace pyllm {

const ArchSpec& arch_gemma3() {
    static const ArchSpec spec = [] {
        ArchSpec a;
        a.name = "gemma3";
        a.rope_neox = true;
        a.ffn_act = Activation::gelu_tanh;
        a.qk_norm = true;
        a.post_norms = true;
        a.qkv_bias = false;
        a.defaults = [](HParams& h) {
            h.swa_pattern = 6;
            h.rope_freq_base_swa = 10000.0f;
        };
        a.derive = [](HParams& h, const Metadata&) {
            h.embd_scale = std::sqrt((float)h.n_embd);
            h.attn_scale = h.n_layer == 62 ? 1.0f / std::sqrt((float)(h.n_embd / h.n_head)) : 1.0f / std::sqrt((float)h.head_dim);
        };
        return a;
    }();
    return spec;
}

} // namespace pyllm
