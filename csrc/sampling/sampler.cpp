#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/common.h"

namespace pyllm {

Sampler::Sampler(int n_vocab, const SamplerParams& params, uint64_t seed)
    : n_vocab_(n_vocab), p_(params), rng_(seed), cand_(n_vocab), counts_(n_vocab, 0) {
    if (n_vocab <= 0) fail(ErrorKind::invalid_argument, "sampler: n_vocab must be positive");
    if (!(p_.temperature >= 0) || !std::isfinite(p_.temperature)) fail(ErrorKind::invalid_argument, "temperature must be a finite number >= 0");
    if (!(p_.top_p >= 0 && p_.top_p <= 1)) fail(ErrorKind::invalid_argument, "top_p must be in [0, 1]");
    if (!(p_.min_p >= 0 && p_.min_p <= 1)) fail(ErrorKind::invalid_argument, "min_p must be in [0, 1]");
    if (!(p_.repeat_penalty > 0) || !std::isfinite(p_.repeat_penalty)) fail(ErrorKind::invalid_argument, "repeat_penalty must be a finite number > 0");
    if (!std::isfinite(p_.presence_penalty) || !std::isfinite(p_.frequency_penalty)) fail(ErrorKind::invalid_argument, "penalties must be finite");
    if (p_.penalty_last_n < 0) p_.penalty_last_n = 0;
    window_.assign(p_.penalty_last_n, -1);
}

void Sampler::reset() {
    std::fill(window_.begin(), window_.end(), -1);
    std::fill(counts_.begin(), counts_.end(), 0);
    window_pos_ = window_fill_ = 0;
}

void Sampler::accept(int32_t token) {
    if (window_.empty() || token < 0 || token >= n_vocab_) return;
    int32_t& slot = window_[window_pos_];
    if (slot >= 0) --counts_[slot];
    slot = token;
    ++counts_[token];
    window_pos_ = (window_pos_ + 1) % window_.size();
    window_fill_ = std::min(window_fill_ + 1, window_.size());
}

int Sampler::candidates(const float* logits, const uint32_t* allowed) {
    const float neg_inf = -std::numeric_limits<float>::infinity();
    int n = n_vocab_;
    bool any_finite = false;
    const bool penalize = p_.repeat_penalty != 1.0f || p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f;
    if (p_.temperature <= 0.0f && !penalize) {
        // Greedy without penalties: one pass for the first maximum (the general path below gives
        // the same id), without filling the n_vocab candidates. This runs once per sequence per
        // batched decode step, on the step's critical path.
        int best = 0;
        float best_v = neg_inf;
        for (int i = 0; i < n; ++i) {
            float v = logits[i];
            if (std::isnan(v) || (allowed && !((allowed[i >> 5] >> (i & 31)) & 1u))) v = neg_inf;
            any_finite |= std::isfinite(v);
            if (i == 0 || v > best_v) { best = i; best_v = v; }
        }
        if (!any_finite) {
            if (allowed) fail(ErrorKind::invalid_argument, "no allowed token has a finite logit: the constraint admits nothing the model can produce");
            fail(ErrorKind::numeric, "all logits are NaN or infinite: the model produced no usable distribution (NaN/Inf weights, or an overflow in the forward pass)");
        }
        cand_[0] = {best_v, best};
        return 1;
    }
    for (int i = 0; i < n; ++i) {
        float v = logits[i];
        if (std::isnan(v) || (allowed && !((allowed[i >> 5] >> (i & 31)) & 1u))) v = neg_inf;  // never chosen
        cand_[i] = {v, i};
        any_finite |= std::isfinite(v);
    }
    if (!any_finite) {
        if (allowed) fail(ErrorKind::invalid_argument, "no allowed token has a finite logit: the constraint admits nothing the model can produce");
        fail(ErrorKind::numeric, "all logits are NaN or infinite: the model produced no usable distribution (NaN/Inf weights, or an overflow in the forward pass)");
    }

    // Penalties, once per distinct recent token: a visited id's count is negated as a marker,
    // then restored, so repeats in the window are skipped without any extra storage.
    if (penalize) {
        for (size_t k = 0; k < window_fill_; ++k) {
            const int32_t id = window_[k];
            const int c = counts_[id];
            if (c <= 0) continue;
            counts_[id] = -c;
            float& v = cand_[id].first;
            if (v == neg_inf) continue;
            v = v <= 0 ? v * p_.repeat_penalty : v / p_.repeat_penalty;
            v -= c * p_.frequency_penalty + p_.presence_penalty;
        }
        for (size_t k = 0; k < window_fill_; ++k) counts_[window_[k]] = std::abs(counts_[window_[k]]);
    }

    if (p_.temperature <= 0.0f) {  // greedy: the first maximum, as llama.cpp
        int best = 0;
        for (int i = 1; i < n; ++i)
            if (cand_[i].first > cand_[best].first) best = i;
        std::swap(cand_[0], cand_[best]);
        return 1;
    }

    auto by_logit = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    // top-k: move the k best to the front (sorted), drop the rest.
    if (p_.top_k > 0 && p_.top_k < n) {
        std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.begin() + n, by_logit);
        n = p_.top_k;
    } else {
        std::sort(cand_.begin(), cand_.begin() + n, by_logit);
    }
    while (n > 1 && cand_[n - 1].first == neg_inf) --n;  // masked-out ids never survive
    // Softmax over the survivors (at temperature 1, as llama.cpp's top-p/min-p see them).
    const float max_logit = cand_[0].first;
    // top-p: the smallest prefix whose probability reaches p (at least one token).
    if (p_.top_p < 1.0f) {
        double total = 0.0;
        for (int i = 0; i < n; ++i) total += std::exp((double)cand_[i].first - max_logit);
        double cum = 0.0;
        int keep = n;
        for (int i = 0; i < n; ++i) {
            cum += std::exp((double)cand_[i].first - max_logit) / total;
            if (cum >= p_.top_p) { keep = i + 1; break; }
        }
        n = keep;
    }
    // min-p: drop tokens less likely than min_p times the most likely one.
    if (p_.min_p > 0.0f) {
        const float floor = max_logit + std::log(p_.min_p);
        int keep = 1;
        while (keep < n && cand_[keep].first >= floor) ++keep;
        n = keep;
    }
    return n;
}

