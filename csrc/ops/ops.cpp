#include "ops/ops.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/common.h"
#include "core/fp16.h"

namespace pyllm {

// --- norms and elementwise ----------------------------------------------------------------------

void rmsnorm(const float* x, const float* w, float* y, int64_t n_tok, int64_t n, float eps) {
    for (int64_t t = 0; t < n_tok; ++t) {
        const float* xr = x + t * n;
        float* yr = y + t * n;
        // Sum in double, then mean and scale in float: ggml's order, so norms round alike.
        double sum = 0.0;
        for (int64_t i = 0; i < n; ++i) sum += (double)xr[i] * xr[i];
        const float mean = (float)(sum / n);
        const float scale = 1.0f / std::sqrt(mean + eps);
        for (int64_t i = 0; i < n; ++i) yr[i] = (xr[i] * scale) * w[i];
    }
}

// --- rope ---------------------------------------------------------------------------------------

// YaRN's ramp between the correction dims: 1 below `low` (extrapolate), 0 above `high` (interpolate).
static float rope_yarn_ramp(float low, float high, int i0) {
    const float y = (i0 / 2 - low) / std::max(0.001f, high - low);
    return 1 - std::min(1.0f, std::max(0.0f, y));
}

// The dimension whose rotation completes n_rot turns over n_ctx_orig positions (ggml_rope_yarn_corr_dim).
static float rope_yarn_corr_dim(int n_dims, int n_ctx_orig, float n_rot, float base) {
    constexpr float kPi = 3.14159265358979323846f;
    return n_dims * std::log(n_ctx_orig / (n_rot * 2 * kPi)) / (2 * std::log(base));
}

void rope_cache(const int32_t* pos, int64_t n_tok, const RopeParams& p, float* cos_sin) {
    // theta built by repeated multiplication as ggml does (a pow per element would round
    // differently and drift from llama.cpp's logits).
    const int n_rot = p.n_rot;
    const float theta_scale = std::pow(p.freq_base, -2.0f / n_rot);
    float corr[2] = {0, 0};
    if (p.ext_factor != 0) {
        corr[0] = std::max(0.0f, std::floor(rope_yarn_corr_dim(n_rot, p.n_ctx_orig, p.beta_fast, p.freq_base)));
        corr[1] = std::min((float)(n_rot - 1), std::ceil(rope_yarn_corr_dim(n_rot, p.n_ctx_orig, p.beta_slow, p.freq_base)));
    }
    float mscale = p.attn_factor;
    if (p.ext_factor != 0) mscale *= 1.0f + 0.1f * std::log(1.0f / p.freq_scale);
    for (int64_t t = 0; t < n_tok; ++t) {
        float theta_base = (float)pos[t];
        float* cs = cos_sin + t * n_rot;
        for (int i = 0; i < n_rot / 2; ++i) {
            const float theta_extrap = p.freq_factors ? theta_base / p.freq_factors[i] : theta_base;
            float theta = p.freq_scale * theta_extrap;
            if (p.ext_factor != 0) {
                const float mix = rope_yarn_ramp(corr[0], corr[1], 2 * i) * p.ext_factor;
                theta = theta * (1 - mix) + theta_extrap * mix;
            }
            cs[2 * i] = std::cos(theta) * mscale;
            cs[2 * i + 1] = std::sin(theta) * mscale;
            theta_base *= theta_scale;
        }
    }
}

void rope_cache(const int32_t* pos, int64_t n_tok, int n_rot, float freq_base, float freq_scale, float* cos_sin) {
    RopeParams p;
    p.n_rot = n_rot;
    p.freq_base = freq_base;
    p.freq_scale = freq_scale;
    rope_cache(pos, n_tok, p, cos_sin);
}

// --- activations --------------------------------------------------------------------------------

float gelu_tanh(float x) {
    constexpr float kA = 0.044715f, kSqrt2OverPi = 0.79788456080286535587989211986876f;
    return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * x * (1.0f + kA * x * x)));
}

