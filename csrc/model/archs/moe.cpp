// The mixture-of-experts families besides Mixtral (a llama file with experts: archs/llama.cpp).
// qwen2moe: qwen2's attention; every layer's experts plus one shared expert whose output is
// scaled by sigmoid(ffn_gate_inp_shexp . x); the top-k router weights are not renormalized.
// qwen3moe: qwen3's attention (per-head q/k norm), renormalized top-k weights.
// olmoe: q/k RMSNorm over the whole q and k rows (not per head), neox rope, weights as they come.
#include "model/arch.h"

namespace pyllm {

const ArchSpec& arch_qwen2moe() {
    static const ArchSpec spec = [] {
        ArchSpec a = arch_qwen2();
        a.name = "qwen2moe";
        a.moe = true;
        a.shared_expert = true;
        return a;
    }();
    return spec;
}

const ArchSpec& arch_qwen3moe() {
    static const ArchSpec spec = [] {
        ArchSpec a = arch_qwen3();
        a.name = "qwen3moe";
        a.moe = true;
        a.expert_weights_norm = true;
        return a;
    }();
    return spec;
}

const ArchSpec& arch_olmoe() {
    static const ArchSpec spec = [] {
        ArchSpec a;
        a.name = "olmoe";
        a.rope_neox = true;
        a.qk_norm_full = true;
        a.moe = true;
        return a;
    }();
    return spec;
}

} // namespace pyllm
