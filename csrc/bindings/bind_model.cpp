// Model, Context and Sampler bindings. Compute runs with the GIL released; between layers the
// compute thread briefly takes it back to let Python notice Ctrl-C.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <mutex>

#include "bindings/bindings.h"
#include "bindings/shared.h"
#include "core/common.h"
#include "model/model.h"
#include "sampling/sampler.h"

namespace py = pybind11;

namespace pyllm {

namespace {

// Owns the Python objects whose buffers the model's weights point into (the mapped file).
struct PyModel {
    std::shared_ptr<const Model> model;
    py::object keep_alive;
};

struct PyContext {
    std::unique_ptr<Context> ctx;
    py::object model_ref;          // keeps the weights alive
    std::vector<float> last_logits;// (n_vocab) logits of the last evaluated token
    std::shared_ptr<std::mutex> busy;  // one evaluation at a time, whatever Python threads do (one
                                       // lock for the Contexts that share a scratch)
    std::vector<float> batch_logits;// (n, n_vocab) of a decode_batch this Context leads: kept, so a
                                    // step does not map and fault in fresh pages (1.5 MB at 8 x 49152)
};

std::unique_ptr<PyModel> make_model(const py::dict& cfg, const py::dict& tensors, py::object keep_alive, bool repack) {
    const auto views = tensor_views(tensors);
    auto m = std::make_unique<PyModel>();
    const HParams c = config_from_dict(cfg);
    ModelOptions opts;
    opts.repack = repack;
    {
        // Repacking takes most of a load: without the GIL, Python builds the tokenizer meanwhile.
        py::gil_scoped_release nogil;
        m->model = std::make_shared<Model>(c, views, opts);
    }
    m->keep_alive = std::move(keep_alive);
    return m;
}

py::array_t<int32_t, py::array::c_style | py::array::forcecast> as_tokens(py::handle h) {
    return py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(h);
}

using mask_array = py::array_t<uint32_t, py::array::c_style | py::array::forcecast>;

// An allowed-token bitmask from Python (None: no constraint), checked against the vocabulary.
mask_array as_mask(py::handle h, int64_t n_vocab) {
    if (h.is_none()) return mask_array();
    mask_array m = mask_array::ensure(h);
    if (!m) fail(ErrorKind::invalid_argument, "allowed must be a uint32 array (a token bitmask) or None");
    if (m.ndim() != 1 || m.shape(0) != (n_vocab + 31) / 32)
        fail(ErrorKind::invalid_argument, "allowed must hold (n_vocab + 31) / 32 = " + std::to_string((n_vocab + 31) / 32) +
                                              " uint32 words, got " + std::to_string(m.size()));
    return m;
}

} // namespace

void register_model(py::module_& m) {
    // The hyper-parameter key table (model/hparams.h), for pyllm.model.ModelConfig.
    m.def("read_hparams", [](const py::dict& metadata) { return dict_from_hparams(read_hparams(metadata_for_hparams(metadata))); },
          py::arg("metadata"),
          "The model config dict of a GGUF metadata dict: GGUFError naming a bad key, UnsupportedModelError for an unknown architecture");
    m.def("hparam_fields", [] {
        py::list out;
        for (const HParamField& f : hparam_fields()) {
            static const char* kinds[] = {"int", "float", "bool", "str"};
            out.append(py::make_tuple(f.name, kinds[f.kind]));
        }
        return out;
    });
    m.def("supported_architectures", [] { return supported_archs(); });
    const SamplerParams kSamplerDefaults{};
    m.def("sampler_defaults", [kSamplerDefaults] {
        py::dict d;
        d["temperature"] = kSamplerDefaults.temperature; d["top_k"] = kSamplerDefaults.top_k;
        d["top_p"] = kSamplerDefaults.top_p; d["min_p"] = kSamplerDefaults.min_p;
        d["repeat_penalty"] = kSamplerDefaults.repeat_penalty; d["presence_penalty"] = kSamplerDefaults.presence_penalty;
        d["frequency_penalty"] = kSamplerDefaults.frequency_penalty; d["penalty_last_n"] = kSamplerDefaults.penalty_last_n;
        return d;
    }, "The sampler chain's default settings (SamplerParams), as a dict.");
    py::class_<PyModel>(m, "Model")
        .def(py::init(&make_model), py::arg("config"), py::arg("tensors"), py::arg("keep_alive") = py::none(),
             py::arg("repack") = true)
        .def_property_readonly("repacked_bytes", [](const PyModel& pm) { return pm.model->repacked_bytes(); })
        .def_property_readonly("weight_bytes", [](const PyModel& pm) { return pm.model->weight_bytes(); })
        .def_property_readonly("n_vocab", [](const PyModel& pm) { return pm.model->config().n_vocab; })
        .def_static("kv_cache_bytes", [](const py::dict& cfg, int n_ctx, const std::string& type_k, const std::string& type_v) {
                        return Context::kv_cache_bytes(config_from_dict(cfg), n_ctx, kv_cache_type_from_name(type_k),
                                                       kv_cache_type_from_name(type_v));
                    },
                    py::arg("config"), py::arg("n_ctx"), py::arg("cache_type_k") = "f16", py::arg("cache_type_v") = "f16");

    py::class_<PyContext>(m, "Context")
        // share_with: another Context of the same model whose thread pool and scratch this one
        // uses (the generation engine's slots: one pool of n_threads threads and one set of
        // forward buffers, whatever the slot count; a slot costs its KV cache). Contexts that
        // share evaluate one at a time (one lock), and take n_batch and n_threads from share_with.
        .def(py::init([](py::object model, int n_ctx, int n_batch, int n_threads, const std::string& type_k,
                         const std::string& type_v, py::object share_with) {
                 auto& pm = model.cast<PyModel&>();
                 auto pc = std::make_unique<PyContext>();
                 const Type tk = kv_cache_type_from_name(type_k), tv = kv_cache_type_from_name(type_v);
                 if (share_with.is_none()) {
                     pc->ctx = std::make_unique<Context>(pm.model, n_ctx, n_batch, n_threads, tk, tv);
                     pc->busy = std::make_shared<std::mutex>();
                 } else {
                     auto& other = share_with.cast<PyContext&>();
                     if (!other.model_ref.is(model))
                         fail(ErrorKind::invalid_argument, "share_with must be a Context of the same model");
                     pc->ctx = std::make_unique<Context>(*other.ctx, n_ctx, tk, tv);
                     pc->busy = other.busy;
                 }
                 pc->model_ref = model;
                 pc->last_logits.assign(pm.model->config().n_vocab, 0.0f);
                 return pc;
             }),
             py::arg("model"), py::arg("n_ctx"), py::arg("n_batch") = 512, py::arg("n_threads") = 0,
             py::arg("cache_type_k") = "f16", py::arg("cache_type_v") = "f16", py::arg("share_with") = py::none())
        .def_property_readonly("n_ctx", [](PyContext& c) { return c.ctx->n_ctx(); })
        .def_property_readonly("kv_cache_bytes", [](PyContext& c) { return c.ctx->kv_cache().bytes(); })
        .def_property_readonly("n_past", [](PyContext& c) { return c.ctx->n_past(); })
        .def_property_readonly("weight_bytes_read", [](PyContext& c) { return c.ctx->weight_bytes_read(); })
        .def_property_readonly("n_threads", [](PyContext& c) { return c.ctx->n_threads(); })
        .def("truncate", [](PyContext& c, int64_t n) { std::lock_guard<std::mutex> l(*c.busy); c.ctx->truncate(n); })
        // Evaluates tokens; returns (n, n_vocab) logits of all of them, or (n_vocab,) of the last.
        .def("eval", [](PyContext& c, py::handle tokens, bool all_logits) {
                 auto ids = as_tokens(tokens);
                 const int64_t n = ids.size();
                 const int64_t nv = (int64_t)c.last_logits.size();
                 py::array_t<float> out = all_logits ? py::array_t<float>({(py::ssize_t)n, (py::ssize_t)nv}) : py::array_t<float>(nv);
                 float* o = out.mutable_data();
                 const int32_t* t = ids.data();
                 {
                     py::gil_scoped_release nogil;
                     std::lock_guard<std::mutex> l(*c.busy);
                     c.ctx->eval(t, n, o, all_logits, python_interrupted);
                     std::copy(o + (all_logits ? (n - 1) * nv : 0), o + (all_logits ? n * nv : nv), c.last_logits.begin());
                 }
                 return out;
             }, py::arg("tokens"), py::arg("all_logits") = false)
        // One step of generation, one crossing: evaluate `tokens`, then sample the next token.
        // `allowed`: an optional token bitmask (constrained decoding), applied before the chain.
        .def("eval_sample", [](PyContext& c, py::handle tokens, Sampler& s, py::handle allowed) {
                 auto ids = as_tokens(tokens);
                 const int64_t n = ids.size();
                 const int32_t* t = ids.data();
                 const mask_array mask = as_mask(allowed, (int64_t)c.last_logits.size());
                 const uint32_t* m = allowed.is_none() ? nullptr : mask.data();
                 int32_t next;
                 {
                     py::gil_scoped_release nogil;
                     std::lock_guard<std::mutex> l(*c.busy);
                     c.ctx->eval(t, n, c.last_logits.data(), false, python_interrupted);
                     for (int64_t i = 0; i < n; ++i) s.accept(t[i]);
                     next = s.sample(c.last_logits.data(), m);
                 }
                 return next;
             }, py::arg("tokens"), py::arg("sampler"), py::arg("allowed") = py::none())
        // n greedy decode steps entirely in C++ (engine-level decode speed, allocation checks):
        // feeds `token`, then each argmax. Returns the generated ids.
        .def("decode_steps", [](PyContext& c, int32_t token, int n) {
                 std::vector<int32_t> out(n > 0 ? n : 0);
                 {
                     py::gil_scoped_release nogil;
                     std::lock_guard<std::mutex> l(*c.busy);
                     const float* lg = c.last_logits.data();
                     for (int i = 0; i < n; ++i) {
                         c.ctx->eval(&token, 1, c.last_logits.data(), false, python_interrupted);
                         token = (int32_t)(std::max_element(lg, lg + c.last_logits.size()) - lg);
                         out[i] = token;
                     }
                 }
                 return out;
             }, py::arg("token"), py::arg("n"))
        .def("last_logits", [](PyContext& c) { return py::array_t<float>(c.last_logits.size(), c.last_logits.data()); })
        // Continuous batching: one step for several sequences in one forward pass (this Context's
        // pool and scratch): feeds tokens[i] to contexts[i] and samples its next token with
        // samplers[i] (masks[i]: an allowed-token bitmask or None). Returns the sampled ids.
        .def("decode_batch", [](PyContext& lead, const std::vector<PyContext*>& seqs, py::handle tokens,
                                const std::vector<Sampler*>& samplers, py::list masks) {
                 auto ids = as_tokens(tokens);
                 const int64_t n = (int64_t)seqs.size();
                 const int64_t nv = (int64_t)lead.last_logits.size();
                 if (ids.size() != n || (int64_t)samplers.size() != n || (int64_t)masks.size() != n)
                     fail(ErrorKind::invalid_argument, "decode_batch: contexts, tokens, samplers and masks must have one entry each");
                 std::vector<mask_array> mask_arrays;
                 std::vector<const uint32_t*> mask_ptrs(n, nullptr);
                 mask_arrays.reserve(n);
                 for (int64_t i = 0; i < n; ++i) {
                     if (!seqs[i] || !samplers[i]) fail(ErrorKind::invalid_argument, "decode_batch: None in contexts or samplers");
                     if (samplers[i]->n_vocab() != nv) fail(ErrorKind::invalid_argument, "decode_batch: a sampler of another vocabulary");
                     mask_arrays.push_back(as_mask(masks[i], nv));
                     if (!masks[i].is_none()) mask_ptrs[i] = mask_arrays.back().data();
                     for (int64_t j = 0; j < i; ++j)
                         if (seqs[j] == seqs[i]) fail(ErrorKind::invalid_argument, "decode_batch: a Context appears twice");
                 }
                 std::vector<Context*> ctxs(n);
                 for (int64_t i = 0; i < n; ++i) ctxs[i] = seqs[i]->ctx.get();
                 std::vector<int32_t> next(n);
                 const int32_t* t = ids.data();
                 {
                     py::gil_scoped_release nogil;
                     // Lock every sequence (and the lead) in address order: no deadlock with other callers.
                     std::vector<std::mutex*> locks;
                     // (Contexts that share a scratch share their lock: each lock is taken once.)
                     for (auto* s : seqs) locks.push_back(s->busy.get());
                     locks.push_back(lead.busy.get());
                     std::sort(locks.begin(), locks.end());
                     locks.erase(std::unique(locks.begin(), locks.end()), locks.end());
                     for (auto* mx : locks) mx->lock();
                     struct Unlock {
                         std::vector<std::mutex*>& v;
                         ~Unlock() { for (auto* mx : v) mx->unlock(); }
                     } unlock{locks};
                     std::vector<float>& logits = lead.batch_logits;   // under lead.busy
                     if (logits.size() < (size_t)n * nv) logits.resize((size_t)n * nv);
                     lead.ctx->decode_batch(ctxs.data(), t, n, logits.data(), python_interrupted);
                     for (int64_t i = 0; i < n; ++i) {
                         std::copy(logits.begin() + i * nv, logits.begin() + (i + 1) * nv, seqs[i]->last_logits.begin());
                         samplers[i]->accept(t[i]);
                         next[i] = samplers[i]->sample(seqs[i]->last_logits.data(), mask_ptrs[i]);
                     }
                 }
                 return next;
             }, py::arg("contexts"), py::arg("tokens"), py::arg("samplers"), py::arg("masks"));

    py::class_<Sampler>(m, "Sampler")
        .def(py::init([](int n_vocab, float temperature, int top_k, float top_p, float min_p, float repeat_penalty,
                         float presence_penalty, float frequency_penalty, int penalty_last_n, uint64_t seed) {
                 SamplerParams p;
                 p.temperature = temperature; p.top_k = top_k; p.top_p = top_p; p.min_p = min_p;
                 p.repeat_penalty = repeat_penalty; p.presence_penalty = presence_penalty;
                 p.frequency_penalty = frequency_penalty; p.penalty_last_n = penalty_last_n;
                 return std::make_unique<Sampler>(n_vocab, p, seed);
             }),
             // The defaults are SamplerParams' (sampling/sampler.h), the one place they are written;
             // Python's SamplingParams reads them through sampler_defaults() below.
             py::arg("n_vocab"), py::arg("temperature") = kSamplerDefaults.temperature,
             py::arg("top_k") = kSamplerDefaults.top_k, py::arg("top_p") = kSamplerDefaults.top_p,
             py::arg("min_p") = kSamplerDefaults.min_p, py::arg("repeat_penalty") = kSamplerDefaults.repeat_penalty,
             py::arg("presence_penalty") = kSamplerDefaults.presence_penalty,
             py::arg("frequency_penalty") = kSamplerDefaults.frequency_penalty,
             py::arg("penalty_last_n") = kSamplerDefaults.penalty_last_n, py::arg("seed") = 0)
        .def("accept", &Sampler::accept)
        .def("reset", &Sampler::reset)
        .def("sample", [](Sampler& s, py::array_t<float, py::array::c_style | py::array::forcecast> logits, py::handle allowed) {
            if (logits.ndim() != 1 || logits.shape(0) != s.n_vocab())
                fail(ErrorKind::invalid_argument, "sample expects a 1-D array of n_vocab = " + std::to_string(s.n_vocab()) +
                     " logits, got " + std::to_string(logits.ndim()) + "-D of " + std::to_string(logits.size()));
            const mask_array mask = as_mask(allowed, s.n_vocab());
            return s.sample(logits.data(), allowed.is_none() ? nullptr : mask.data());
        }, py::arg("logits"), py::arg("allowed") = py::none())
        // (ids, probs) of the distribution sample() draws from (after mask, penalties, top-k/p, min-p, temperature).
        .def("distribution", [](Sampler& s, py::array_t<float, py::array::c_style | py::array::forcecast> logits, py::handle allowed) {
            if (logits.ndim() != 1 || logits.shape(0) != s.n_vocab()) fail(ErrorKind::invalid_argument, "distribution expects n_vocab logits");
            const mask_array mask = as_mask(allowed, s.n_vocab());
            std::vector<int32_t> ids(s.n_vocab());
            std::vector<float> probs(s.n_vocab());
            const int n = s.distribution(logits.data(), allowed.is_none() ? nullptr : mask.data(), ids.data(), probs.data());
            return py::make_tuple(py::array_t<int32_t>(n, ids.data()), py::array_t<float>(n, probs.data()));
        }, py::arg("logits"), py::arg("allowed") = py::none());
}

} // namespace pyllm