void geglu_tanh(float* gate, const float* up, int64_t n) {
    // ggml_table_gelu_f16: gelu of every f16 value, stored as f16. Built once (thread-safe static).
    static const std::vector<uint16_t> table = [] {
        std::vector<uint16_t> t(1 << 16);
        for (uint32_t i = 0; i < t.size(); ++i) t[i] = f32_to_fp16(gelu_tanh(fp16_to_f32((uint16_t)i)));
        return t;
    }();
    for (int64_t i = 0; i < n; ++i) {
        const float x = gate[i];
        float g;
        if (x <= -10.0f) g = 0.0f;
        else if (x >= 10.0f) g = x;
        else g = fp16_to_f32(table[f32_to_fp16(x)]);
        gate[i] = g * up[i];
    }
}

void softcap(float* x, int64_t n, float cap) {
    const float inv = 1.0f / cap;
    for (int64_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] * inv);
}

void rope(float* x, int64_t n_tok, int64_t stride, int n_heads, int head_dim, int n_rot, bool neox,
          const float* cos_sin) {
    for (int64_t t = 0; t < n_tok; ++t) {
        const float* cs = cos_sin + t * n_rot;
        for (int h = 0; h < n_heads; ++h) {
            float* v = x + t * stride + (int64_t)h * head_dim;
            for (int i = 0; i < n_rot / 2; ++i) {
                const float c = cs[2 * i], s = cs[2 * i + 1];
                const int a = neox ? i : 2 * i;
                const int b = neox ? i + n_rot / 2 : 2 * i + 1;
                const float x0 = v[a], x1 = v[b];
                v[a] = x0 * c - x1 * s;
                v[b] = x0 * s + x1 * c;
            }
        }
    }
}

// --- matmul -------------------------------------------------------------------------------------

void quantize_rows(ThreadPool& pool, const KernelTable& kt, Type act_type, const float* x, int64_t n_tok,
                   int64_t k, uint8_t* out) {
    const size_t rs = row_size(act_type, k);
    from_float_fn q = kt.quantize_act[act_type];
    assert(q);
    if (n_tok < 8) {
        for (int64_t t = 0; t < n_tok; ++t) q(x + t * k, out + t * rs, k);
        return;
    }
    pool.parallel_for(n_tok, [&](int64_t t, int) { q(x + t * k, out + t * rs, k); });
}

void matmul(ThreadPool& pool, const KernelTable& kt, const MatmulJob* jobs, int n_jobs, int64_t n_tok) {
    assert(n_jobs >= 1 && n_jobs <= 4);
    // Chunks of rows small enough to balance threads that run at different speeds (a shared
    // host), large enough that each task amortizes its activation reads.
    const int n_threads = pool.size();
    int64_t total_rows = 0;
    for (int j = 0; j < n_jobs; ++j) total_rows += jobs[j].w->rows;
    int64_t chunk = total_rows / (n_threads * 8);
    chunk = std::max<int64_t>(16, (chunk + 15) / 16 * 16);
    if (n_threads == 1) chunk = total_rows;

    int64_t first_task[5] = {0};
    for (int j = 0; j < n_jobs; ++j) first_task[j + 1] = first_task[j] + ceil_div(jobs[j].w->rows, chunk);
    const int64_t n_tasks = first_task[n_jobs];

    pool.parallel_for(n_tasks, [&](int64_t task, int) {
        int j = 0;
        while (task >= first_task[j + 1]) ++j;
        const MatmulJob& job = jobs[j];
        const Matrix& w = *job.w;
        const int64_t r0 = (task - first_task[j]) * chunk;
        const int64_t nr = std::min(chunk, w.rows - r0);
        // An x8 matrix: chunks are multiples of 16 rows, so only the last can end in plain tail rows.
        const int64_t grouped = w.x8 ? nr / kX8Rows * kX8Rows : 0;
        assert(!w.x8 || r0 % kX8Rows == 0);
        if (grouped)
            kt.gemm_x8[w.type](w.cols, w.data + r0 * w.row_bytes, w.row_bytes, grouped, job.act, job.act_row_bytes, n_tok,
                               job.out + r0, job.out_stride);
        if (nr > grouped)
            kt.gemm[w.type](w.cols, w.data + (r0 + grouped) * w.row_bytes, w.row_bytes, nr - grouped, job.act,
                            job.act_row_bytes, n_tok, job.out + r0 + grouped, job.out_stride);
    });
}

