#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#if !defined(MADV_COLLAPSE)
#define MADV_COLLAPSE 25  // Linux 6.1 (asm-generic value, as on x86-64 and arm64); older kernels reject it
#endif
#include <unistd.h>
#endif

#include "core/common.h"
#include "core/threadpool.h"

namespace pyllm {

// --- weights ------------------------------------------------------------------------------------

namespace {

std::string shape_str(const TensorView& t) {
    std::string s = "[";
    for (int i = 0; i < t.n_dims; ++i) s += (i ? ", " : "") + std::to_string(t.ne[i]);
    return s + "]";
}

struct TensorFinder {
    const std::unordered_map<std::string, TensorView>& tensors;
    uint64_t* bytes;

    const TensorView* find(const std::string& name) const {
        auto it = tensors.find(name);
        return it == tensors.end() ? nullptr : &it->second;
    }
    const TensorView& need(const std::string& name) const {
        const TensorView* t = find(name);
        if (!t) fail(ErrorKind::gguf, "tensor '" + name + "' is missing: the model's architecture needs it");
        return *t;
    }
    // A 1-D F32 vector of n elements (norm weights, biases).
    const float* vector(const std::string& name, int64_t n, bool required = true) const {
        const TensorView* t = required ? &need(name) : find(name);
        if (!t) return nullptr;
        if (t->type != TYPE_F32)
            fail(ErrorKind::unsupported, "tensor '" + name + "' has type " + type_traits(t->type).name + "; pyllm expects F32 for 1-D weights");
        if (t->n_elements() != n)
            fail(ErrorKind::gguf, "tensor '" + name + "' has shape " + shape_str(*t) + " but the hyper-parameters say [" + std::to_string(n) + "]");
        *bytes += t->nbytes;
        return reinterpret_cast<const float*>(t->data);
    }
    // n matrices of `rows` x `cols` stacked in one 3-D tensor (ggml shape [cols, rows, n]), as
    // one matrix of n * rows rows (experts are split from it by row ranges).
    Matrix stacked(const std::string& name, int64_t n, int64_t rows, int64_t cols) const {
        const TensorView* t = &need(name);
        if (t->n_dims != 3 || t->ne[0] != cols || t->ne[1] != rows || t->ne[2] != n)
            fail(ErrorKind::gguf, "tensor '" + name + "' has shape " + shape_str(*t) + " but the hyper-parameters say [" +
                 std::to_string(cols) + ", " + std::to_string(rows) + ", " + std::to_string(n) + "]");
        TensorView flat = *t;
        flat.n_dims = 2;
        flat.ne[1] = rows * n;
        flat.ne[2] = 1;
        return matrix_of(name, flat, rows * n, cols);
    }
    // A matrix of `rows` outputs by `cols` inputs (ggml shape [cols, rows]).
    Matrix matrix(const std::string& name, int64_t rows, int64_t cols, bool required = true) const {
        const TensorView* t = required ? &need(name) : find(name);
        if (!t) return Matrix{};
        return matrix_of(name, *t, rows, cols);
    }
    Matrix matrix_of(const std::string& name, const TensorView& tv, int64_t rows, int64_t cols) const {
        const TensorView* t = &tv;
        const bool one_row = rows == 1 && t->n_dims == 1;  // a 1-D tensor read as one row (a gate vector)
        if ((t->n_dims != 2 && !one_row) || t->ne[0] != cols || t->ne[1] != rows)
            fail(ErrorKind::gguf, "tensor '" + name + "' has shape " + shape_str(*t) + " but the hyper-parameters say [" +
                 std::to_string(cols) + ", " + std::to_string(rows) + "]");
        if (!kernels().gemm[t->type] || !type_traits(t->type).to_float)
            fail(ErrorKind::unsupported, "tensor '" + name + "' has type " + type_traits(t->type).name + ", which pyllm cannot multiply");
        Matrix m;
        m.type = t->type;
        m.rows = rows;
        m.cols = cols;
        m.row_bytes = row_size(t->type, cols);
        m.data = t->data;
        *bytes += t->nbytes;
        return m;
    }
};

// Rows [r0, r0 + n) of m: one part of a fused tensor (phi3's attn_qkv, ffn_up), or one expert of
// a 3-D *_exps tensor.
Matrix rows_of(const Matrix& m, int64_t r0, int64_t n) {
    Matrix v = m;
    v.rows = n;
    v.data = m.data + r0 * m.row_bytes;
    return v;
}

// The read-only, file-backed mappings of this process (/proc/self/maps: perms "r-..", inode != 0),
// read once per model load. Only their pages may be dropped: they come back from the file
// unchanged. Anonymous memory (numpy arrays, quantized layers in calibration) would come back as zeros.
struct FileMappings {
    std::vector<std::pair<uintptr_t, uintptr_t>> read_only;  // [start, end)

