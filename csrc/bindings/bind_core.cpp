// System info, the type table, and direct hooks onto the kernels for tests and tools.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "bindings/bindings.h"
#include "core/common.h"
#include "core/threadpool.h"
#include "kernels/kernels.h"
#include "ops/ops.h"
#include "quant/gptq.h"
#include "quant/types.h"
#include "quant/weighted.h"

namespace py = pybind11;

namespace pyllm {

namespace {

Type checked_type(int id) {
    if (!type_is_known(id)) fail(ErrorKind::invalid_argument, "unknown tensor type id " + std::to_string(id));
    return (Type)id;
}

const KernelTable& checked_table(const std::string& isa) {
    if (isa.empty()) return kernels();
    const KernelTable* t = kernel_table_by_name(isa.c_str());
    if (!t) fail(ErrorKind::invalid_argument, "ISA '" + isa + "' is not available on this CPU/build");
    return *t;
}

using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using u8_array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// (rows, n) float32 -> (rows, row_size) uint8, with the reference quantizer.
py::array quantize(int type_id, f32_array x) {
    const Type t = checked_type(type_id);
    const TypeTraits& tt = type_traits(t);
    if (x.ndim() != 2) fail(ErrorKind::invalid_argument, "quantize expects a 2-D float32 array");
    const int64_t rows = x.shape(0), n = x.shape(1);
    if (n % tt.block_size) fail(ErrorKind::invalid_argument, std::string(tt.name) + " needs rows of a multiple of " + std::to_string(tt.block_size) + " elements, got " + std::to_string(n));
    if (!tt.from_float) fail(ErrorKind::invalid_argument, std::string("no quantizer for ") + tt.name);
    const size_t rs = row_size(t, n);
    py::array_t<uint8_t> out({(py::ssize_t)rows, (py::ssize_t)rs});
    const float* src = x.data();
    uint8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        for (int64_t r = 0; r < rows; ++r) tt.from_float(src + r * n, dst + r * rs, n);
    }
    return out;
}

// (rows, row_size) uint8 -> (rows, n) float32, with the given ISA's dequantizer.
py::array dequantize(int type_id, u8_array q, int64_t n, const std::string& isa) {
    const Type t = checked_type(type_id);
    const TypeTraits& tt = type_traits(t);
    if (q.ndim() != 2) fail(ErrorKind::invalid_argument, "dequantize expects a 2-D uint8 array");
    if (n <= 0 || n % tt.block_size) fail(ErrorKind::invalid_argument, "bad row length");
    const size_t rs = row_size(t, n);
    if ((size_t)q.shape(1) != rs) fail(ErrorKind::invalid_argument, "row bytes do not match the type and row length");
    const KernelTable& k = checked_table(isa);
    if (!k.to_float[t]) fail(ErrorKind::invalid_argument, std::string("no dequantizer for ") + tt.name);
    const int64_t rows = q.shape(0);
    py::array_t<float> out({(py::ssize_t)rows, (py::ssize_t)n});
    const uint8_t* src = q.data();
    float* dst = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        for (int64_t r = 0; r < rows; ++r) k.to_float[t](src + r * rs, dst + r * n, n);
    }
    return out;
}

// W (rows, row_size) uint8 of weight type, X (n_tok, k) float32 -> (n_tok, rows) float32,
// quantizing X with the ISA's activation quantizer exactly as the model's matmul does.
py::array matmul(const std::string& isa, int type_id, u8_array w, int64_t k, f32_array x) {
    const Type t = checked_type(type_id);
    const TypeTraits& tt = type_traits(t);
    const KernelTable& kt = checked_table(isa);
    if (w.ndim() != 2 || x.ndim() != 2 || x.shape(1) != k) fail(ErrorKind::invalid_argument, "matmul: bad shapes");
    if (k % tt.block_size) fail(ErrorKind::invalid_argument, "matmul: k not a multiple of the block size");
    const size_t w_rs = row_size(t, k);
    if ((size_t)w.shape(1) != w_rs) fail(ErrorKind::invalid_argument, "matmul: weight row bytes mismatch");
    if (!kt.gemm[t]) fail(ErrorKind::invalid_argument, std::string("matmul: no kernel for ") + tt.name);
    const Type at = tt.vec_dot_type;
    const size_t a_rs = row_size(at, k);
    const int64_t rows = w.shape(0), n_tok = x.shape(0);
    py::array_t<float> out({(py::ssize_t)n_tok, (py::ssize_t)rows});
    std::vector<uint8_t> act(a_rs * n_tok + 64);
    const float* xs = x.data();
    const uint8_t* ws = w.data();
    float* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        for (int64_t i = 0; i < n_tok; ++i) kt.quantize_act[at](xs + i * k, act.data() + i * a_rs, k);
        kt.gemm[t](k, ws, w_rs, rows, act.data(), a_rs, n_tok, o, rows);
    }
    return out;
}

