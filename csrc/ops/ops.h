// Model-level operations on float rows: norms, rope, activation functions, quantized matmul and
// attention. Each op takes the thread pool and splits its own work; none allocates.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/threadpool.h"
#include "kernels/kernels.h"
#include "ops/kv_cache.h"
#include "quant/types.h"

namespace pyllm {

// A weight matrix view: `rows` rows of `cols` elements of `type`, row r at data + r*row_bytes.
// Shape in ggml order: ne[0] = cols (the contiguous input dimension), ne[1] = rows (outputs).
// x8: the rows are in the row-interleaved layout (kernels.h), multiplied by the table's gemm_x8
// (whole groups) and gemm (the plain tail rows).
struct Matrix {
    Type type = TYPE_F32;
    int64_t rows = 0, cols = 0;
    size_t row_bytes = 0;
    const uint8_t* data = nullptr;
    bool x8 = false;
    explicit operator bool() const { return data != nullptr; }
};

// y = x / sqrt(mean(x^2) + eps) * w, for n_tok rows of n floats (y may alias x).
void rmsnorm(const float* x, const float* w, float* y, int64_t n_tok, int64_t n, float eps);

// Quantizes n_tok rows of k floats (row stride k) to `act_type` rows of row_size(act_type, k) bytes.
void quantize_rows(ThreadPool& pool, const KernelTable& kt, Type act_type, const float* x, int64_t n_tok,
                   int64_t k, uint8_t* out);

// Up to four matmuls over the same n_tok tokens: out_i (n_tok, W_i.rows) = A_i . W_i^T, run as
// one parallel job over all their rows so one barrier serves all of them (q/k/v, gate/up).
// A_i holds the n_tok rows quantized to W_i's vec_dot_type.
struct MatmulJob {
    const Matrix* w;
    const uint8_t* act;  // row t at act + t*act_row_bytes
    size_t act_row_bytes;
    float* out;          // row t at out + t*out_stride
    int64_t out_stride;
};
void matmul(ThreadPool& pool, const KernelTable& kt, const MatmulJob* jobs, int n_jobs, int64_t n_tok);

// Rotary embedding in place on n_tok rows, each n_heads heads of head_dim floats (row stride
// `stride` floats). Only the first n_rot dims of each head rotate. `neox` pairs (i, i+n_rot/2)
// instead of (2i, 2i+1). cos_sin holds, per token, n_rot/2 (cos, sin) pairs.
void rope(float* x, int64_t n_tok, int64_t stride, int n_heads, int head_dim, int n_rot, bool neox,
          const float* cos_sin);
// How rope turns a position into angles: ggml_rope_ext's parameters. theta_i = pos *
// freq_base^(-2i/n_rot) / freq_factors[i], times freq_scale (linear scaling); YaRN
// (ext_factor != 0) mixes the scaled and unscaled angle per dimension with a ramp between the
// correction dims that beta_fast/beta_slow and n_ctx_orig give, and scales cos/sin by
// attn_factor * (1 + 0.1 ln(1/freq_scale)); without YaRN, by attn_factor.
struct RopeParams {
    int n_rot = 0;
    float freq_base = 10000.0f, freq_scale = 1.0f;
    const float* freq_factors = nullptr;  // (n_rot/2) divisors of the frequencies, or nullptr
    float ext_factor = 0.0f, attn_factor = 1.0f, beta_fast = 32.0f, beta_slow = 1.0f;
    int n_ctx_orig = 0;
};
// Fills cos_sin (n_tok, n_rot/2, 2) for positions pos[0..n_tok), as ggml computes them.
void rope_cache(const int32_t* pos, int64_t n_tok, const RopeParams& p, float* cos_sin);
// Plain or linearly scaled rope (no factors, no YaRN).
void rope_cache(const int32_t* pos, int64_t n_tok, int n_rot, float freq_base, float freq_scale, float* cos_sin);

// gate[i] = gelu_tanh(gate[i]) * up[i] (GeGLU), in place, as ggml's CPU backend computes it:
// gate rounded to f16 and looked up in a 64K-entry table of f16 GELU values for |x| < 10,
// (x <= -10: 0; x >= 10: x). Matching that rounding keeps gemma's logits at llama.cpp's.
void geglu_tanh(float* gate, const float* up, int64_t n);
// The tanh-approximation GELU of one float, unrounded (the reference for the table).
float gelu_tanh(float x);

// x[i] = cap * tanh(x[i] / cap) (gemma2's logit soft-capping), in place.
void softcap(float* x, int64_t n, float cap);

// Causal attention for n_tok new tokens at positions pos0..pos0+n_tok-1 against one layer of the
// cache holding positions [0, pos0+n_tok).  q: (n_tok, n_head*head_dim) f32 row stride q_stride;
// kv: the layer's K and V rows (any KvCache type: scores by the K type's GEMM kernel against the
// query rows converted to its vec_dot_type, Q8_0 for a quantized K as llama.cpp does; a quantized
// V is dequantized a block of rows at a time for pv_f32);
// out: (n_tok, n_head*head_dim) f32; scratch: attention_scratch_floats(...) floats (per-thread
// accumulators, and the partial softmaxes of a decode step whose positions are split across threads).
void attention(ThreadPool& pool, const KernelTable& kt, const float* q, int64_t q_stride, const KvLayerView& kv,
               float* out, int64_t out_stride, int64_t n_tok, int64_t pos0,
               int n_head, int n_kv_head, int head_dim, float scale, float* scratch,
               int64_t window = 0, float softcap = 0.0f);
// window > 0: a token at position p sees only positions (p - window, p] (sliding-window layers;
// llama.cpp masks p - j >= window). softcap > 0: each scaled score s becomes softcap *
// tanh(s / softcap) before the softmax (gemma2).
size_t attention_scratch_floats(int n_threads, int n_head, int n_kv_head, int head_dim);

// Decode attention of n_seq sequences, one new token each (continuous batching): sequence s's
// query row q + s*q_stride, at position pos[s], attends over its own cache kvs[s] (holding
// positions [0, pos[s]]) into out + s*out_stride. One parallel job over every (sequence, KV head,
// range) task instead of one small job per sequence: the threads stay balanced (SmolLM2's 3 KV
// heads are 3 tasks for 2 threads) and a layer pays one barrier, not n_seq. Each sequence's
// output is bitwise what attention() gives it alone on this pool: the same ranges, kernels and
// merge. scratch: attention_batch_scratch_floats(...) floats.
void attention_decode_batch(ThreadPool& pool, const KernelTable& kt, const float* q, int64_t q_stride,
                            const KvLayerView* kvs, const int32_t* pos, int64_t n_seq, float* out, int64_t out_stride,
                            int n_head, int n_kv_head, int head_dim, float scale, float* scratch,
                            int64_t window = 0, float softcap = 0.0f);
size_t attention_batch_scratch_floats(int n_threads, int n_head, int n_kv_head, int head_dim, int64_t n_seq);

} // namespace pyllm
