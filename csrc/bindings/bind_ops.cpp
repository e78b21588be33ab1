// Direct hooks onto the model-level ops (ops/ops.h) for the numpy-reference tests: rmsnorm, rope,
// GeGLU and attention, called exactly as the forward pass calls them. Thin: shapes are checked here,
// the GIL is released around the op, nothing else happens.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "core/common.h"
#include "core/threadpool.h"
#include "kernels/kernels.h"
#include "ops/ops.h"

namespace py = pybind11;

namespace pyllm {

namespace {

using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using u16_array = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>;
using i32_array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

const KernelTable& table_named(const std::string& isa) {
    if (isa.empty()) return kernels();
    const KernelTable* t = kernel_table_by_name(isa.c_str());
    if (!t) fail(ErrorKind::invalid_argument, "ISA '" + isa + "' is not available on this CPU/build");
    return *t;
}

// x (n_tok, n) float32, w (n) -> (n_tok, n).
py::array rmsnorm_op(f32_array x, f32_array w, float eps) {
    if (x.ndim() != 2 || w.ndim() != 1 || w.shape(0) != x.shape(1)) fail(ErrorKind::invalid_argument, "rmsnorm: x (n_tok, n), w (n)");
    py::array_t<float> out({x.shape(0), x.shape(1)});
    const float *xp = x.data(), *wp = w.data();
    float* o = out.mutable_data();
    const int64_t n_tok = x.shape(0), n = x.shape(1);
    {
        py::gil_scoped_release nogil;
        rmsnorm(xp, wp, o, n_tok, n, eps);
    }
    return out;
}

// x (n_tok, n_heads*head_dim) float32 at positions pos (n_tok) int32 -> x rotated (a copy).
// Optional: freq_factors (n_rot/2) divisors, YaRN's ext_factor/n_ctx_orig, the cos/sin magnitude.
py::array rope_op(f32_array x, i32_array pos, int n_heads, int head_dim, int n_rot, bool neox, float freq_base,
                  float freq_scale, py::object freq_factors, float ext_factor, float attn_factor, int n_ctx_orig) {
    if (x.ndim() != 2 || pos.ndim() != 1 || pos.shape(0) != x.shape(0) || n_heads < 1 || head_dim < 2 ||
        x.shape(1) != (py::ssize_t)n_heads * head_dim || n_rot < 2 || n_rot > head_dim || n_rot % 2)
        fail(ErrorKind::invalid_argument, "rope: x (n_tok, n_heads*head_dim), pos (n_tok), even n_rot <= head_dim");
    const int64_t n_tok = x.shape(0);
    f32_array factors;
    RopeParams p;
    p.n_rot = n_rot;
    p.freq_base = freq_base;
    p.freq_scale = freq_scale;
    p.ext_factor = ext_factor;
    p.attn_factor = attn_factor;
    p.n_ctx_orig = n_ctx_orig;
    if (!freq_factors.is_none()) {
        factors = f32_array::ensure(freq_factors);
        if (!factors || factors.ndim() != 1 || factors.shape(0) != n_rot / 2)
            fail(ErrorKind::invalid_argument, "rope: freq_factors must hold n_rot/2 floats");
        p.freq_factors = factors.data();
    }
    if (ext_factor != 0 && n_ctx_orig < 1) fail(ErrorKind::invalid_argument, "rope: YaRN needs n_ctx_orig >= 1");
    py::array_t<float> out({x.shape(0), x.shape(1)});
    std::copy(x.data(), x.data() + x.size(), out.mutable_data());
    std::vector<float> cos_sin((size_t)n_tok * n_rot);
    const int32_t* pp = pos.data();
    float* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        rope_cache(pp, n_tok, p, cos_sin.data());
        rope(o, n_tok, (int64_t)n_heads * head_dim, n_heads, head_dim, n_rot, neox, cos_sin.data());
    }
    return out;
}

// Causal attention of q (n_tok, n_head*head_dim) at positions pos0.. over an F16 cache k, v
// (pos0 + n_tok, n_kv_head*head_dim) (f16 bits as uint16) -> (n_tok, n_head*head_dim).
// window > 0: sliding-window attention; softcap > 0: scores soft-capped (ops.h).
py::array attention_op(f32_array q, u16_array k, u16_array v, int n_head, int n_kv_head, int head_dim, int64_t pos0,
                       float scale, int n_threads, const std::string& isa, int64_t window, float softcap) {
    if (q.ndim() != 2 || k.ndim() != 2 || v.ndim() != 2 || n_head < 1 || n_kv_head < 1 || head_dim < 1 ||
        n_head % n_kv_head || pos0 < 0 || q.shape(1) != (py::ssize_t)n_head * head_dim ||
        k.shape(1) != (py::ssize_t)n_kv_head * head_dim || k.shape(0) != v.shape(0) || k.shape(1) != v.shape(1) ||
        k.shape(0) != pos0 + q.shape(0) || q.shape(0) < 1 || window < 0 || !(softcap >= 0))
        fail(ErrorKind::invalid_argument, "attention: q (n_tok, n_head*head_dim), k and v (pos0+n_tok, n_kv_head*head_dim), "
             "n_head a multiple of n_kv_head");
    const KernelTable& kt = table_named(isa);
    const int64_t n_tok = q.shape(0);
    py::array_t<float> out({q.shape(0), q.shape(1)});
    const int threads = std::max(1, n_threads);
    std::vector<float> scratch(attention_scratch_floats(threads, n_head, n_kv_head, head_dim));
    const float* qp = q.data();
    const uint16_t *kp = k.data(), *vp = v.data();
    float* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        ThreadPool pool(threads);
        KvLayerView kv;  // an F16 cache: rows of n_kv_head*head_dim halves
        kv.k = reinterpret_cast<const uint8_t*>(kp);
        kv.v = reinterpret_cast<const uint8_t*>(vp);
        kv.k_row_bytes = kv.v_row_bytes = (size_t)n_kv_head * head_dim * sizeof(uint16_t);
        attention(pool, kt, qp, (int64_t)n_head * head_dim, kv, o,
                  (int64_t)n_head * head_dim, n_tok, pos0, n_head, n_kv_head, head_dim, scale, scratch.data(), window,
                  softcap);
    }
    return out;
}