// matmul over the x8 layout: W repacked with the ISA's repacker, then its gemm_x8 on the whole
// groups and the plain gemm on the tail rows, as the model's matmul runs a repacked weight.
// With packed=true, w is already in the x8 layout (from repack_x8), so benchmarks time the gemm alone.
py::array matmul_x8(const std::string& isa, int type_id, u8_array w, int64_t k, f32_array x, bool packed) {
    const Type t = checked_type(type_id);
    const TypeTraits& tt = type_traits(t);
    const KernelTable& kt = checked_table(isa);
    if (w.ndim() != 2 || x.ndim() != 2 || x.shape(1) != k || k <= 0) fail(ErrorKind::invalid_argument, "matmul_x8: bad shapes");
    if (k % tt.block_size) fail(ErrorKind::invalid_argument, "matmul_x8: k not a multiple of the block size");
    const size_t w_rs = row_size(t, k);
    if ((size_t)w.shape(1) != w_rs) fail(ErrorKind::invalid_argument, "matmul_x8: weight row bytes mismatch");
    if (!kt.gemm_x8[t] || !kt.repack_x8[t]) fail(ErrorKind::invalid_argument, std::string("matmul_x8: ") + kt.isa + " does not repack " + tt.name);
    const Type at = tt.vec_dot_type;
    const size_t a_rs = row_size(at, k);
    const int64_t rows = w.shape(0), n_tok = x.shape(0), full = rows / kX8Rows * kX8Rows;
    py::array_t<float> out({(py::ssize_t)n_tok, (py::ssize_t)rows});
    std::vector<uint8_t> act(a_rs * n_tok + 64), buf(packed ? 0 : w_rs * rows + 64);
    const float* xs = x.data();
    float* o = out.mutable_data();
    const uint8_t* wx8 = packed ? w.data() : buf.data();
    {
        py::gil_scoped_release nogil;
        if (!packed) kt.repack_x8[t](w.data(), w_rs, rows, k, buf.data());
        for (int64_t i = 0; i < n_tok; ++i) kt.quantize_act[at](xs + i * k, act.data() + i * a_rs, k);
        if (full) kt.gemm_x8[t](k, wx8, w_rs, full, act.data(), a_rs, n_tok, o, rows);
        if (rows > full) kt.gemm[t](k, wx8 + full * w_rs, w_rs, rows - full, act.data(), a_rs, n_tok, o + full, rows);
    }
    return out;
}

// (rows, row_size) plain rows -> the same bytes in the x8 layout, by the ISA's repacker.
py::array repack_x8(const std::string& isa, int type_id, u8_array w, int64_t k) {
    const Type t = checked_type(type_id);
    const KernelTable& kt = checked_table(isa);
    if (!kt.repack_x8[t]) fail(ErrorKind::invalid_argument, std::string("repack_x8: ") + kt.isa + " does not repack " + type_traits(t).name);
    if (w.ndim() != 2 || k <= 0 || k % 32 || (size_t)w.shape(1) != row_size(t, k)) fail(ErrorKind::invalid_argument, "repack_x8: bad shapes");
    py::array_t<uint8_t> out({w.shape(0), w.shape(1)});
    kt.repack_x8[t](w.data(), row_size(t, k), w.shape(0), k, out.mutable_data());
    return out;
}