int32_t Sampler::sample(const float* logits, const uint32_t* allowed) {
    const int n = candidates(logits, allowed);
    if (p_.temperature <= 0.0f) return cand_[0].second;
    // Temperature, then draw.
    const float max_logit = cand_[0].first;
    double total = 0.0;
    for (int i = 0; i < n; ++i) total += std::exp((double)(cand_[i].first - max_logit) / p_.temperature);
    std::uniform_real_distribution<double> uni(0.0, total);
    const double r = uni(rng_);
    double cum = 0.0;
    for (int i = 0; i < n; ++i) {
        cum += std::exp((double)(cand_[i].first - max_logit) / p_.temperature);
        if (r < cum) return cand_[i].second;
    }
    return cand_[n - 1].second;
}

int Sampler::distribution(const float* logits, const uint32_t* allowed, int32_t* ids, float* probs) {
    const int n = candidates(logits, allowed);
    if (p_.temperature <= 0.0f) {
        ids[0] = cand_[0].second;
        probs[0] = 1.0f;
        return 1;
    }
    const float max_logit = cand_[0].first;
    double total = 0.0;
    for (int i = 0; i < n; ++i) total += std::exp((double)(cand_[i].first - max_logit) / p_.temperature);
    for (int i = 0; i < n; ++i) {
        ids[i] = cand_[i].second;
        probs[i] = (float)(std::exp((double)(cand_[i].first - max_logit) / p_.temperature) / total);
    }
    return n;
}

} // namespace pyllm
