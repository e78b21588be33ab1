// phi3 (Phi-3, Phi-3.5 and Phi-4-mini): llama with fused weights: attn_qkv.weight holds the q, k
// and v rows, ffn_up.weight the gate rows then the up rows (2 * n_ff). NEOX rope. LongRoPE files
// carry rope_factors_long/short.weight (n_rot/2 divisors of the frequencies; the long ones when
// the context exceeds rope.scaling.original_context_length, as llama.cpp picks them) and
// rope.scaling.attn_factor (the cos/sin magnitude). Its sliding window key is ignored, as
// llama.cpp does.
#include "model/arch.h"

namespace pyllm {

const ArchSpec& arch_phi3() {
    static const ArchSpec spec = [] {
        ArchSpec a;
        a.name = "phi3";
        a.rope_neox = true;
        a.fused_qkv = true;
        a.fused_gate_up = true;
        a.derive = [](HParams& h, const Metadata&) { h.n_swa = 0; };
        return a;
    }();
    return spec;
}

} // namespace pyllm
