// Phi-3 / Phi-4-mini: llama's block with fused matrices — attn_qkv holds the q, k and v rows,
// ffn_up the gate rows then the up rows — neox rope, and LongRoPE's per-pair factors
// (rope_factors_long past the original context, rope_factors_short within it). The file's
// sliding window is ignored, as llama.cpp does.
#include "model/arch.h"

namespace pyllm {

extern const ArchSpec kPhi3Spec = [] {
    ArchSpec s{"phi3"};
    s.rope_neox = true;
    s.fused_qkv = true;
    s.fused_gate_up = true;
    s.rope_long_short = true;
    s.scale_query = true;
    return s;
}();

} // namespace pyllm