// (rows, row_size) plain weights -> (rows, n) float32 through the x8 layout: repacked, then each
// row read back with x8_row_to_float (the embedding lookup of a repacked matrix).
py::array dequantize_x8(int type_id, u8_array q, int64_t n) {
    const Type t = checked_type(type_id);
    const KernelTable& ref = *kernel_table_ref();
    if (!ref.repack_x8[t]) fail(ErrorKind::invalid_argument, std::string("no x8 layout for ") + type_traits(t).name);
    if (q.ndim() != 2 || n <= 0 || n % 32 || (size_t)q.shape(1) != row_size(t, n)) fail(ErrorKind::invalid_argument, "dequantize_x8: bad shapes");
    const int64_t rows = q.shape(0);
    const size_t rs = row_size(t, n);
    std::vector<uint8_t> packed(rs * rows + 64);
    ref.repack_x8[t](q.data(), rs, rows, n, packed.data());
    py::array_t<float> out({(py::ssize_t)rows, (py::ssize_t)n});
    for (int64_t r = 0; r < rows; ++r) x8_row_to_float(t, packed.data(), rs, rows, r, n, out.mutable_data() + r * n);
    return out;
}

// (rows, n) float32 -> (rows, row_size) uint8 with the ISA's activation quantizer (tests compare ISAs).
py::array quantize_act(const std::string& isa, int type_id, f32_array x) {
    const Type t = checked_type(type_id);
    const KernelTable& kt = checked_table(isa);
    if (x.ndim() != 2) fail(ErrorKind::invalid_argument, "quantize_act expects a 2-D float32 array");
    const int64_t rows = x.shape(0), n = x.shape(1);
    const TypeTraits& tt = type_traits(t);
    if (n % tt.block_size) fail(ErrorKind::invalid_argument, std::string(tt.name) + " needs rows of a multiple of " + std::to_string(tt.block_size) + " elements");
    if (!kt.quantize_act[t]) fail(ErrorKind::invalid_argument, std::string("no activation quantizer for ") + tt.name);
    const size_t rs = row_size(t, n);
    py::array_t<uint8_t> out({(py::ssize_t)rows, (py::ssize_t)rs});
    const float* src = x.data();
    uint8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        for (int64_t r = 0; r < rows; ++r) kt.quantize_act[t](src + r * n, dst + r * rs, n);
    }
    return out;
}

// The F16 attention helpers of one ISA, for tests.
using u16_array = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>;

// out (rows, d) = acc + p (rows, nb) . v (nb, d f16): attention's P.V step.
py::array pv_f16(const std::string& isa, f32_array p, u16_array v, f32_array acc) {
    if (p.ndim() != 2 || v.ndim() != 2 || acc.ndim() != 2 || p.shape(1) != v.shape(0) || acc.shape(0) != p.shape(0) ||
        acc.shape(1) != v.shape(1))
        fail(ErrorKind::invalid_argument, "pv_f16: p (rows, nb), v (nb, d) and acc (rows, d) must agree");
    py::array_t<float> out({acc.shape(0), acc.shape(1)});
    std::memcpy(out.mutable_data(), acc.data(), acc.size() * sizeof(float));
    checked_table(isa).pv_f16(p.shape(0), p.shape(1), v.shape(1), p.data(), p.shape(1), v.data(), v.shape(1), out.mutable_data());
    return out;
}

// The same with V in f32 (a quantized V cache's block, dequantized).
py::array pv_f32(const std::string& isa, f32_array p, f32_array v, f32_array acc) {
    if (p.ndim() != 2 || v.ndim() != 2 || acc.ndim() != 2 || p.shape(1) != v.shape(0) || acc.shape(0) != p.shape(0) ||
        acc.shape(1) != v.shape(1))
        fail(ErrorKind::invalid_argument, "pv_f32: p (rows, nb), v (nb, d) and acc (rows, d) must agree");
    py::array_t<float> out({acc.shape(0), acc.shape(1)});
    std::memcpy(out.mutable_data(), acc.data(), acc.size() * sizeof(float));
    checked_table(isa).pv_f32(p.shape(0), p.shape(1), v.shape(1), p.data(), p.shape(1), v.data(), v.shape(1), out.mutable_data());
    return out;
}

