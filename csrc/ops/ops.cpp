#include "ops/ops.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/common.h"

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

void swiglu(float* gate, const float* up, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const float g = gate[i];
        gate[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
}

// --- rope ---------------------------------------------------------------------------------------

void rope_cache(const int32_t* pos, int64_t n_tok, int n_rot, float freq_base, float freq_scale, float* cos_sin) {
    // theta_i = pos * freq_scale * base^(-2i/n_rot), built by repeated multiplication as ggml does
    // (a pow per element would round differently and drift from llama.cpp's logits).
    const float theta_scale = std::pow(freq_base, -2.0f / n_rot);
    for (int64_t t = 0; t < n_tok; ++t) {
        float theta = (float)pos[t] * freq_scale;
        float* cs = cos_sin + t * n_rot;
        for (int i = 0; i < n_rot / 2; ++i) {
            cs[2 * i] = std::cos(theta);
            cs[2 * i + 1] = std::sin(theta);
            theta *= theta_scale;
        }
    }
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
        kt.gemm[w.type](w.cols, w.data + r0 * w.row_bytes, w.row_bytes, nr, job.act, job.act_row_bytes, n_tok,
                        job.out + r0, job.out_stride);
    });
}

// --- attention ----------------------------------------------------------------------------------

namespace {

// Decode against a long context splits each KV head's positions into segments so both threads
// (and more) have work: n_kv_head tasks alone leave cores idle (SmolLM2: 3 heads on 2 threads).
// Segments are at least kMinSegment positions, so short contexts (and every prefill) keep the
// single-pass order.
constexpr int64_t kMinSegment = 256;
constexpr int kMaxSegments = 16;

// One head group's online-softmax state over positions [p0, p1): acc (n_group, head_dim) holds
// sum(exp(s - max) * v), run_max/run_sum per head. Reads each K and V row once for the group.
void attend_range(const KernelTable& kt, const float* qg, const uint16_t* k_cache, const uint16_t* v_cache,
                  int64_t kv_stride, int g, int n_group, int head_dim, float scale, int64_t p0, int64_t p1,
                  float* acc, float* run_max, float* run_sum) {
    std::fill(acc, acc + n_group * head_dim, 0.0f);
    for (int h = 0; h < n_group; ++h) { run_max[h] = -std::numeric_limits<float>::infinity(); run_sum[h] = 0.0f; }
    for (int64_t p = p0; p < p1; ++p) {
        const uint16_t* kr = k_cache + p * kv_stride + (int64_t)g * head_dim;
        const uint16_t* vr = v_cache + p * kv_stride + (int64_t)g * head_dim;
        for (int h = 0; h < n_group; ++h) {
            const float s = kt.dot_f16(head_dim, kr, qg + h * head_dim) * scale;
            float* a = acc + h * head_dim;
            if (s > run_max[h]) {
                const float r = std::exp(run_max[h] - s);  // 0 on the first position
                run_sum[h] *= r;
                for (int i = 0; i < head_dim; ++i) a[i] *= r;
                run_max[h] = s;
            }
            const float e = std::exp(s - run_max[h]);
            run_sum[h] += e;
            kt.axpy_f16(head_dim, e, vr, a);
        }
    }
}

int decode_segments(int64_t n_tok, int64_t n_pos, int n_kv_head, int n_threads) {
    if (n_tok != 1 || n_threads < 2) return 1;
    const int64_t want = ceil_div(2 * (int64_t)n_threads, n_kv_head);  // ~2 tasks per thread
    return (int)std::max<int64_t>(1, std::min<int64_t>({want, n_pos / kMinSegment, kMaxSegments}));
}

} // namespace

size_t attention_scratch_floats(int n_threads, int n_head, int n_kv_head, int head_dim) {
    const int n_group = n_head / n_kv_head;
    const size_t state = (size_t)(n_group * head_dim + 2 * n_group);
    // per thread: one state (+ padding); for split decode: one state per (head group, segment)
    return (size_t)n_threads * (state + 16) + (size_t)n_kv_head * kMaxSegments * state;
}

