// The sampler chain, in llama.cpp's order: repetition penalties over the last n tokens, then
// greedy (temperature <= 0) or top-k -> top-p -> min-p -> temperature -> a seeded draw.
// Sized once for the vocabulary; sampling allocates nothing.
#pragma once
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace pyllm {

struct SamplerParams {
    float temperature = 0.8f;
    int top_k = 40;             // <= 0: off
    float top_p = 0.95f;        // >= 1: off
    float min_p = 0.05f;        // <= 0: off
    float repeat_penalty = 1.0f;// 1: off
    float presence_penalty = 0.0f;
    float frequency_penalty = 0.0f;
    int penalty_last_n = 64;    // window of recent tokens the penalties look at
};

class Sampler {
public:
    Sampler(int n_vocab, const SamplerParams& params, uint64_t seed);
    int n_vocab() const { return n_vocab_; }

    // Records a token (prompt or generated) in the penalty window.
    void accept(int32_t token);
    void reset();
    // Picks the next token from n_vocab logits. Throws Error(invalid_argument) if no logit is finite.
    int32_t sample(const float* logits);
    const SamplerParams& params() const { return p_; }

private:
    int n_vocab_;
    SamplerParams p_;
    std::mt19937_64 rng_;
    std::vector<std::pair<float, int32_t>> cand_;  // (logit, id), n_vocab
    std::vector<int32_t> window_;                  // ring of the last penalty_last_n tokens
    size_t window_pos_ = 0, window_fill_ = 0;
    std::vector<int32_t> counts_;                  // occurrences in the window, per id
};

} // namespace pyllm