// Attention of q (n_tok, n_head*head_dim) against K and V rows (n_pos, n_kv_head*head_dim), stored
// in a one-layer cache of the given types; the tokens are the last n_tok positions. For tests.
py::array attention_test(const std::string& isa, f32_array q, f32_array k, f32_array v, int n_head, int n_kv_head,
                         const std::string& type_k, const std::string& type_v, int n_threads) {
    if (q.ndim() != 2 || k.ndim() != 2 || v.ndim() != 2 || n_head < 1 || n_kv_head < 1 || n_head % n_kv_head ||
        q.shape(1) % n_head || k.shape(0) != v.shape(0) || k.shape(1) != v.shape(1) || q.shape(0) > k.shape(0) ||
        k.shape(1) != q.shape(1) / n_head * n_kv_head || q.shape(0) < 1)
        fail(ErrorKind::invalid_argument, "attention: q (n_tok, n_head*hd), k and v (n_pos, n_kv_head*hd) must agree");
    const KernelTable& kt = checked_table(isa);
    const int hd = (int)(q.shape(1) / n_head);
    const int64_t n_pos = k.shape(0), n_tok = q.shape(0);
    KvCache cache(kv_cache_type_from_name(type_k), kv_cache_type_from_name(type_v), 1, n_pos, n_kv_head, hd);
    for (int64_t p = 0; p < n_pos; ++p) cache.store(kt, 0, p, k.data() + p * k.shape(1), v.data() + p * v.shape(1));
    ThreadPool pool(n_threads);
    std::vector<float> scratch(attention_scratch_floats(pool.size(), n_head, n_kv_head, hd));
    py::array_t<float> out({q.shape(0), q.shape(1)});
    {
        py::gil_scoped_release nogil;
        attention(pool, kt, q.data(), q.shape(1), cache.layer(0), out.mutable_data(), q.shape(1), n_tok, n_pos - n_tok,
                  n_head, n_kv_head, hd, 1.0f / std::sqrt((float)hd), scratch.data());
    }
    return out;
}

// (s', sum): s'[j] = exp(s[j] - m), attention's softmax step.
py::tuple exp_sum(const std::string& isa, f32_array s, float m) {
    if (s.ndim() != 1) fail(ErrorKind::invalid_argument, "exp_sum: s must be 1-D");
    py::array_t<float> out(s.shape(0));
    std::memcpy(out.mutable_data(), s.data(), s.shape(0) * sizeof(float));
    const float sum = checked_table(isa).exp_sum(out.mutable_data(), s.shape(0), m);
    return py::make_tuple(out, sum);
}

py::array swiglu(const std::string& isa, f32_array gate, f32_array up) {
    if (gate.ndim() != 1 || up.ndim() != 1 || gate.shape(0) != up.shape(0)) fail(ErrorKind::invalid_argument, "swiglu: gate and up must be 1-D of one length");
    py::array_t<float> out(gate.shape(0));
    std::memcpy(out.mutable_data(), gate.data(), gate.shape(0) * sizeof(float));
    checked_table(isa).swiglu(out.mutable_data(), up.data(), gate.shape(0));
    return out;
}

py::array f32_to_f16(const std::string& isa, f32_array x) {
    if (x.ndim() != 1) fail(ErrorKind::invalid_argument, "f32_to_f16: x must be 1-D");
    py::array_t<uint16_t> out(x.shape(0));
    checked_table(isa).f32_to_f16(x.data(), out.mutable_data(), x.shape(0));
    return out;
}

} // namespace