void attention(ThreadPool& pool, const KernelTable& kt, const float* q, int64_t q_stride,
               const uint16_t* k_cache, const uint16_t* v_cache, int64_t kv_stride,
               float* out, int64_t out_stride, int64_t n_tok, int64_t pos0,
               int n_head, int n_kv_head, int head_dim, float scale, float* scratch) {
    const int n_group = n_head / n_kv_head;
    const size_t state = (size_t)(n_group * head_dim + 2 * n_group);
    const int n_seg = decode_segments(n_tok, pos0 + n_tok, n_kv_head, pool.size());
    if (n_seg > 1) {
        // Split decode (flash-decoding): each task runs one segment of one head group into its own
        // state; the merge rescales the segments to the global max and sums them.
        const int64_t n_pos = pos0 + 1;
        float* states = scratch + (size_t)pool.size() * (state + 16);
        pool.parallel_for((int64_t)n_kv_head * n_seg, [&](int64_t task, int) {
            const int g = (int)(task / n_seg), seg = (int)(task % n_seg);
            const int64_t p0 = n_pos * seg / n_seg, p1 = n_pos * (seg + 1) / n_seg;
            float* st = states + (size_t)task * state;
            attend_range(kt, q + (int64_t)g * n_group * head_dim, k_cache, v_cache, kv_stride, g, n_group, head_dim,
                         scale, p0, p1, st, st + n_group * head_dim, st + n_group * head_dim + n_group);
        });
        for (int g = 0; g < n_kv_head; ++g) {
            float* o = out + (int64_t)g * n_group * head_dim;
            for (int h = 0; h < n_group; ++h) {
                float m = -std::numeric_limits<float>::infinity();
                for (int seg = 0; seg < n_seg; ++seg) {
                    const float* st = states + (size_t)(g * n_seg + seg) * state;
                    m = std::max(m, st[n_group * head_dim + h]);
                }
                float sum = 0.0f;
                float* oh = o + h * head_dim;
                std::fill(oh, oh + head_dim, 0.0f);
                for (int seg = 0; seg < n_seg; ++seg) {
                    const float* st = states + (size_t)(g * n_seg + seg) * state;
                    const float r = std::exp(st[n_group * head_dim + h] - m);  // each segment is non-empty
                    sum += st[n_group * head_dim + n_group + h] * r;
                    const float* a = st + h * head_dim;
                    for (int i = 0; i < head_dim; ++i) oh[i] += a[i] * r;
                }
                const float inv = 1.0f / sum;
                for (int i = 0; i < head_dim; ++i) oh[i] *= inv;
            }
        }
        return;
    }
    // One task = one token x one KV head: the group's query heads walk the cache together, so
    // each K and V row is read once for all of them. Online softmax: a running max and sum per
    // head, rescaling the accumulator when the max grows (no score buffer of context length).
    pool.parallel_for(n_tok * n_kv_head, [&](int64_t task, int thread) {
        const int64_t t = task / n_kv_head;
        const int g = (int)(task % n_kv_head);
        float* acc = scratch + (size_t)thread * (state + 16);  // (n_group, head_dim), then max, sum
        float* run_max = acc + n_group * head_dim;
        float* run_sum = run_max + n_group;
        attend_range(kt, q + t * q_stride + (int64_t)g * n_group * head_dim, k_cache, v_cache, kv_stride, g, n_group,
                     head_dim, scale, 0, pos0 + t + 1, acc, run_max, run_sum);
        float* o = out + t * out_stride + (int64_t)g * n_group * head_dim;
        for (int h = 0; h < n_group; ++h) {
            const float inv = 1.0f / run_sum[h];
            for (int i = 0; i < head_dim; ++i) o[h * head_dim + i] = acc[h * head_dim + i] * inv;
        }
    });
}

} // namespace pyllm