// --- attention ----------------------------------------------------------------------------------

// Decode (one token) splits each KV head's positions into up to kMaxSplit ranges, so that 2
// threads are not left with 3 long tasks (SmolLM2 has 3 KV heads); each range leaves a partial
// softmax (max, sum, unnormalized output) that the caller merges.
constexpr int kMaxSplit = 8;
constexpr int64_t kMinSplitPositions = 64;

// Positions per step of the online softmax: their scores are computed, then one max, one
// rescale of the accumulator and a loop of exps (no branch per position).
constexpr int kScoreBlock = 32;

// Decode, per thread: the (n_group, kScoreBlock) scores (the accumulators are the partials); 16
// floats of slack keep threads' regions on separate cache lines.
static size_t attention_thread_floats(int n_group) {
    return (size_t)n_group * kScoreBlock + 16;
}

// Prefill: a task is one KV head and a block of query tokens, whose n_group heads each make one
// row of the block's query matrix (about kPrefillRows rows), against the cache in blocks of
// kScoreBlock positions: scores = K_block . Q^T by the F16 GEMM kernel and P . V_block by pv_f16,
// instead of a dot and an axpy call per position and head.
constexpr int kPrefillRows = 48;

static int prefill_tokens_per_task(int n_group) { return std::max(1, kPrefillRows / n_group); }

// Per thread: the Q rows, their accumulators and scores, running max and sum.
static size_t prefill_thread_floats(int n_group, int head_dim) {
    const size_t rows = (size_t)prefill_tokens_per_task(n_group) * n_group;
    return rows * (2 * head_dim + kScoreBlock + 2) + 16;
}

// A quantized cache's work space, after either of those: the query rows in K's vec_dot_type (a
// float per element bounds any of them) and a block of V rows dequantized.
static size_t base_thread_floats(int n_group, int head_dim) {
    return std::max(attention_thread_floats(n_group), prefill_thread_floats(n_group, head_dim));
}
static size_t kv_thread_floats(int n_group, int head_dim) {
    const size_t rows = (size_t)prefill_tokens_per_task(n_group) * n_group;
    return (rows + kScoreBlock) * head_dim + 16;
}
static size_t per_thread_floats(int n_group, int head_dim) {
    return base_thread_floats(n_group, head_dim) + kv_thread_floats(n_group, head_dim);
}

size_t attention_scratch_floats(int n_threads, int n_head, int n_kv_head, int head_dim) {
    const int n_group = n_head / n_kv_head;
    const size_t per_thread = per_thread_floats(n_group, head_dim);
    const size_t partials = (size_t)kMaxSplit * n_kv_head * n_group * (head_dim + 2);
    return (size_t)n_threads * per_thread + partials;
}

namespace {

// One KV head's slice of a layer of the cache, and the work space a non-f16 type needs.
struct HeadCache {
    const KernelTable& kt;
    const KvLayerView& kv;
    int head_dim;
    size_t k_off, v_off;  // bytes from a row's start to head g's elements
    uint8_t* q_buf;       // the query rows in K's vec_dot_type
    float* v_buf;         // (kScoreBlock, head_dim) dequantized V rows
    const uint8_t* qa = nullptr;
    size_t qa_stride = 0;

    HeadCache(const KernelTable& kt_, const KvLayerView& kv_, int g, int head_dim_, float* scratch)
        : kt(kt_), kv(kv_), head_dim(head_dim_), k_off(row_size(kv_.type_k, (int64_t)g * head_dim_)),
          v_off(row_size(kv_.type_v, (int64_t)g * head_dim_)),
          q_buf(reinterpret_cast<uint8_t*>(scratch + (size_t)kScoreBlock * head_dim_)), v_buf(scratch) {}

