// Bindings for `pyllm quantize`: threaded tensor conversion (dequantize, check, requantize, with
// optional importance weights), calibration passes through one transformer layer with its linear
// inputs' X^T X accumulated, and the GPTQ solver. Orchestration lives in pyllm/quantize/ (pipeline.py, calibration.py).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "bindings/shared.h"
#include "core/common.h"
#include "core/threadpool.h"
#include "kernels/kernels.h"
#include "model/calibrate.h"
#include "model/model.h"
#include "quant/gptq.h"
#include "quant/types.h"
#include "quant/weighted.h"

namespace py = pybind11;

namespace pyllm {

namespace {

using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using f64_array = py::array_t<double, py::array::c_style | py::array::forcecast>;
using u8_array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

Type checked_type(int id) {
    if (!type_is_known(id)) fail(ErrorKind::invalid_argument, "unknown tensor type id " + std::to_string(id));
    return (Type)id;
}

// --- conversion -----------------------------------------------------------------------------------

// src (rows, src_row_bytes) of src_type -> (rows, dst_row_bytes) of dst_type. Rows are decoded to
// floats, checked for NaN/inf (the first one found is reported with its row and column, naming
// `tensor`), and encoded with the reference quantizer, or the importance-weighted one when
// `importance` (n_per_row floats) is given and the type has one.
py::array convert_rows(const std::string& tensor, int src_id, u8_array src, int64_t n_per_row, int dst_id,
                       int n_threads, py::object importance) {
    const Type st = checked_type(src_id), dt = checked_type(dst_id);
    const TypeTraits& stt = type_traits(st);
    const TypeTraits& dtt = type_traits(dt);
    if (!stt.to_float) fail(ErrorKind::quantize, "tensor '" + tensor + "': cannot decode type " + stt.name);
    if (!dtt.from_float || dt == TYPE_Q8_1 || dt == TYPE_Q8_K)
        fail(ErrorKind::quantize, "tensor '" + tensor + "': cannot encode type " + dtt.name);
    if (n_per_row <= 0 || n_per_row % stt.block_size || n_per_row % dtt.block_size)
        fail(ErrorKind::quantize, "tensor '" + tensor + "': rows of " + std::to_string(n_per_row) + " elements do not fit " +
             stt.name + " -> " + dtt.name + " blocks");
    if (src.ndim() != 2 || (size_t)src.shape(1) != row_size(st, n_per_row))
        fail(ErrorKind::invalid_argument, "convert_rows: source bytes do not match the type and row length");
    std::vector<float> qw;
    weighted_quantize_fn weighted = nullptr;
    if (!importance.is_none()) {
        f32_array imp = importance.cast<f32_array>();
        if (imp.ndim() != 1 || imp.shape(0) != n_per_row)
            fail(ErrorKind::invalid_argument, "convert_rows: importance must have one value per column");
        qw.assign(imp.data(), imp.data() + n_per_row);
        for (float v : qw)
            if (!std::isfinite(v) || v < 0) fail(ErrorKind::quantize, "tensor '" + tensor + "': importance values must be finite and >= 0");
        weighted = weighted_quantizer(dt);
    }
    const int64_t rows = src.shape(0);
    const size_t srs = row_size(st, n_per_row), drs = row_size(dt, n_per_row);
    // This CPU's dequantizers and Q8_0 quantizer (every table has them, filled from the reference
    // where an ISA has none): bit-identical to the reference (the kernel tests hold them to it) and
    // several times faster; the other quantizers are the reference.
    const KernelTable& kt = kernels();
    const to_float_fn decode = kt.to_float[st];
    const from_float_fn encode = dt == TYPE_Q8_0 ? kt.quantize_act[TYPE_Q8_0] : dtt.from_float;
    py::array_t<uint8_t> out({(py::ssize_t)rows, (py::ssize_t)drs});
    const uint8_t* s = src.data();
    uint8_t* d = out.mutable_data();
    std::atomic<int64_t> bad_row{-1};
    int64_t bad_col = -1;
    float bad_value = 0;
    {
        py::gil_scoped_release nogil;
        ThreadPool pool(std::max(1, n_threads));
        std::vector<std::vector<float>> buf(pool.size(), std::vector<float>(n_per_row));
        const int64_t chunk = std::max<int64_t>(1, (1 << 16) / n_per_row);
        pool.parallel_for(ceil_div(rows, chunk), [&](int64_t task, int thread) {
            float* x = buf[thread].data();
            for (int64_t r = task * chunk; r < std::min(rows, (task + 1) * chunk); ++r) {
                if (bad_row.load(std::memory_order_relaxed) >= 0) return;
                decode(s + r * srs, x, n_per_row);
                // Branch-free scan first (vectorizes); NaN fails the comparison too.
                bool finite = true;
                for (int64_t c = 0; c < n_per_row; ++c) finite &= std::fabs(x[c]) <= std::numeric_limits<float>::max();
                if (!finite) {
                    for (int64_t c = 0; c < n_per_row; ++c) {
                        if (!std::isfinite(x[c])) {
                            int64_t expected = -1;
                            if (bad_row.compare_exchange_strong(expected, r)) { bad_col = c; bad_value = x[c]; }
                            return;
                        }
                    }
                }
                if (weighted) weighted(x, d + r * drs, n_per_row, qw.data());
                else encode(x, d + r * drs, n_per_row);
            }
        });
    }
    if (bad_row.load() >= 0)
        fail(ErrorKind::quantize, "tensor '" + tensor + "' holds a non-finite value (" + (std::isnan(bad_value) ? "nan" : "inf") +
             ") at row " + std::to_string(bad_row.load()) + ", column " + std::to_string(bad_col) + "; refusing to quantize it");
    return out;
}

// --- calibration -------------------------------------------------------------------------------------

// Accumulates XᵀX (or its diagonal) of the four matmul inputs of a layer.
struct HessianSink : CaptureSink {
    std::unique_ptr<HessianAccumulator> acc[4];
    void on_input(int, LinearInput which, const float* x, int64_t n_tok, int64_t k, ThreadPool& pool) override {
        const int i = (int)which;
        if (i < 4 && acc[i]) acc[i]->add(x, n_tok, pool);
    }
};

const char* const kSiteNames[4] = {"attn_qkv", "attn_output", "ffn_gate_up", "ffn_down"};

// Runs one layer over hidden ((n_seq*seq_len, n_embd) float32) and returns (hidden after the
// layer, {site: XᵀX (k, k) float64, or its diagonal (k,) when capture == "diag"}, tokens seen).
py::tuple calibrate_layer(const py::dict& cfg_dict, const py::dict& layer, f32_array hidden, int seq_len, int n_threads,
                          const std::string& capture) {
    const HParams cfg = config_from_dict(cfg_dict);
    if (capture != "none" && capture != "diag" && capture != "full")
        fail(ErrorKind::invalid_argument, "capture must be 'none', 'diag' or 'full'");
    if (hidden.ndim() != 2 || hidden.shape(1) != cfg.n_embd || seq_len < 1 || hidden.shape(0) % seq_len)
        fail(ErrorKind::invalid_argument, "calibrate_layer: hidden must be (n_seq * seq_len, n_embd) float32");
    const auto views = tensor_views(layer);
    const int64_t n_rows = hidden.shape(0);
    py::array_t<float> out({(py::ssize_t)n_rows, (py::ssize_t)cfg.n_embd});
    HessianSink sink;
    if (capture != "none") {
        const bool diag = capture == "diag";
        const int64_t ks[4] = {cfg.n_embd, (int64_t)cfg.n_head * cfg.head_dim, cfg.n_embd, cfg.n_ff};
        for (int i = 0; i < 4; ++i) sink.acc[i] = std::make_unique<HessianAccumulator>(ks[i], diag);
    }
    const float* in = hidden.data();
    float* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        run_layer(cfg, views, in, o, n_rows / seq_len, seq_len, std::max(1, n_threads),
                  capture == "none" ? nullptr : &sink, python_interrupted);
    }
    py::dict stats;
    int64_t n_samples = 0;
    for (int i = 0; i < 4; ++i) {
        if (!sink.acc[i]) continue;
        const HessianAccumulator& a = *sink.acc[i];
        std::vector<double> v = a.symmetric();
        py::array_t<double> arr = a.diag_only() ? py::array_t<double>((py::ssize_t)a.k())
                                                : py::array_t<double>({(py::ssize_t)a.k(), (py::ssize_t)a.k()});
        std::memcpy(arr.mutable_data(), v.data(), v.size() * sizeof(double));
        stats[kSiteNames[i]] = arr;
        n_samples = a.n_samples();
    }
    return py::make_tuple(out, stats, n_samples);
}

// XᵀX (k, k) float64 of x (n, k) float32, or its diagonal: the accumulator calibrate_layer uses,
// exposed for tests and tools. Rows are added in batches of `batch`; isa picks the kernel table
// ("" = the one in use).
py::array hessian(f32_array x, bool diag_only, int64_t batch, int n_threads, const std::string& isa) {
    if (x.ndim() != 2 || batch < 1) fail(ErrorKind::invalid_argument, "hessian expects a 2-D float32 array and batch >= 1");
    const int64_t n = x.shape(0), k = x.shape(1);
    const KernelTable* kt = isa.empty() ? &kernels() : kernel_table_by_name(isa.c_str());
    if (!kt) fail(ErrorKind::invalid_argument, "ISA '" + isa + "' is not available on this CPU/build");
    HessianAccumulator acc(k, diag_only);
    const float* xp = x.data();
    std::vector<double> v;
    {
        py::gil_scoped_release nogil;
        ThreadPool pool(std::max(1, n_threads));
        for (int64_t s = 0; s < n; s += batch) acc.add(xp + s * k, std::min(batch, n - s), pool, *kt);
        v = acc.symmetric();
    }
    py::array_t<double> arr = diag_only ? py::array_t<double>((py::ssize_t)k) : py::array_t<double>({(py::ssize_t)k, (py::ssize_t)k});
    std::memcpy(arr.mutable_data(), v.data(), v.size() * sizeof(double));
    return arr;
}

// --- GPTQ ----------------------------------------------------------------------------------------------

py::tuple gptq(int type_id, f32_array w, f64_array h, double damp, int block, bool act_order, bool search_scales,
               int n_threads) {
    const Type t = checked_type(type_id);
    if (!gptq_supports(t)) fail(ErrorKind::quantize, std::string("GPTQ cannot target type ") + type_traits(t).name);
    if (w.ndim() != 2 || h.ndim() != 2 || h.shape(0) != w.shape(1) || h.shape(1) != w.shape(1))
        fail(ErrorKind::invalid_argument, "gptq: w must be (rows, k) and h (k, k)");
    if (!(damp >= 0) || block < 32) fail(ErrorKind::invalid_argument, "gptq: damp must be >= 0 and block >= 32");
    const int64_t rows = w.shape(0), k = w.shape(1);
    if (k % 32) fail(ErrorKind::quantize, "GPTQ needs rows of a multiple of 32 weights");
    py::array_t<uint8_t> out({(py::ssize_t)rows, (py::ssize_t)row_size(t, k)});
    GptqOptions opt;
    opt.damp = (float)damp;
    opt.block = block;
    opt.act_order = act_order;
    opt.search_scales = search_scales;
    const float* wp = w.data();
    const double* hp = h.data();
    uint8_t* op = out.mutable_data();
    double used;
    {
        py::gil_scoped_release nogil;
        ThreadPool pool(std::max(1, n_threads));
        used = gptq_quantize(t, wp, rows, k, hp, opt, op, pool);
    }
    return py::make_tuple(out, used);
}

} // namespace

void register_quantize(py::module_& m) {
    m.def("calibrate_layer", &calibrate_layer, py::arg("config"), py::arg("layer"), py::arg("hidden"), py::arg("seq_len"),
          py::arg("n_threads") = 1, py::arg("capture") = "full");
    m.def("hessian", &hessian, py::arg("x"), py::arg("diag_only") = false, py::arg("batch") = 512, py::arg("n_threads") = 1,
          py::arg("isa") = "");
    m.def("gptq_quantize", &gptq, py::arg("type_id"), py::arg("w"), py::arg("h"), py::arg("damp") = 0.01,
          py::arg("block") = 128, py::arg("act_order") = false, py::arg("search_scales") = false, py::arg("n_threads") = 1);
    m.def("convert_rows", &convert_rows, py::arg("tensor"), py::arg("src_type"), py::arg("src"), py::arg("n_per_row"),
          py::arg("dst_type"), py::arg("n_threads") = 1, py::arg("importance") = py::none());
}

} // namespace pyllm