// gate (n) float32, up (n) -> gelu_tanh(gate) * up as the forward pass computes it (ggml's f16 table).
py::array geglu_op(f32_array gate, f32_array up) {
    if (gate.ndim() != 1 || up.ndim() != 1 || gate.shape(0) != up.shape(0)) fail(ErrorKind::invalid_argument, "geglu_tanh: two 1-D arrays of one length");
    py::array_t<float> out(gate.shape(0));
    std::copy(gate.data(), gate.data() + gate.size(), out.mutable_data());
    geglu_tanh(out.mutable_data(), up.data(), gate.shape(0));
    return out;
}

} // namespace

void register_ops(py::module_& m) {
    m.def("rmsnorm", &rmsnorm_op, py::arg("x"), py::arg("w"), py::arg("eps"));
    m.def("rope", &rope_op, py::arg("x"), py::arg("pos"), py::arg("n_heads"), py::arg("head_dim"), py::arg("n_rot"),
          py::arg("neox"), py::arg("freq_base") = 10000.0f, py::arg("freq_scale") = 1.0f, py::arg("freq_factors") = py::none(),
          py::arg("ext_factor") = 0.0f, py::arg("attn_factor") = 1.0f, py::arg("n_ctx_orig") = 0);
    m.def("geglu_tanh", &geglu_op, py::arg("gate"), py::arg("up"));
    m.def("attention_f16", &attention_op, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n_head"), py::arg("n_kv_head"),
          py::arg("head_dim"), py::arg("pos0"), py::arg("scale"), py::arg("n_threads") = 1, py::arg("isa") = "",
          py::arg("window") = 0, py::arg("softcap") = 0.0f);
}

} // namespace pyllm