    FileMappings() {
#if defined(__linux__)
        FILE* f = std::fopen("/proc/self/maps", "r");
        if (!f) return;
        char line[512];
        while (std::fgets(line, sizeof(line), f)) {
            unsigned long start, end, offset, inode;
            char perms[8];
            unsigned dev_major, dev_minor;
            if (std::sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &start, &end, perms, &offset, &dev_major, &dev_minor, &inode) == 7 &&
                perms[0] == 'r' && perms[1] == '-' && inode != 0)
                read_only.emplace_back(start, end);
        }
        std::fclose(f);
#endif
    }
    // Whether [p, p+n) lies inside one of them.
    bool contain(const void* p, size_t n) const {
        const uintptr_t lo = (uintptr_t)p, hi = lo + n;
        for (const auto& [start, end] : read_only)
            if (lo >= start && hi <= end) return true;
        return false;
    }
};

// Drops this process's pages wholly inside [begin, end) (the partial pages at either end may
// hold a neighbouring tensor). Returns where the dropped range ends (or begin): the next call
// can start there.
const uint8_t* release_pages(const uint8_t* begin, const uint8_t* end) {
#if defined(__linux__)
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t a = ((uintptr_t)begin + page - 1) / page * page, b = (uintptr_t)end / page * page;
    if (b <= a) return begin;
    madvise((void*)a, b - a, MADV_DONTNEED);  // advice: a failure only costs memory
    return (const uint8_t*)b;
#else
    (void)end;
    return begin;
#endif
}

} // namespace

bool Model::repackable(const Matrix& m) {
    const KernelTable& kt = kernels();
    if (m && !m.x8 && is_float_matrix(m)) return true;  // copied as it is (below)
    return m && !m.x8 && kt.repack_x8[m.type] && kt.gemm_x8[m.type] && m.rows >= kX8Rows;
}

// F32, F16 and BF16 matrices have no x8 layout, but are copied into the arena all the same: read
// straight from the mapped file (4 KiB page-cache pages, shared with every other reader of the
// file), their decode ran at 30-50% of the read bandwidth and swung by +-20% from run to run with
// the page cache's state; from the arena (owned, collapsed to 2 MiB pages) they stream like the
// repacked types. The file's pages are dropped as they are copied, so memory is not doubled.
bool Model::is_float_matrix(const Matrix& m) {
    return m.type == TYPE_F32 || m.type == TYPE_F16 || m.type == TYPE_BF16;
}

// Into `dst` (64-byte aligned, in the model's arena); `release`: the source is in a read-only
// file mapping, whose pages are dropped once copied. The copy is made in slices of whole groups
// (~1 MiB), each slice's source pages released as soon as it is copied, so the resident peak
// holds one slice twice, not the whole tensor.
void Model::repack(Matrix& m, uint8_t* dst, bool release) {
    const KernelTable& kt = kernels();
    const int64_t slice = std::max<int64_t>(kX8Rows, (int64_t)((1u << 20) / (m.row_bytes * kX8Rows)) * kX8Rows);
    const uint8_t* released = m.data;  // pages before this are dropped
    for (int64_t r0 = 0; r0 < m.rows; r0 += slice) {
        const int64_t nr = std::min(slice, m.rows - r0);
        if (is_float_matrix(m))
            std::memcpy(dst + r0 * m.row_bytes, m.data + r0 * m.row_bytes, nr * m.row_bytes);
        else
            kt.repack_x8[m.type](m.data + r0 * m.row_bytes, m.row_bytes, nr, m.cols, dst + r0 * m.row_bytes);
        if (release) released = release_pages(released, m.data + (r0 + nr) * m.row_bytes);
    }
    m.data = dst;
    m.x8 = !is_float_matrix(m);
}

