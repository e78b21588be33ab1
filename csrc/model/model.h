// The shared transformer runtime of the dense families: weights as views into the mapped file
// (checked, then repacked into one x8 arena), and a Context that owns one sequence's KV cache,
// scratch and thread pool and runs the layers. What differs between families (tensors, norms,
// activation, attention options, rope) is an ArchSpec (arch.h, archs/*.cpp) plus HParams
// (hparams.h); this file has no `if (arch == ...)`.
// Not the tokenizer or the sampler; not file parsing (weights arrive as TensorViews).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/common.h"
#include "core/threadpool.h"
#include "kernels/kernels.h"
#include "model/arch.h"
#include "model/hparams.h"
#include "ops/ops.h"

namespace pyllm {

struct TensorView {
    Type type;
    int n_dims;
    int64_t ne[4];
    const uint8_t* data;
    uint64_t nbytes;
    int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

// One layer's weights. A fused file tensor (phi3's attn_qkv, ffn_up holding gate and up) is
// split into row-range views here, so the compute never knows.
struct LayerWeights {
    const float* attn_norm = nullptr;  // (n_embd)
    Matrix wq, wk, wv, wo;   // (n_head*hd, n_embd), (n_kv*hd, n_embd) x2, (n_embd, n_head*hd)
    const float* bq = nullptr;  // optional biases (qwen2), (n_head*hd) / (n_kv*hd)
    const float* bk = nullptr;
    const float* bv = nullptr;
    const float* q_norm = nullptr;  // (hd) per-head RMSNorm before rope (qwen3, gemma3)
    const float* k_norm = nullptr;
    const float* attn_post_norm = nullptr;  // (n_embd) on the attention output (gemma)
    const float* ffn_norm = nullptr;   // (n_embd)
    Matrix w_gate, w_up, w_down;  // (n_ff, n_embd) x2, (n_embd, n_ff)
    const float* ffn_post_norm = nullptr;   // (n_embd) on the feed-forward output (gemma)
    // Mixture of experts (n_expert > 0; then w_gate/w_up/w_down are empty): the router
    // (n_expert, n_embd), each expert's matrices (row ranges of the 3-D *_exps tensors), and
    // qwen2moe's shared expert with its one-row sigmoid gate.
    Matrix router;
    std::vector<Matrix> exp_gate, exp_up, exp_down;  // (n_ff_exp, n_embd) x2, (n_embd, n_ff_exp)
    Matrix shexp_gate, shexp_up, shexp_down, shexp_router;
};

struct ModelOptions {
    // Repack the matrices the kernel table has an x8 kernel for into owned row-interleaved
    // copies (kernels.h) at load; the model then reads those, never the views' bytes.
    bool repack = true;
};

class Model {
public:
    // Checks every tensor the architecture needs: present, F32 where it must be, shapes that
    // agree with the hyper-parameters. Throws Error(gguf) naming the tensor, or Error(unsupported).
    // Where a repacked tensor's view lies in a read-only file mapping (the GGUF file), its pages
    // are dropped from this process once copied (madvise DONTNEED), so repacking does not hold
    // the weights twice; they fault back in from the file if the mapping's owner reads them.
    Model(const HParams& cfg, const std::unordered_map<std::string, TensorView>& tensors,
          const ModelOptions& options = {});
    ~Model();
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    const HParams& config() const { return cfg_; }
    const ArchSpec& arch() const { return *arch_; }
    uint64_t weight_bytes() const { return weight_bytes_; }

    Matrix tok_embd;           // (n_vocab, n_embd)
    const float* output_norm;  // (n_embd)
    Matrix output;             // (n_vocab, n_embd); tok_embd when tied
    std::vector<LayerWeights> layers;
    // Per-dimension divisors of the rope frequencies, (n_rot/2) each, or nullptr: llama3's
    // rope_freqs.weight; phi3's LongRoPE pair (the Context picks one by its n_ctx).
    const float* rope_freqs = nullptr;
    const float* rope_factors_long = nullptr;
    const float* rope_factors_short = nullptr;

    // Bytes of weights held in owned x8 copies (counted in weight_bytes too).
    uint64_t repacked_bytes() const { return repacked_bytes_; }
    // Moves those copies into 2 MiB pages on a background thread, once (the first evaluation
    // calls it); a no-op where unsupported.
    void collapse_to_huge_pages() const;

private:
    static bool repackable(const Matrix& m);
    static bool is_float_matrix(const Matrix& m);
    void repack(Matrix& m, uint8_t* dst, bool release);

