// The sampler chain, in llama.cpp's order: an optional allowed-token bitmask (constrained
// decoding: one bit per token id, 32 per uint32 word, as llguidance produces), repetition
// penalties over the last n tokens, then greedy (temperature <= 0) or top-k -> top-p -> min-p ->
// temperature -> a seeded draw.
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

    // Records a token (prompt or generated) in the penalty window.
    void accept(int32_t token);
    void reset();
    // Picks the next token from n_vocab logits. `allowed` (nullable): (n_vocab + 31) / 32 words,
    // bit (id & 31) of word (id >> 5) set for each id that may be chosen. Throws
    // Error(invalid_argument) if no allowed logit is finite.
    int32_t sample(const float* logits, const uint32_t* allowed = nullptr);
    // The distribution sample() draws from: writes the surviving ids and their probabilities
    // (summing to 1; one id with probability 1 when greedy) and returns how many. ids and probs
    // hold n_vocab entries. Speculative sampling's acceptance rule needs it.
    int distribution(const float* logits, const uint32_t* allowed, int32_t* ids, float* probs);
    const SamplerParams& params() const { return p_; }
    int n_vocab() const { return n_vocab_; }

private:
    // Fills cand_ with the masked, penalized logits and applies greedy / top-k / top-p / min-p;
    // returns how many candidates survive (cand_[0] is the best).
    int candidates(const float* logits, const uint32_t* allowed);

    int n_vocab_;
    SamplerParams p_;
    std::mt19937_64 rng_;
    std::vector<std::pair<float, int32_t>> cand_;  // (logit, id), n_vocab
    std::vector<int32_t> window_;                  // ring of the last penalty_last_n tokens
    size_t window_pos_ = 0, window_fill_ = 0;
    std::vector<int32_t> counts_;                  // occurrences in the window, per id
};

} // namespace pyllm
