// Conversions more than one binding area needs: the model config dict, tensor-view dicts, and
// the Ctrl-C poll used while compute runs with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings/shared.h"
#include "core/common.h"

namespace py = pybind11;

namespace pyllm {

bool python_interrupted() {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) {
        PyErr_Clear();
        return true;
    }
    return false;
}

LlamaConfig config_from_dict(const py::dict& d) {
    LlamaConfig c;
    c.arch = d["arch"].cast<std::string>();
    c.n_vocab = d["n_vocab"].cast<int>();
    c.n_embd = d["n_embd"].cast<int>();
    c.n_layer = d["n_layer"].cast<int>();
    c.n_head = d["n_head"].cast<int>();
    c.n_head_kv = d["n_head_kv"].cast<int>();
    c.n_ff = d["n_ff"].cast<int>();
    c.head_dim = d["head_dim"].cast<int>();
    c.n_rot = d["n_rot"].cast<int>();
    c.rms_eps = d["rms_eps"].cast<float>();
    c.rope_freq_base = d["rope_freq_base"].cast<float>();
    c.rope_freq_scale = d["rope_freq_scale"].cast<float>();
    c.rope_neox = d["rope_neox"].cast<bool>();
    c.n_ctx_train = d["n_ctx_train"].cast<int>();
    return c;
}

std::unordered_map<std::string, TensorView> tensor_views(const py::dict& tensors) {
    std::unordered_map<std::string, TensorView> views;
    for (auto item : tensors) {
        const std::string name = item.first.cast<std::string>();
        py::tuple t = item.second.cast<py::tuple>();  // (type_id, ne list, uint8 buffer)
        const int type = t[0].cast<int>();
        if (!type_is_known(type)) fail(ErrorKind::unsupported, "tensor '" + name + "' has unknown type id " + std::to_string(type));
        auto ne = t[1].cast<std::vector<int64_t>>();
        if (ne.empty() || ne.size() > 4) fail(ErrorKind::gguf, "tensor '" + name + "' has a bad number of dimensions");
        py::buffer_info buf = t[2].cast<py::buffer>().request();
        TensorView v{(Type)type, (int)ne.size(), {1, 1, 1, 1}, static_cast<const uint8_t*>(buf.ptr), (uint64_t)(buf.size * buf.itemsize)};
        for (size_t i = 0; i < ne.size(); ++i) v.ne[i] = ne[i];
        const uint64_t need = row_size(v.type, v.ne[0]) * (uint64_t)(v.ne[1] * v.ne[2] * v.ne[3]);
        if (v.ne[0] % type_traits(v.type).block_size || need != v.nbytes)
            fail(ErrorKind::gguf, "tensor '" + name + "': buffer of " + std::to_string(v.nbytes) +
                 " bytes does not match its shape and type");
        views.emplace(name, v);
    }
    return views;
}

} // namespace pyllm