    HParams cfg_;
    const ArchSpec* arch_;
    uint64_t weight_bytes_ = 0, repacked_bytes_ = 0;
    struct AlignedDeleter { void operator()(void* p) const { aligned_free(p); } };
    std::unique_ptr<uint8_t, AlignedDeleter> x8_arena_;  // the repacked matrices, each 64-byte aligned
    size_t huge_bytes_ = 0;             // the arena's size, a multiple of 2 MiB
    mutable std::once_flag huge_once_;
    mutable std::thread huge_pages_;    // collapse_to_huge_pages' thread, joined on destruction
};

// Called between layers; returning true abandons the evaluation (Ctrl-C).
using StopCheck = std::function<bool()>;

// The float inputs of a layer's matrix multiplications, as forward_batch is about to quantize them
// (q/k/v share one input, gate/up share one), and the residual stream after the layer.
enum class LinearInput : int { attn_qkv = 0, attn_output = 1, ffn_gate_up = 2, ffn_down = 3, layer_output = 4 };

// Receives those inputs during evaluation; for quantization tools (calibration), not for inference.
// x is (n_tok, k) row-major and valid only during the call; the sink may use `pool` for its work
// (it is called between the context's parallel jobs, on the evaluating thread).
struct CaptureSink {
    virtual ~CaptureSink() = default;
    virtual void on_input(int layer, LinearInput which, const float* x, int64_t n_tok, int64_t k, ThreadPool& pool) = 0;
};

// The buffers a forward pass works in, sized for n_batch tokens of one model. The Contexts of one
// generation engine share one, with their thread pool (they evaluate one at a time), so a slot
// costs only its KV cache: a 1B-shape scratch at n_batch 512 is ~100 MB, and zeroing a fresh one
// took 160 ms of the step that admitted a new slot (2-core Zen 3).
struct Scratch {
    Scratch(const HParams& c, int n_batch, int n_threads);
    std::vector<float> x;        // (n_batch, n_embd) residual stream
    std::vector<float> xb;       // (n_batch, n_embd) normed
    std::vector<float> q;        // (n_batch, n_head*hd)
    std::vector<float> k, v;     // (n_batch, n_kv*hd)
    std::vector<float> att;      // (n_batch, n_head*hd)
    std::vector<float> tmp;      // (n_batch, n_embd)
    std::vector<float> hb, hb2;  // (n_batch, max(n_ff, n_ff_exp, n_ff_shexp))
    // Mixture of experts: router probabilities, each token's top-k experts and weights, the rows
    // routed to one expert, and each (token, rank)'s expert output, summed in rank order.
    std::vector<float> router;   // (n_batch, n_expert)
    std::vector<int32_t> sel;    // (n_batch, n_expert_used)
    std::vector<float> sel_w;    // (n_batch, n_expert_used)
    std::vector<int32_t> routed; // (n_batch * n_expert_used) (token * k + rank) of one expert
    std::vector<float> xg;       // (n_batch, n_embd) gathered rows
    std::vector<float> moe_y;    // (n_batch, n_expert_used, n_embd)
    std::vector<float> cos_sin;  // (n_batch, n_rot) for the global layers
    std::vector<float> cos_sin_swa;  // (n_batch, n_rot) for the sliding-window layers
    std::vector<int32_t> pos;    // (n_batch)
    std::vector<float> att_scratch;  // grown by decode_batch to the batched attention's size
    std::vector<KvLayerView> kv_views;  // (n_batch) a decode_batch's sequences' caches at one layer
    std::vector<uint8_t> act[3]; // quantized activations, one per concurrently used act type
};

class Context {
public:
    // Sizes the KV cache for n_ctx positions (K and V rows of type_k / type_v, kv_cache.h) and the
    // scratch for n_batch tokens per forward.
    Context(std::shared_ptr<const Model> model, int n_ctx, int n_batch, int n_threads,
            Type type_k = TYPE_F16, Type type_v = TYPE_F16);
    // A Context on `share_with`'s model, thread pool and scratch, with its own KV cache of n_ctx
    // positions: the slots of one generation engine, which evaluates one of them at a time
    // (several sequences must not oversubscribe the cores). The caller serializes their use.
    Context(const Context& share_with, int n_ctx, Type type_k = TYPE_F16, Type type_v = TYPE_F16);
    // Never copied: a copy would share this one's scratch (its buffer names are references into
    // it) outside the lock that serializes the Contexts sharing one.
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    int n_ctx() const { return n_ctx_; }
    int n_threads() const { return pool_.size(); }
    int64_t n_past() const { return n_past_; }
    // Forgets cached positions from n on (keeps the first n: a shared prompt prefix).
    void truncate(int64_t n);

    // Evaluates n tokens at positions n_past.. and appends them to the cache. Writes logits of
    // every token ((n, n_vocab)) when all_logits, else only of the last ((1, n_vocab)).
    // Throws Error(context_overflow) before any compute if they don't fit, Error(invalid_token)
    // for an id outside the vocabulary, Error(interrupted) if stop() says so (cache unchanged).
    void eval(const int32_t* tokens, int64_t n, float* logits, bool all_logits, const StopCheck& stop);

