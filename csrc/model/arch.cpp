// The registry: GGUF architecture name -> family. Adding a family is a file in archs/ and a row
// here.
#include "model/arch.h"

namespace pyllm {

namespace {
struct Row {
    const char* gguf_name;
    const ArchSpec& (*spec)();
};
const Row kArchitectures[] = {
    {"llama", arch_llama},
    {"mistral", arch_llama},  // llama's tensors and graph; llama.cpp converts Mistral as llama too
    {"qwen2", arch_qwen2},
    {"qwen3", arch_qwen3},
    {"gemma2", arch_gemma2},
    {"gemma3", arch_gemma3},
    {"phi3", arch_phi3},
    {"qwen2moe", arch_qwen2moe},
    {"qwen3moe", arch_qwen3moe},
    {"olmoe", arch_olmoe},
};
} // namespace

const ArchSpec* find_arch(const std::string& name) {
    for (const Row& r : kArchitectures)
        if (name == r.gguf_name) return &r.spec();
    return nullptr;
}

std::string supported_archs() {
    std::string s;
    for (const Row& r : kArchitectures) s += (s.empty() ? "" : ", ") + std::string(r.gguf_name);
    return s;
}

} // namespace pyllm