Model::Model(const HParams& cfg, const std::unordered_map<std::string, TensorView>& tensors, const ModelOptions& options)
    : cfg_(cfg), arch_(nullptr) {
    validate_hparams(cfg);
    arch_ = find_arch(cfg.arch);
    const ArchSpec& A = *arch_;
    if (cfg.rope_neox != A.rope_neox)
        fail(ErrorKind::invalid_argument, "rope_neox disagrees with the " + cfg.arch + " family");

    const TensorFinder f{tensors, &weight_bytes_};
    const int64_t d = cfg.n_embd, hd = cfg.head_dim, ff = cfg.n_ff;
    const int64_t nq = (int64_t)cfg.n_head * hd, nkv = (int64_t)cfg.n_head_kv * hd;
    tok_embd = f.matrix("token_embd.weight", cfg.n_vocab, d);
    output_norm = f.vector("output_norm.weight", d);
    output = f.matrix("output.weight", cfg.n_vocab, d, /*required=*/false);
    if (!output) output = tok_embd;  // tied embeddings
    // Rope frequency divisors: llama3's one vector, or phi3's LongRoPE pair.
    rope_freqs = f.vector("rope_freqs.weight", cfg.n_rot / 2, false);
    rope_factors_long = f.vector("rope_factors_long.weight", cfg.n_rot / 2, false);
    rope_factors_short = f.vector("rope_factors_short.weight", cfg.n_rot / 2, false);
    layers.resize(cfg.n_layer);
    for (int l = 0; l < cfg.n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        LayerWeights& L = layers[l];
        L.attn_norm = f.vector(p + "attn_norm.weight", d);
        // q, k and v: three tensors, or (phi3) one of nq + 2 nkv rows split into views.
        if (A.fused_qkv && (f.find(p + "attn_qkv.weight") || !f.find(p + "attn_q.weight"))) {
            const Matrix qkv = f.matrix(p + "attn_qkv.weight", nq + 2 * nkv, d);
            L.wq = rows_of(qkv, 0, nq);
            L.wk = rows_of(qkv, nq, nkv);
            L.wv = rows_of(qkv, nq + nkv, nkv);
        } else {
            L.wq = f.matrix(p + "attn_q.weight", nq, d);
            L.wk = f.matrix(p + "attn_k.weight", nkv, d);
            L.wv = f.matrix(p + "attn_v.weight", nkv, d);
        }
        if (A.qkv_bias) {
            L.bq = f.vector(p + "attn_q.bias", nq, false);
            L.bk = f.vector(p + "attn_k.bias", nkv, false);
            L.bv = f.vector(p + "attn_v.bias", nkv, false);
        }
        if (A.qk_norm) {
            L.q_norm = f.vector(p + "attn_q_norm.weight", hd);
            L.k_norm = f.vector(p + "attn_k_norm.weight", hd);
        }
        if (A.qk_norm_full) {
            L.q_norm = f.vector(p + "attn_q_norm.weight", nq);
            L.k_norm = f.vector(p + "attn_k_norm.weight", nkv);
        }
        L.wo = f.matrix(p + "attn_output.weight", d, nq);
        if (A.post_norms) L.attn_post_norm = f.vector(p + "post_attention_norm.weight", d);
        L.ffn_norm = f.vector(p + "ffn_norm.weight", d);
        if (cfg.n_expert > 0) {
            const int64_t ne = cfg.n_expert, fe = cfg.n_ff_exp;
            L.router = f.matrix(p + "ffn_gate_inp.weight", ne, d);
            const Matrix g = f.stacked(p + "ffn_gate_exps.weight", ne, fe, d);
            const Matrix u = f.stacked(p + "ffn_up_exps.weight", ne, fe, d);
            const Matrix dn = f.stacked(p + "ffn_down_exps.weight", ne, d, fe);
            for (int64_t e = 0; e < ne; ++e) {
                L.exp_gate.push_back(rows_of(g, e * fe, fe));
                L.exp_up.push_back(rows_of(u, e * fe, fe));
                L.exp_down.push_back(rows_of(dn, e * d, d));
            }
            if (A.shared_expert) {
                const int64_t fs = cfg.n_ff_shexp;
                L.shexp_router = f.matrix(p + "ffn_gate_inp_shexp.weight", 1, d);
                L.shexp_gate = f.matrix(p + "ffn_gate_shexp.weight", fs, d);
                L.shexp_up = f.matrix(p + "ffn_up_shexp.weight", fs, d);
                L.shexp_down = f.matrix(p + "ffn_down_shexp.weight", d, fs);
            }
        } else if (A.fused_gate_up && !f.find(p + "ffn_gate.weight")) {
        // gate and up: two tensors, or (phi3) ffn_up of 2 n_ff rows, the gate's first.
            const Matrix gate_up = f.matrix(p + "ffn_up.weight", 2 * ff, d);
            L.w_gate = rows_of(gate_up, 0, ff);
            L.w_up = rows_of(gate_up, ff, ff);
        } else {
            L.w_gate = f.matrix(p + "ffn_gate.weight", ff, d);
            L.w_up = f.matrix(p + "ffn_up.weight", ff, d);
        }
        if (cfg.n_expert == 0) L.w_down = f.matrix(p + "ffn_down.weight", d, ff);
        if (A.post_norms) L.ffn_post_norm = f.vector(p + "post_ffw_norm.weight", d);
    }
    if (options.repack) {
        // A separate token_embd is only looked up, a row per token: it stays as it is. Tied, it
        // is the output matrix (a third of the bytes a SmolLM2 decode step reads) and the lookup
        // reads the x8 layout (x8_row_to_float).
        const bool tied = output.data == tok_embd.data;
        std::vector<Matrix*> todo;
        if (repackable(output)) todo.push_back(&output);
        for (LayerWeights& L : layers) {
            for (Matrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down, &L.router, &L.shexp_gate,
                              &L.shexp_up, &L.shexp_down})
                if (repackable(*w)) todo.push_back(w);
            for (auto* experts : {&L.exp_gate, &L.exp_up, &L.exp_down})
                for (Matrix& w : *experts)
                    if (repackable(w)) todo.push_back(&w);
        }
        // One arena for all copies, 2 MiB aligned so that it can later be backed by transparent
        // huge pages (below).
        constexpr size_t kHuge = 2u << 20;
        size_t total = 0;
        for (const Matrix* w : todo) total += ((size_t)w->rows * w->row_bytes + 63) / 64 * 64;
        if (total) {
            const size_t arena_bytes = (total + kHuge - 1) / kHuge * kHuge;
            uint8_t* arena = static_cast<uint8_t*>(aligned_malloc(kHuge, arena_bytes));
            if (!arena) fail(ErrorKind::invalid_argument, "cannot allocate " + std::to_string(arena_bytes >> 20) + " MiB for the repacked weights");
            x8_arena_.reset(arena);
            const FileMappings mapped;
            std::vector<uint8_t*> dst(todo.size());
            for (size_t i = 0; i < todo.size(); ++i) {
                const size_t bytes = (size_t)todo[i]->rows * todo[i]->row_bytes;
                dst[i] = arena;
                arena += (bytes + 63) / 64 * 64;
                repacked_bytes_ += bytes;
            }
            // Matrices on every core: copying and the first touch of the arena's fresh pages
            // (which the kernel zeroes) are most of a load's time, and both scale with threads.
            ThreadPool pool(ThreadPool::default_threads());
            pool.parallel_for((int64_t)todo.size(), [&](int64_t i, int) {
                Matrix& w = *todo[i];
                repack(w, dst[i], mapped.contain(w.data, (size_t)w.rows * w.row_bytes));
            });
            huge_bytes_ = arena_bytes;
        }
        if (tied) tok_embd = output;
    }
}