    // The n_rows query rows (head_dim floats each, contiguous) as K's GEMM kernel takes them: the
    // floats themselves for a float K, else quantized (Q8_0 for q8_0/q4_0/q5_0, Q8_1 for q4_1/q5_1).
    void set_query(const float* q, int n_rows) {
        const Type at = type_traits(kv.type_k).vec_dot_type;
        if (at == TYPE_F32) {
            qa = reinterpret_cast<const uint8_t*>(q);
            qa_stride = head_dim * sizeof(float);
            return;
        }
        qa_stride = row_size(at, head_dim);
        for (int r = 0; r < n_rows; ++r) kt.quantize_act[at](q + (size_t)r * head_dim, q_buf + r * qa_stride, head_dim);
        qa = q_buf;
    }
    // scores[r*kScoreBlock + j] = K row (b0 + j) . query row r, for j < nb, r < n_rows.
    void scores(int64_t b0, int nb, int n_rows, float* out) const {
        kt.gemm[kv.type_k](head_dim, kv.k + b0 * kv.k_row_bytes + k_off, kv.k_row_bytes, nb, qa, qa_stride, n_rows, out,
                           kScoreBlock);
    }
    // acc (n_rows, head_dim) += p (n_rows, kScoreBlock apart) . V rows [b0, b0 + nb).
    void pv(int64_t b0, int nb, int n_rows, const float* p, float* acc) const {
        const uint8_t* v = kv.v + b0 * kv.v_row_bytes + v_off;
        if (kv.type_v == TYPE_F16) {
            kt.pv_f16(n_rows, nb, head_dim, p, kScoreBlock, reinterpret_cast<const uint16_t*>(v),
                      (int64_t)(kv.v_row_bytes / sizeof(uint16_t)), acc);
        } else if (kv.type_v == TYPE_F32) {
            kt.pv_f32(n_rows, nb, head_dim, p, kScoreBlock, reinterpret_cast<const float*>(v),
                      (int64_t)(kv.v_row_bytes / sizeof(float)), acc);
        } else {
            for (int j = 0; j < nb; ++j) kt.to_float[kv.type_v](v + j * kv.v_row_bytes, v_buf + (size_t)j * head_dim, head_dim);
            kt.pv_f32(n_rows, nb, head_dim, p, kScoreBlock, v_buf, head_dim, acc);
        }
    }
};

// One block of the online softmax for one query row: the scaled scores s[0..n) become exp(s - m)
// for the new running max m; the running sum and the row's accumulator, kept relative to the old
// max, are rescaled to m.
void softmax_block(const KernelTable& kt, float* s, int n, float& run_max, float& run_sum, float* acc, int head_dim) {
    float m = run_max;
    for (int j = 0; j < n; ++j) m = std::max(m, s[j]);
    if (m > run_max) {
        const float r = std::exp(run_max - m);  // 0 on the first block
        run_sum *= r;
        for (int i = 0; i < head_dim; ++i) acc[i] *= r;
        run_max = m;
    }
    // The exps are most of a long-context decode step's arithmetic (n_head of them per position).
    run_sum += kt.exp_sum(s, n, m);
}

// Online softmax of the group's query heads over cache positions [p0, p1): a running max and sum
// per head, the accumulator rescaled once per block of kScoreBlock positions when the max grows
// (no score buffer of context length). acc: (n_group, head_dim) unnormalized output; run_max,
// run_sum: (n_group); scores: (n_group, kScoreBlock) scratch.
void attend_range(const KernelTable& kt, const float* qg, const KvLayerView& kv, int g, int n_group, int head_dim,
                  float scale, float cap, int64_t p0, int64_t p1, float* acc, float* run_max, float* run_sum, float* scores,
                  float* kv_scratch) {
    std::fill(acc, acc + n_group * head_dim, 0.0f);
    for (int h = 0; h < n_group; ++h) { run_max[h] = -std::numeric_limits<float>::infinity(); run_sum[h] = 0.0f; }
    HeadCache hc(kt, kv, g, head_dim, kv_scratch);
    hc.set_query(qg, n_group);
    for (int64_t b0 = p0; b0 < p1; b0 += kScoreBlock) {
        const int nb = (int)std::min<int64_t>(kScoreBlock, p1 - b0);
        // Scores of the block (K rows . the group's query rows), one GEMM call.
        hc.scores(b0, nb, n_group, scores);
        for (int h = 0; h < n_group; ++h) {
            float* sh = scores + h * kScoreBlock;
            for (int j = 0; j < nb; ++j) sh[j] *= scale;
            if (cap > 0) softcap(sh, nb, cap);
            softmax_block(kt, sh, nb, run_max[h], run_sum[h], acc + h * head_dim, head_dim);
        }
        hc.pv(b0, nb, n_group, scores, acc);
    }
}

// Causal attention of query tokens [t0, t1) (at positions pos0 + t) and the n_group heads of KV
// head g: rows r = (t - t0) * n_group + h. Online softmax per row, a block of positions at a time.
void attend_prefill(const KernelTable& kt, const float* q, int64_t q_stride, const KvLayerView& kv, float* out,
                    int64_t out_stride, int64_t pos0, int64_t t0, int64_t t1, int g, int n_group, int head_dim,
                    float scale, float cap, int64_t window, float* scratch, float* kv_scratch) {
    const int n_rows = (int)(t1 - t0) * n_group;
    float* qs = scratch;                                 // (n_rows, head_dim)
    float* acc = qs + (size_t)n_rows * head_dim;         // (n_rows, head_dim)
    float* sc = acc + (size_t)n_rows * head_dim;         // (n_rows, kScoreBlock)
    float* run_max = sc + (size_t)n_rows * kScoreBlock;  // (n_rows)
    float* run_sum = run_max + n_rows;                   // (n_rows)
    for (int64_t t = t0; t < t1; ++t)
        for (int h = 0; h < n_group; ++h) {
            const float* src = q + t * q_stride + (int64_t)(g * n_group + h) * head_dim;
            float* dst = qs + ((t - t0) * n_group + h) * head_dim;
            std::memcpy(dst, src, head_dim * sizeof(float));
        }
    HeadCache hc(kt, kv, g, head_dim, kv_scratch);
    hc.set_query(qs, n_rows);
    std::fill(acc, acc + (size_t)n_rows * head_dim, 0.0f);
    std::fill(run_max, run_max + n_rows, -std::numeric_limits<float>::infinity());
    std::fill(run_sum, run_sum + n_rows, 0.0f);
    const int64_t n_pos = pos0 + t1;  // the last token sees positions [0, n_pos)
    // With a window, the first token sees nothing before pos0 + t0 - window + 1.
    const int64_t first_pos = window > 0 ? std::max<int64_t>(0, pos0 + t0 - window + 1) : 0;
    for (int64_t b0 = first_pos; b0 < n_pos; b0 += kScoreBlock) {
        const int nb = (int)std::min<int64_t>(kScoreBlock, n_pos - b0);
        // scores[r][j] = K row (b0 + j) . q row r
        hc.scores(b0, nb, n_rows, sc);
        for (int r = 0; r < n_rows; ++r) {
            float* sr = sc + (size_t)r * kScoreBlock;
            const int64_t last = pos0 + t0 + r / n_group;  // this row's token sees positions <= last
            const int visible = (int)std::max<int64_t>(0, std::min<int64_t>(nb, last - b0 + 1));
            // and, in a window, none before last - window + 1
            const int lo = window > 0 ? (int)std::min<int64_t>(visible, std::max<int64_t>(0, last - window + 1 - b0)) : 0;
            for (int j = lo; j < visible; ++j) sr[j] *= scale;  // after the dot, in llama.cpp's order
            if (cap > 0) softcap(sr + lo, visible - lo, cap);
            // Masked positions get probability 0 (P.V reads the row's first nb entries).
            if (visible > lo) softmax_block(kt, sr + lo, visible - lo, run_max[r], run_sum[r], acc + (size_t)r * head_dim, head_dim);
            for (int j = 0; j < lo; ++j) sr[j] = 0.0f;
            for (int j = visible; j < nb; ++j) sr[j] = 0.0f;
        }
        hc.pv(b0, nb, n_rows, sc, acc);
    }
    for (int r = 0; r < n_rows; ++r) {
        const int64_t t = t0 + r / n_group;
        const int h = r % n_group;
        float* o = out + t * out_stride + (int64_t)(g * n_group + h) * head_dim;
        const float inv = 1.0f / run_sum[r];
        for (int i = 0; i < head_dim; ++i) o[i] = acc[(size_t)r * head_dim + i] * inv;
    }
}

// How a decode step's positions split across threads: the token at pos0 sees [first, pos0] (all
// of the cache, or its window), in n_split ranges (one when the context is short or there is
// one thread).
struct DecodeSplit {
    int64_t first, n_pos;
    int n_split;
    DecodeSplit(const ThreadPool& pool, int64_t pos0, int64_t window)
        : first(window > 0 ? std::max<int64_t>(0, pos0 - window + 1) : 0), n_pos(pos0 + 1 - first),
          n_split(pool.size() > 1 ? (int)std::min<int64_t>(kMaxSplit, std::max<int64_t>(1, n_pos / kMinSplitPositions)) : 1) {}
};

// Range j of KV head g's group for the query row q (n_head*head_dim floats): its partial
// (n_group*head_dim acc, n_group max, n_group sum) into acc.
void decode_range(const KernelTable& kt, const float* q, const KvLayerView& kv, int g, int j, const DecodeSplit& sp,
                  int n_group, int head_dim, float scale, float cap, float* acc, float* ts, float* kv_scratch) {
    attend_range(kt, q + (int64_t)g * n_group * head_dim, kv, g, n_group, head_dim, scale, cap,
                 sp.first + sp.n_pos * j / sp.n_split, sp.first + sp.n_pos * (j + 1) / sp.n_split, acc,
                 acc + n_group * head_dim, acc + n_group * head_dim + n_group, ts, kv_scratch);
}

// The (n_kv_head, n_split) partials of one token merged into its output row.
void merge_decode_partials(const float* partials, int n_split, int n_kv_head, int n_group, int head_dim, float* out) {
    const size_t part = (size_t)n_group * (head_dim + 2);
    for (int g = 0; g < n_kv_head; ++g)
        for (int h = 0; h < n_group; ++h) {
            float m = -std::numeric_limits<float>::infinity();
            for (int j = 0; j < n_split; ++j) m = std::max(m, partials[(g * n_split + j) * part + n_group * head_dim + h]);
            float* o = out + (int64_t)(g * n_group + h) * head_dim;
            std::fill(o, o + head_dim, 0.0f);
            float sum = 0.0f;
            for (int j = 0; j < n_split; ++j) {
                const float* pj = partials + (g * n_split + j) * part;
                const float w = std::exp(pj[n_group * head_dim + h] - m);  // every range is non-empty
                sum += pj[n_group * head_dim + n_group + h] * w;
                for (int i = 0; i < head_dim; ++i) o[i] += pj[h * head_dim + i] * w;
            }
            const float inv = 1.0f / sum;
            for (int i = 0; i < head_dim; ++i) o[i] *= inv;
        }
}

} // namespace

