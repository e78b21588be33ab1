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
    std::mutex busy;               // one evaluation at a time, whatever Python threads do
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
        .def(py::init([](py::object model, int n_ctx, int n_batch, int n_threads, const std::string& type_k,
                         const std::string& type_v) {
                 auto& pm = model.cast<PyModel&>();
                 auto pc = std::make_unique<PyContext>();
                 pc->ctx = std::make_unique<Context>(pm.model, n_ctx, n_batch, n_threads, kv_cache_type_from_name(type_k),
                                                     kv_cache_type_from_name(type_v));
                 pc->model_ref = model;
                 pc->last_logits.assign(pm.model->config().n_vocab, 0.0f);
                 return pc;
             }),
             py::arg("model"), py::arg("n_ctx"), py::arg("n_batch") = 512, py::arg("n_threads") = 0,
             py::arg("cache_type_k") = "f16", py::arg("cache_type_v") = "f16")
        .def_property_readonly("n_ctx", [](PyContext& c) { return c.ctx->n_ctx(); })
        .def_property_readonly("kv_cache_bytes", [](PyContext& c) { return c.ctx->kv_cache().bytes(); })
        .def_property_readonly("n_past", [](PyContext& c) { return c.ctx->n_past(); })
        .def_property_readonly("n_threads", [](PyContext& c) { return c.ctx->n_threads(); })
        .def("truncate", [](PyContext& c, int64_t n) { std::lock_guard<std::mutex> l(c.busy); c.ctx->truncate(n); })
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
                     std::lock_guard<std::mutex> l(c.busy);
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
                     std::lock_guard<std::mutex> l(c.busy);
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
                     std::lock_guard<std::mutex> l(c.busy);
                     const float* lg = c.last_logits.data();
                     for (int i = 0; i < n; ++i) {
                         c.ctx->eval(&token, 1, c.last_logits.data(), false, python_interrupted);
                         token = (int32_t)(std::max_element(lg, lg + c.last_logits.size()) - lg);
                         out[i] = token;
                     }
                 }
                 return out;
             }, py::arg("token"), py::arg("n"))
        .def("last_logits", [](PyContext& c) { return py::array_t<float>(c.last_logits.size(), c.last_logits.data()); });

    py::class_<Sampler>(m, "Sampler")
        .def(py::init([](int n_vocab, float temperature, int top_k, float top_p, float min_p, float repeat_penalty,
                         float presence_penalty, float frequency_penalty, int penalty_last_n, uint64_t seed) {
                 SamplerParams p;
                 p.temperature = temperature; p.top_k = top_k; p.top_p = top_p; p.min_p = min_p;
                 p.repeat_penalty = repeat_penalty; p.presence_penalty = presence_penalty;
                 p.frequency_penalty = frequency_penalty; p.penalty_last_n = penalty_last_n;
                 return std::make_unique<Sampler>(n_vocab, p, seed);
             }),
             py::arg("n_vocab"), py::arg("temperature") = 0.8f, py::arg("top_k") = 40, py::arg("top_p") = 0.95f,
             py::arg("min_p") = 0.05f, py::arg("repeat_penalty") = 1.0f, py::arg("presence_penalty") = 0.0f,
             py::arg("frequency_penalty") = 0.0f, py::arg("penalty_last_n") = 64, py::arg("seed") = 0)
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
