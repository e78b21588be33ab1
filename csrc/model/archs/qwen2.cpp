// qwen2 (Qwen2, Qwen2.5): llama with q/k/v biases and NEOX rope (pairs i, i + n_rot/2).
// Qwen2.5's long-context files set rope.scaling.type = yarn (the key table reads it).
#include "model/arch.h"

namespace pyllm {

const ArchSpec& arch_qwen2() {
    static const ArchSpec spec = [] {
        ArchSpec a;
        a.name = "qwen2";
        a.rope_neox = true;
        return a;
    }();
    return spec;
}

} // namespace pyllm