void attention(ThreadPool& pool, const KernelTable& kt, const float* q, int64_t q_stride, const KvLayerView& kv,
               float* out, int64_t out_stride, int64_t n_tok, int64_t pos0,
               int n_head, int n_kv_head, int head_dim, float scale, float* scratch, int64_t window, float cap) {
    const int n_group = n_head / n_kv_head;
    const size_t per_thread = per_thread_floats(n_group, head_dim);
    const size_t kv_at = base_thread_floats(n_group, head_dim);  // a thread's quantized-cache space
    if (n_tok > 1) {
        const int64_t per_task = prefill_tokens_per_task(n_group);
        const int64_t n_blocks = (n_tok + per_task - 1) / per_task;
        // Later token blocks see more positions: hand them out first.
        pool.parallel_for(n_blocks * n_kv_head, [&](int64_t task, int thread) {
            const int64_t b = n_blocks - 1 - task / n_kv_head;
            const int g = (int)(task % n_kv_head);
            const int64_t t0 = b * per_task, t1 = std::min(n_tok, t0 + per_task);
            float* ts = scratch + thread * per_thread;
            attend_prefill(kt, q, q_stride, kv, out, out_stride, pos0, t0, t1, g, n_group, head_dim, scale, cap, window, ts,
                           ts + kv_at);
        });
        return;
    }
    // Decode: each KV head's group of query heads walks its positions together (each K and V row
    // read once for all of them), in n_split ranges (one when the context is short or there is one
    // thread) whose partial softmaxes are merged below.
    const DecodeSplit sp(pool, pos0, window);
    // (n_kv_head, n_split) partials of (n_group*head_dim acc, n_group max, n_group sum).
    const size_t part = (size_t)n_group * (head_dim + 2);
    float* partials = scratch + (size_t)pool.size() * per_thread;
    pool.parallel_for((int64_t)n_kv_head * sp.n_split, [&](int64_t task, int thread) {
        const int g = (int)(task / sp.n_split), j = (int)(task % sp.n_split);
        float* ts = scratch + thread * per_thread;
        decode_range(kt, q, kv, g, j, sp, n_group, head_dim, scale, cap, partials + task * part, ts, ts + kv_at);
    });
    merge_decode_partials(partials, sp.n_split, n_kv_head, n_group, head_dim, out);
}