// 2 MiB pages make decode 15-25% faster (fewer TLB misses as it streams the weights). Asked for
// at allocation (MADV_HUGEPAGE), they let the kernel compact memory inside the load's page faults,
// stalling it by 0.2-0.6 s now and then; collapsed during the load (MADV_COLLAPSE, Linux 6.1+)
// they cost it ~0.1 s, on this 2-core machine even from a background thread. So the arena is
// written in 4 KiB pages and collapsed by a background thread once the first evaluation is done,
// off the path to the first token. Advice only: an older kernel, or one that declines, leaves the
// small pages.
void Model::collapse_to_huge_pages() const {
#if defined(__linux__)
    if (!huge_bytes_) return;
    std::call_once(huge_once_, [this] {
        huge_pages_ = start_thread([p = x8_arena_.get(), n = huge_bytes_] { madvise(p, n, MADV_COLLAPSE); });
    });
#endif
}

Model::~Model() {
    if (huge_pages_.joinable()) huge_pages_.join();
}

// --- context ------------------------------------------------------------------------------------

uint64_t Context::kv_cache_bytes(const HParams& cfg, int n_ctx, Type type_k, Type type_v) {
    return KvCache::bytes_for(type_k, type_v, cfg.n_layer, n_ctx, cfg.n_head_kv, cfg.head_dim);
}

static int checked_n_ctx(int n_ctx) {
    if (n_ctx < 1) fail(ErrorKind::invalid_argument, "n_ctx must be at least 1, got " + std::to_string(n_ctx));
    return n_ctx;
}

Scratch::Scratch(const HParams& c, int n_batch, int n_threads) {
    if (n_batch < 1) fail(ErrorKind::invalid_argument, "n_batch must be at least 1");
    const int64_t kv_width = (int64_t)c.n_head_kv * c.head_dim, nq = (int64_t)c.n_head * c.head_dim;
    x.resize((size_t)n_batch * c.n_embd);
    xb.resize(x.size());
    tmp.resize(x.size());
    q.resize((size_t)n_batch * nq);
    att.resize(q.size());
    k.resize((size_t)n_batch * kv_width);
    v.resize(k.size());
    const int64_t max_ff = std::max<int64_t>({c.n_ff, c.n_expert ? c.n_ff_exp : 0, c.n_expert ? c.n_ff_shexp : 0});
    hb.resize((size_t)n_batch * max_ff);
    hb2.resize(hb.size());
    if (c.n_expert) {
        router.resize((size_t)n_batch * c.n_expert);
        sel.resize((size_t)n_batch * c.n_expert_used);
        sel_w.resize(sel.size());
        routed.resize(sel.size());
        xg.resize((size_t)n_batch * c.n_embd);
        moe_y.resize((size_t)n_batch * c.n_expert_used * c.n_embd);
    }
    cos_sin.resize((size_t)n_batch * c.n_rot);
    bool any_swa = false;
    for (int l = 0; l < c.n_layer; ++l) any_swa |= c.is_swa(l);
    if (any_swa) cos_sin_swa.resize(cos_sin.size());
    pos.resize(n_batch);
    att_scratch.resize(attention_scratch_floats(n_threads, c.n_head, c.n_head_kv, c.head_dim));
    // Largest quantized row: F32 activations (float weights) of the widest input.
    const int64_t max_k = std::max<int64_t>({c.n_embd, max_ff, nq});
    for (auto& a : act) a.resize((size_t)n_batch * max_k * sizeof(float) + 64);
}

Context::Context(std::shared_ptr<const Model> model, int n_ctx, int n_batch, int n_threads, Type type_k, Type type_v)
    : Context(std::move(model), std::make_shared<ThreadPool>(n_threads), nullptr, n_ctx, n_batch, type_k, type_v) {}

Context::Context(const Context& share_with, int n_ctx, Type type_k, Type type_v)
    : Context(share_with.model_, share_with.pool_owner_, share_with.scratch_, n_ctx, share_with.n_batch_, type_k, type_v) {}