void register_core(py::module_& m) {
    m.def("cpu_features", [] { return std::string(cpu_features()); });
    m.def("isa", [] { return std::string(kernels().isa); }, "The kernel table in use.");
    m.def("available_isas", [] {
        int n = 0;
        const char* const* names = available_isas(&n);
        std::vector<std::string> out(names, names + n);
        return out;
    });
    m.def("default_threads", &ThreadPool::default_threads);
    // The type-traits table (quant/types.cpp) is the one source of block sizes and capabilities:
    // Python asks here rather than restating them.
    m.def("type_info", [](int id) {
        const Type t = checked_type(id);
        const TypeTraits& tt = type_traits(t);
        py::dict d;
        d["id"] = id; d["name"] = tt.name; d["block_size"] = tt.block_size; d["type_size"] = tt.type_size;
        d["is_quantized"] = tt.is_quantized; d["is_float"] = !tt.is_quantized;
        d["vec_dot_type"] = (int)tt.vec_dot_type;
        d["has_quantizer"] = tt.from_float != nullptr;
        d["is_weight"] = !tt.activation_only;               // false: Q8_1, Q8_K (activations only)
        d["gptq"] = gptq_supports(t);                       // GPTQ can target it (quant/gptq.h)
        d["weighted"] = weighted_quantizer(t) != nullptr;    // importance-weighted rounding (quant/weighted.h)
        return d;
    }, "One row of the type-traits table: name, block_size, type_size, is_quantized, is_float, "
       "vec_dot_type, has_quantizer, is_weight, gptq, weighted.");
    m.def("type_from_name", [](const std::string& name) {
        Type t = type_from_name(name.c_str());
        if (t == TYPE_COUNT) fail(ErrorKind::invalid_argument, "unknown tensor type name '" + name + "'");
        return (int)t;
    });
    m.def("known_types", [] {
        std::vector<int> ids;
        for (int i = 0; i < TYPE_COUNT; ++i) if (type_is_known(i)) ids.push_back(i);
        return ids;
    });
    m.def("quantize", &quantize, py::arg("type_id"), py::arg("x"));
    m.def("dequantize", &dequantize, py::arg("type_id"), py::arg("q"), py::arg("n"), py::arg("isa") = "");
    m.def("quantize_act", &quantize_act, py::arg("isa"), py::arg("type_id"), py::arg("x"));
    m.def("pv_f16", &pv_f16, py::arg("isa"), py::arg("p"), py::arg("v"), py::arg("acc"));
    m.def("attention", &attention_test, py::arg("isa"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n_head"),
          py::arg("n_kv_head"), py::arg("cache_type_k") = "f16", py::arg("cache_type_v") = "f16", py::arg("n_threads") = 1);
    m.def("exp_sum", &exp_sum, py::arg("isa"), py::arg("s"), py::arg("m"));
    m.def("pv_f32", &pv_f32, py::arg("isa"), py::arg("p"), py::arg("v"), py::arg("acc"));
    m.def("swiglu", &swiglu, py::arg("isa"), py::arg("gate"), py::arg("up"));
    m.def("f32_to_f16", &f32_to_f16, py::arg("isa"), py::arg("x"));
    m.def("matmul", static_cast<py::array (*)(const std::string&, int, u8_array, int64_t, f32_array)>(&matmul), py::arg("isa"), py::arg("type_id"), py::arg("w"), py::arg("k"), py::arg("x"));
    m.def("matmul_x8", &matmul_x8, py::arg("isa"), py::arg("type_id"), py::arg("w"), py::arg("k"), py::arg("x"),
          py::arg("packed") = false);
    m.def("repack_x8", &repack_x8, py::arg("isa"), py::arg("type_id"), py::arg("w"), py::arg("k"));
    m.def("dequantize_x8", &dequantize_x8, py::arg("type_id"), py::arg("q"), py::arg("n"));
    m.def("x8_types", [](const std::string& isa) {
        const KernelTable& kt = checked_table(isa);
        std::vector<int> ids;
        for (int i = 0; i < TYPE_COUNT; ++i)
            if (kt.gemm_x8[i] && kt.repack_x8[i]) ids.push_back(i);
        return ids;
    }, py::arg("isa"), "Weight types the ISA repacks to the x8 layout.");
}

} // namespace pyllm