    // Continuous batching: one token for each of n sequences in one forward pass, so every weight
    // is read once for all of them. Token i is evaluated in seqs[i] (at its n_past, its K/V stored
    // in its cache) and appended to it; logits are (n, n_vocab). Runs on this Context's pool and
    // scratch (n <= n_batch); every seqs[i] must be a distinct Context of this one's model (this
    // one may be among them). Each sequence gets exactly the logits its own eval would give (the
    // kernels are batch-invariant: rows never mix). Throws before any compute on bad input;
    // on any error no sequence's cache changes.
    void decode_batch(Context* const* seqs, const int32_t* tokens, int64_t n, float* logits, const StopCheck& stop);

    static uint64_t kv_cache_bytes(const HParams& cfg, int n_ctx, Type type_k = TYPE_F16, Type type_v = TYPE_F16);
    const KvCache& kv_cache() const { return kv_; }

    // Bytes of weights the forward passes on this Context have read so far: every matmul's whole
    // matrix (only the routed experts' rows for mixture-of-experts layers) and one embedding row per
    // token. A measurement, not an estimate: `pyllm bench` reports its growth per decoded token.
    uint64_t weight_bytes_read() const { return weight_bytes_read_; }

    // Sends every layer's matmul inputs to `sink` during eval (nullptr: off, the default).
    void set_capture(CaptureSink* sink) { capture_ = sink; }

private:
    Context(std::shared_ptr<const Model> model, std::shared_ptr<ThreadPool> pool, std::shared_ptr<Scratch> scratch, int n_ctx,
            int n_batch, Type type_k, Type type_v);
    // seqs (nullable): token t belongs to seqs[t] (decode_batch), else all to this sequence.
    void forward_batch(const int32_t* tokens, int64_t nb, float* logits, bool all_logits, const StopCheck& stop,
                       Context* const* seqs = nullptr);

    // A row buffer for activations quantized to one vec_dot_type.
    const uint8_t* quantize_for(const Matrix& w, const float* x, int64_t nb, size_t* row_bytes, int slot);

    std::shared_ptr<const Model> model_;
    const KernelTable& kt_;
    std::shared_ptr<ThreadPool> pool_owner_;
    ThreadPool& pool_;
    int n_ctx_, n_batch_;
    int64_t n_past_ = 0;

    KvCache kv_;  // (n_layer, n_ctx) K and V rows
    std::shared_ptr<Scratch> scratch_;
    // The scratch's buffers under the names the forward pass uses (bound to *scratch_):
    std::vector<float>& x_ = scratch_->x;
    std::vector<float>& xb_ = scratch_->xb;
    std::vector<float>& q_ = scratch_->q;
    std::vector<float>& k_ = scratch_->k;
    std::vector<float>& v_ = scratch_->v;
    std::vector<float>& att_ = scratch_->att;
    std::vector<float>& tmp_ = scratch_->tmp;
    std::vector<float>& hb_ = scratch_->hb;
    std::vector<float>& hb2_ = scratch_->hb2;
    std::vector<float>& router_ = scratch_->router;
    std::vector<int32_t>& sel_ = scratch_->sel;
    std::vector<float>& sel_w_ = scratch_->sel_w;
    std::vector<int32_t>& routed_ = scratch_->routed;
    std::vector<float>& xg_ = scratch_->xg;
    std::vector<float>& moe_y_ = scratch_->moe_y;
    std::vector<float>& cos_sin_ = scratch_->cos_sin;
    std::vector<float>& cos_sin_swa_ = scratch_->cos_sin_swa;
    std::vector<int32_t>& pos_ = scratch_->pos;
    std::vector<float>& att_scratch_ = scratch_->att_scratch;
    std::vector<KvLayerView>& kv_views_ = scratch_->kv_views;
    std::vector<uint8_t>* const act_ = scratch_->act;
    uint64_t weight_bytes_read_ = 0;
    // matmul() on this Context's pool, counting the weights it reads.
    void run_matmul(const MatmulJob* jobs, int n_jobs, int64_t n_tok);
    void moe_ffn(const LayerWeights& L, int64_t nb);
    void gate_up(const Matrix& gate, const Matrix& up, const float* x, int64_t n, int64_t ff);
    void down_proj(const Matrix& down, int64_t n, float* out);
    void swiglu_ffn(const Matrix& gate, const Matrix& up, const Matrix& down, const float* x, int64_t n, int64_t ff,
                    float* out);
    RopeParams rope_, rope_swa_;  // their rope: the model's, with the factors this n_ctx picks
    CaptureSink* capture_ = nullptr;
};

} // namespace pyllm