Context::Context(std::shared_ptr<const Model> model, std::shared_ptr<ThreadPool> pool, std::shared_ptr<Scratch> scratch,
                 int n_ctx, int n_batch, Type type_k, Type type_v)
    : model_(std::move(model)), kt_(kernels()), pool_owner_(std::move(pool)), pool_(*pool_owner_), n_ctx_(n_ctx), n_batch_(n_batch),
      kv_(type_k, type_v, model_->config().n_layer, checked_n_ctx(n_ctx), model_->config().n_head_kv, model_->config().head_dim),
      scratch_(scratch ? std::move(scratch) : std::make_shared<Scratch>(model_->config(), n_batch, pool_.size())) {
    const HParams& c = model_->config();
    // The rope of the global layers and of the sliding-window ones (gemma3: base 10000, no
    // scaling). LongRoPE's long factors apply when this context is longer than the original.
    const Model& m = *model_;
    rope_.n_rot = c.n_rot;
    rope_.freq_base = c.rope_freq_base;
    rope_.freq_scale = c.rope_freq_scale;
    rope_.freq_factors = m.rope_freqs ? m.rope_freqs : (n_ctx > c.rope_n_ctx_orig ? m.rope_factors_long : m.rope_factors_short);
    rope_.ext_factor = c.yarn_ext_factor;
    rope_.attn_factor = c.yarn_attn_factor;
    rope_.beta_fast = c.yarn_beta_fast;
    rope_.beta_slow = c.yarn_beta_slow;
    rope_.n_ctx_orig = c.rope_n_ctx_orig;
    rope_swa_ = rope_;
    rope_swa_.freq_base = c.rope_freq_base_swa;
    rope_swa_.freq_scale = c.rope_freq_scale_swa;
}

void Context::truncate(int64_t n) {
    if (n < 0) n = 0;
    if (n < n_past_) n_past_ = n;
}

const uint8_t* Context::quantize_for(const Matrix& w, const float* x, int64_t nb, size_t* row_bytes, int slot) {
    const Type at = type_traits(w.type).vec_dot_type;
    *row_bytes = row_size(at, w.cols);
    quantize_rows(pool_, kt_, at, x, nb, w.cols, act_[slot].data());
    return act_[slot].data();
}

