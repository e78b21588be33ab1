#include "model/arch.h"

namespace pyllm {

// The families, one file each in model/families/.
extern const ArchSpec kLlamaSpec, kMistralSpec, kQwen2Spec, kQwen3Spec, kQwen2MoeSpec, kQwen3MoeSpec, kGemma2Spec,
    kGemma3Spec, kPhi3Spec;

namespace {
const ArchSpec* const kFamilies[] = {&kLlamaSpec, &kMistralSpec, &kQwen2Spec, &kQwen3Spec, &kQwen2MoeSpec,
                                     &kQwen3MoeSpec, &kGemma2Spec, &kGemma3Spec, &kPhi3Spec};
}

const ArchSpec* find_arch(const std::string& name) {
    for (const ArchSpec* s : kFamilies)
        if (name == s->name) return s;
    return nullptr;
}

std::vector<std::string> arch_names() {
    std::vector<std::string> names;
    for (const ArchSpec* s : kFamilies) names.push_back(s->name);
    return names;
}

} // namespace pyllm
