#include "model/calibrate.h"

#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "core/common.h"

namespace pyllm {

namespace {

// Forwards everything to the user's sink and copies the layer's output rows into place.
struct OutputSink : CaptureSink {
    CaptureSink* user;
    float* out;        // (seq_len, n_embd) rows of the current sequence
    void on_input(int layer, LinearInput which, const float* x, int64_t n_tok, int64_t k, ThreadPool& pool) override {
        if (which == LinearInput::layer_output) std::memcpy(out, x, sizeof(float) * n_tok * k);
        if (user) user->on_input(layer, which, x, n_tok, k, pool);
    }
};

} // namespace

void run_layer(const HParams& cfg, const std::unordered_map<std::string, TensorView>& layer,
               const float* hidden_in, float* hidden_out, int64_t n_seq, int seq_len, int n_threads,
               CaptureSink* sink, const StopCheck& stop) {
    if (n_seq < 1 || seq_len < 1) fail(ErrorKind::invalid_argument, "run_layer needs at least one sequence of one token");
    const int64_t n_rows = n_seq * seq_len;
    if (n_rows > (1 << 24)) fail(ErrorKind::invalid_argument, "run_layer: at most 2^24 calibration tokens");
    HParams c = cfg;
    c.n_layer = 1;
    c.n_vocab = (int)n_rows;
    c.embd_scale = 1.0f;   // the stream is the residual itself
    c.final_softcap = 0.0f;
    c.n_swa = 0;
    const int64_t d = c.n_embd;

    std::unordered_map<std::string, TensorView> tensors = layer;
    TensorView table{TYPE_F32, 2, {d, n_rows, 1, 1}, reinterpret_cast<const uint8_t*>(hidden_in),
                     (uint64_t)(n_rows * d * sizeof(float))};
    tensors["token_embd.weight"] = table;
    std::vector<float> ones(d, 1.0f);  // output_norm: required by the model, never used (no logits)
    tensors["output_norm.weight"] = TensorView{TYPE_F32, 1, {d, 1, 1, 1}, reinterpret_cast<const uint8_t*>(ones.data()),
                                               (uint64_t)(d * sizeof(float))};
    auto model = std::make_shared<Model>(c, tensors);
    Context ctx(model, seq_len, seq_len, n_threads);
    OutputSink out_sink;
    out_sink.user = sink;
    ctx.set_capture(&out_sink);
    std::vector<int32_t> ids(seq_len);
    for (int64_t s = 0; s < n_seq; ++s) {
        std::iota(ids.begin(), ids.end(), (int32_t)(s * seq_len));
        out_sink.out = hidden_out + s * seq_len * d;
        ctx.truncate(0);
        ctx.eval(ids.data(), seq_len, nullptr, false, stop);
    }
}

} // namespace pyllm