void Context::eval(const int32_t* tokens, int64_t n, float* logits, bool all_logits, const StopCheck& stop) {
    const HParams& c = model_->config();
    if (n <= 0) fail(ErrorKind::invalid_argument, "eval needs at least one token");
    if (n_past_ + n > n_ctx_)
        fail(ErrorKind::context_overflow, std::to_string(n_past_ + n) + " tokens do not fit in the context of " +
             std::to_string(n_ctx_) + " (" + std::to_string(n_past_) + " cached + " + std::to_string(n) + " new)");
    for (int64_t i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= c.n_vocab)
            fail(ErrorKind::invalid_token, "token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                 " is outside the vocabulary (0.." + std::to_string(c.n_vocab - 1) + ")");
    const int64_t start_past = n_past_;
    try {
        for (int64_t s = 0; s < n; s += n_batch_) {
            const int64_t nb = std::min<int64_t>(n_batch_, n - s);
            const bool last = s + nb == n;
            float* out = all_logits ? logits + s * c.n_vocab : (last ? logits : nullptr);
            forward_batch(tokens + s, nb, out, all_logits, stop);
            n_past_ += nb;
        }
        model_->collapse_to_huge_pages();
    } catch (...) {
        n_past_ = start_past;  // an interrupted eval leaves the cache as it was
        throw;
    }
}

void Context::run_matmul(const MatmulJob* jobs, int n_jobs, int64_t n_tok) {
    for (int i = 0; i < n_jobs; ++i) weight_bytes_read_ += (uint64_t)jobs[i].w->rows * jobs[i].w->row_bytes;
    matmul(pool_, kt_, jobs, n_jobs, n_tok);
}

// gate x into hb_ and up x into hb2_, n rows, in one matmul pass (x quantized once when both
// weights take the same activation type).
void Context::gate_up(const Matrix& gate, const Matrix& up, const float* x, int64_t n, int64_t ff) {
    size_t rg, ru;
    const uint8_t* ag = quantize_for(gate, x, n, &rg, 0);
    const bool same = type_traits(up.type).vec_dot_type == type_traits(gate.type).vec_dot_type;
    const uint8_t* au = same ? ag : quantize_for(up, x, n, &ru, 1);
    if (same) ru = rg;
    const MatmulJob jobs[2] = {{&gate, ag, rg, hb_.data(), ff}, {&up, au, ru, hb2_.data(), ff}};
    run_matmul(jobs, 2, n);
}

// down hb_ (n rows of the activated hidden state) into out.
void Context::down_proj(const Matrix& down, int64_t n, float* out) {
    size_t rd;
    const uint8_t* ad = quantize_for(down, hb_.data(), n, &rd, 0);
    const MatmulJob job{&down, ad, rd, out, down.rows};
    run_matmul(&job, 1, n);
}

// down(silu(gate x) * up x) for n rows of x into out (may be x: x is quantized before out is written).
void Context::swiglu_ffn(const Matrix& gate, const Matrix& up, const Matrix& down, const float* x, int64_t n, int64_t ff,
                         float* out) {
    gate_up(gate, up, x, n, ff);
    for (int64_t j = 0; j < n; ++j) kt_.swiglu(hb_.data() + j * ff, hb2_.data() + j * ff, ff);
    down_proj(down, n, out);
}

// The mixture-of-experts feed-forward of nb tokens (normed rows in xb_) into tmp_, as llama.cpp's
// build_moe_ffn computes it: softmax over the router's logits, the top n_expert_used experts,
// their probabilities as weights (renormalized where the family says), each expert's SwiGLU FFN
// over the rows routed to it (so a decode step reads only the chosen experts' weights), and the
// weighted outputs summed in rank order; qwen2moe adds its shared expert times a sigmoid gate.
void Context::moe_ffn(const LayerWeights& L, int64_t nb) {
    const HParams& c = model_->config();
    const int64_t d = c.n_embd, ne = c.n_expert, k = c.n_expert_used, fe = c.n_ff_exp;
    {
        size_t rr;
        const uint8_t* ar = quantize_for(L.router, xb_.data(), nb, &rr, 0);
        const MatmulJob job{&L.router, ar, rr, router_.data(), ne};
        run_matmul(&job, 1, nb);
    }
    for (int64_t t = 0; t < nb; ++t) {
        float* p = router_.data() + t * ne;
        float mx = p[0];
        for (int64_t e = 1; e < ne; ++e) mx = std::max(mx, p[e]);
        double sum = 0.0;
        for (int64_t e = 0; e < ne; ++e) sum += (p[e] = std::exp(p[e] - mx));
        const float inv = (float)(1.0 / sum);
        for (int64_t e = 0; e < ne; ++e) p[e] *= inv;
        int32_t* sel = sel_.data() + t * k;
        float* w = sel_w_.data() + t * k;
        float wsum = 0.0f;
        for (int64_t r = 0; r < k; ++r) {  // the r-th largest (k is small: a selection, not a sort)
            int32_t best = -1;
            for (int64_t e = 0; e < ne; ++e) {
                bool taken = false;
                for (int64_t q = 0; q < r; ++q) taken |= sel[q] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = (int32_t)e;
            }
            sel[r] = best;
            w[r] = p[best];
            wsum += w[r];
        }
        if (c.expert_weights_norm) {
            const float s = std::max(wsum, 6.103515625e-5f);
            for (int64_t r = 0; r < k; ++r) w[r] /= s;
        }
    }
    for (int64_t e = 0; e < ne; ++e) {
        int64_t n = 0;
        for (int64_t i = 0; i < nb * k; ++i)
            if (sel_[i] == e) routed_[n++] = (int32_t)i;
        if (!n) continue;  // this expert's weights are not read
        for (int64_t j = 0; j < n; ++j)
            std::memcpy(xg_.data() + j * d, xb_.data() + (routed_[j] / k) * d, d * sizeof(float));
        swiglu_ffn(L.exp_gate[e], L.exp_up[e], L.exp_down[e], xg_.data(), n, fe, xg_.data());
        for (int64_t j = 0; j < n; ++j) std::memcpy(moe_y_.data() + (int64_t)routed_[j] * d, xg_.data() + j * d, d * sizeof(float));
    }
    for (int64_t t = 0; t < nb; ++t) {
        float* o = tmp_.data() + t * d;
        for (int64_t r = 0; r < k; ++r) {
            const float* y = moe_y_.data() + (t * k + r) * d;
            const float w = sel_w_[t * k + r];
            if (r == 0) for (int64_t i = 0; i < d; ++i) o[i] = y[i] * w;
            else for (int64_t i = 0; i < d; ++i) o[i] += y[i] * w;
        }
    }
    if (L.shexp_router) {
        swiglu_ffn(L.shexp_gate, L.shexp_up, L.shexp_down, xb_.data(), nb, c.n_ff_shexp, xg_.data());
        size_t rs;
        const uint8_t* as = quantize_for(L.shexp_router, xb_.data(), nb, &rs, 2);
        const MatmulJob gate{&L.shexp_router, as, rs, router_.data(), 1};
        run_matmul(&gate, 1, nb);
        for (int64_t t = 0; t < nb; ++t) {
            const float g = router_[t];
            const float sg = 1.0f / (1.0f + std::exp(-g));
            float* o = tmp_.data() + t * d;
            const float* y = xg_.data() + t * d;
            for (int64_t i = 0; i < d; ++i) o[i] += y[i] * sg;
        }
    }
}

void Context::decode_batch(Context* const* seqs, const int32_t* tokens, int64_t n, float* logits, const StopCheck& stop) {
    const HParams& c = model_->config();
    if (n <= 0) fail(ErrorKind::invalid_argument, "decode_batch needs at least one sequence");
    if (n > n_batch_)
        fail(ErrorKind::invalid_argument, std::to_string(n) + " sequences are more than n_batch = " + std::to_string(n_batch_));
    for (int64_t i = 0; i < n; ++i) {
        const Context* s = seqs[i];
        if (!s || s->model_.get() != model_.get())
            fail(ErrorKind::invalid_argument, "decode_batch: sequence " + std::to_string(i) + " is not a Context of this model");
        for (int64_t j = 0; j < i; ++j)
            if (seqs[j] == s) fail(ErrorKind::invalid_argument, "decode_batch: a Context appears twice");
        if (s->n_past_ + 1 > s->n_ctx_)
            fail(ErrorKind::context_overflow, "sequence " + std::to_string(i) + " is full (" + std::to_string(s->n_ctx_) + " tokens)");
        if (s->kv_.type_k() != kv_.type_k() || s->kv_.type_v() != kv_.type_v() || s->n_ctx_ != n_ctx_)
            fail(ErrorKind::invalid_argument, "decode_batch: the sequences' contexts differ in size or KV cache type");
        if (tokens[i] < 0 || tokens[i] >= c.n_vocab)
            fail(ErrorKind::invalid_token, "token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                 " is outside the vocabulary (0.." + std::to_string(c.n_vocab - 1) + ")");
    }
    // The batched attention's partials: kMaxSplit ranges per sequence and KV head (ops.h).
    const size_t att = attention_batch_scratch_floats(pool_.size(), c.n_head, c.n_head_kv, (int)c.head_dim, n);
    if (att_scratch_.size() < att) att_scratch_.resize(att);
    if ((int64_t)kv_views_.size() < n) kv_views_.resize(n);
    // Rows past a sequence's n_past are written, but n_past moves only on success.
    forward_batch(tokens, n, logits, true, stop, seqs);
    for (int64_t i = 0; i < n; ++i) seqs[i]->n_past_ += 1;
    model_->collapse_to_huge_pages();
}

void Context::forward_batch(const int32_t* tokens, int64_t nb, float* logits, bool all_logits, const StopCheck& stop,
                            Context* const* seqs) {
    const Model& m = *model_;
    const HParams& c = m.config();
    const ArchSpec& A = m.arch();
    const int64_t d = c.n_embd, hd = c.head_dim, ff = c.n_ff;
    const int64_t nq = (int64_t)c.n_head * hd, nkv = (int64_t)c.n_head_kv * hd;
    const int64_t pos0 = n_past_;

    // Rows of elementwise work split across threads only when there are enough of them.
    auto for_rows = [&](int64_t rows, auto&& fn) {
        if (rows < 4) { for (int64_t r = 0; r < rows; ++r) fn(r); return; }
        pool_.parallel_for(rows, [&](int64_t r, int) { fn(r); });
    };

    for (int64_t t = 0; t < nb; ++t) {
        float* xr = x_.data() + t * d;
        if (m.tok_embd.x8)
            x8_row_to_float(m.tok_embd.type, m.tok_embd.data, m.tok_embd.row_bytes, m.tok_embd.rows, tokens[t], d, xr);
        else
            kt_.to_float[m.tok_embd.type](m.tok_embd.data + (int64_t)tokens[t] * m.tok_embd.row_bytes, xr, d);
        if (c.embd_scale != 1.0f)
            for (int64_t i = 0; i < d; ++i) xr[i] *= c.embd_scale;
        pos_[t] = (int32_t)(seqs ? seqs[t]->n_past_ : pos0 + t);
    }
    weight_bytes_read_ += (uint64_t)nb * m.tok_embd.row_bytes;
    rope_cache(pos_.data(), nb, rope_, cos_sin_.data());
    if (!cos_sin_swa_.empty()) rope_cache(pos_.data(), nb, rope_swa_, cos_sin_swa_.data());
    const float scale = c.attn_scale > 0 ? c.attn_scale : 1.0f / std::sqrt((float)hd);
    auto capture = [&](int l, LinearInput which, const float* x, int64_t k) {
        if (capture_) capture_->on_input(l, which, x, nb, k, pool_);
    };

    for (int l = 0; l < c.n_layer; ++l) {
        if (stop && stop()) fail(ErrorKind::interrupted, "interrupted");
        const LayerWeights& L = m.layers[l];
        const bool swa = c.is_swa(l);

        // --- attention block
        for_rows(nb, [&](int64_t t) { rmsnorm(x_.data() + t * d, L.attn_norm, xb_.data() + t * d, 1, d, c.rms_eps); });
        capture(l, LinearInput::attn_qkv, xb_.data(), d);
        {
            size_t rq = 0, rk = 0, rv = 0;
            const uint8_t* aq = quantize_for(L.wq, xb_.data(), nb, &rq, 0);
            // k and v usually share q's activation type; quantize again only when they don't.
            const bool same_k = type_traits(L.wk.type).vec_dot_type == type_traits(L.wq.type).vec_dot_type;
            const bool same_v = type_traits(L.wv.type).vec_dot_type == type_traits(L.wq.type).vec_dot_type;
            const uint8_t* ak = same_k ? aq : quantize_for(L.wk, xb_.data(), nb, &rk, 1);
            const uint8_t* av = same_v ? aq : (type_traits(L.wv.type).vec_dot_type == type_traits(L.wk.type).vec_dot_type ? ak : quantize_for(L.wv, xb_.data(), nb, &rv, 2));
            if (same_k) rk = rq;
            if (same_v) rv = rq; else if (av == ak) rv = rk;
            const MatmulJob jobs[3] = {{&L.wq, aq, rq, q_.data(), nq}, {&L.wk, ak, rk, k_.data(), nkv}, {&L.wv, av, rv, v_.data(), nkv}};
            run_matmul(jobs, 3, nb);
        }
        const float* cos_sin = swa ? cos_sin_swa_.data() : cos_sin_.data();
        for_rows(nb, [&](int64_t t) {
            float* qr = q_.data() + t * nq;
            float* kr = k_.data() + t * nkv;
            float* vr = v_.data() + t * nkv;
            if (L.bq) for (int64_t i = 0; i < nq; ++i) qr[i] += L.bq[i];
            if (L.bk) for (int64_t i = 0; i < nkv; ++i) kr[i] += L.bk[i];
            if (L.bv) for (int64_t i = 0; i < nkv; ++i) vr[i] += L.bv[i];
            if (L.q_norm) {  // each head its own row, or (olmoe) the whole q and k rows
                if (A.qk_norm_full) {
                    rmsnorm(qr, L.q_norm, qr, 1, nq, c.rms_eps);
                    rmsnorm(kr, L.k_norm, kr, 1, nkv, c.rms_eps);
                } else {
                    rmsnorm(qr, L.q_norm, qr, c.n_head, hd, c.rms_eps);
                    rmsnorm(kr, L.k_norm, kr, c.n_head_kv, hd, c.rms_eps);
                }
            }
            const float* cs = cos_sin + t * c.n_rot;
            rope(qr, 1, nq, c.n_head, (int)hd, c.n_rot, c.rope_neox, cs);
            rope(kr, 1, nkv, c.n_head_kv, (int)hd, c.n_rot, c.rope_neox, cs);
            (seqs ? seqs[t]->kv_ : kv_).store(kt_, l, pos_[t], kr, vr);
        });
        if (!seqs) {
            attention(pool_, kt_, q_.data(), nq, kv_.layer(l), att_.data(), nq, nb, pos0, c.n_head, c.n_head_kv, (int)hd, scale,
                      att_scratch_.data(), swa ? c.n_swa : 0, c.attn_softcap);
        } else {
            // Each sequence attends over its own cache, all in one parallel job, with the result
            // its own decode step gets (ops.h).
            for (int64_t t = 0; t < nb; ++t) kv_views_[t] = seqs[t]->kv_.layer(l);
            attention_decode_batch(pool_, kt_, q_.data(), nq, kv_views_.data(), pos_.data(), nb, att_.data(), nq, c.n_head,
                                   c.n_head_kv, (int)hd, scale, att_scratch_.data(), swa ? c.n_swa : 0, c.attn_softcap);
        }
        capture(l, LinearInput::attn_output, att_.data(), nq);
        {
            size_t ro;
            const uint8_t* ao = quantize_for(L.wo, att_.data(), nb, &ro, 0);
            const MatmulJob job{&L.wo, ao, ro, tmp_.data(), d};
            run_matmul(&job, 1, nb);
        }
        // --- feed-forward block
        for_rows(nb, [&](int64_t t) {
            float* xr = x_.data() + t * d;
            float* tr = tmp_.data() + t * d;
            if (L.attn_post_norm) rmsnorm(tr, L.attn_post_norm, tr, 1, d, c.rms_eps);
            for (int64_t i = 0; i < d; ++i) xr[i] += tr[i];
            rmsnorm(xr, L.ffn_norm, xb_.data() + t * d, 1, d, c.rms_eps);
        });
        capture(l, LinearInput::ffn_gate_up, xb_.data(), d);
        if (L.router) {
            moe_ffn(L, nb);  // into tmp_
        } else {
            gate_up(L.w_gate, L.w_up, xb_.data(), nb, ff);
            if (A.ffn_act == Activation::gelu_tanh)
                for_rows(nb, [&](int64_t t) { geglu_tanh(hb_.data() + t * ff, hb2_.data() + t * ff, ff); });
            else
                for_rows(nb, [&](int64_t t) { kt_.swiglu(hb_.data() + t * ff, hb2_.data() + t * ff, ff); });
            capture(l, LinearInput::ffn_down, hb_.data(), ff);
            down_proj(L.w_down, nb, tmp_.data());
        }
        for_rows(nb, [&](int64_t t) {
            float* xr = x_.data() + t * d;
            float* tr = tmp_.data() + t * d;
            if (L.ffn_post_norm) rmsnorm(tr, L.ffn_post_norm, tr, 1, d, c.rms_eps);
            for (int64_t i = 0; i < d; ++i) xr[i] += tr[i];
        });
        capture(l, LinearInput::layer_output, x_.data(), d);
    }
    if (!logits) return;

    // --- output: logits of every token, or only of the last
    const int64_t first = all_logits ? 0 : nb - 1;
    const int64_t n_out = nb - first;
    for_rows(n_out, [&](int64_t t) {
        rmsnorm(x_.data() + (first + t) * d, m.output_norm, xb_.data() + t * d, 1, d, c.rms_eps);
    });
    size_t ro;
    const uint8_t* ao = quantize_for(m.output, xb_.data(), n_out, &ro, 0);
    const MatmulJob job{&m.output, ao, ro, logits, c.n_vocab};
    run_matmul(&job, 1, n_out);
    if (c.final_softcap > 0)
        for_rows(n_out, [&](int64_t t) { softcap(logits + t * c.n_vocab, c.n_vocab, c.final_softcap); });
}

} // namespace pyllm