void attention_decode_batch(ThreadPool& pool, const KernelTable& kt, const float* q, int64_t q_stride,
                            const KvLayerView* kvs, const int32_t* pos, int64_t n_seq, float* out, int64_t out_stride,
                            int n_head, int n_kv_head, int head_dim, float scale, float* scratch, int64_t window, float cap) {
    const int n_group = n_head / n_kv_head;
    const size_t per_thread = per_thread_floats(n_group, head_dim);
    const size_t kv_at = base_thread_floats(n_group, head_dim);
    const size_t part = (size_t)n_group * (head_dim + 2);
    // Every sequence owns kMaxSplit ranges per KV head in the task space (and the partials); the
    // ranges past its own n_split are empty tasks, cheaper than a per-sequence offset table.
    const int64_t per_seq = (int64_t)n_kv_head * kMaxSplit;
    float* partials = scratch + (size_t)pool.size() * per_thread;
    pool.parallel_for(n_seq * per_seq, [&](int64_t task, int thread) {
        const int64_t s = task / per_seq;
        const int g = (int)(task % per_seq / kMaxSplit), j = (int)(task % kMaxSplit);
        const DecodeSplit sp(pool, pos[s], window);
        if (j >= sp.n_split) return;
        float* ts = scratch + thread * per_thread;
        // The partial at the index attention() uses, within this sequence's region.
        float* acc = partials + (s * per_seq + (int64_t)g * sp.n_split + j) * part;
        decode_range(kt, q + s * q_stride, kvs[s], g, j, sp, n_group, head_dim, scale, cap, acc, ts, ts + kv_at);
    });
    for (int64_t s = 0; s < n_seq; ++s) {
        const DecodeSplit sp(pool, pos[s], window);
        merge_decode_partials(partials + s * per_seq * part, sp.n_split, n_kv_head, n_group, head_dim, out + s * out_stride);
    }
}

size_t attention_batch_scratch_floats(int n_threads, int n_head, int n_kv_head, int head_dim, int64_t n_seq) {
    const int n_group = n_head / n_kv_head;
    const size_t partials = (size_t)n_seq * kMaxSplit * n_kv_head * n_group * (head_dim + 2);
    return (size_t)n_threads * per_thread_floats(n_group, head_dim) + partials;
}

} // namespace pyllm
