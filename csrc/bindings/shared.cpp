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

ModelConfig config_from_dict(const py::dict& d) {
    // The fields are hparams.h's table: nothing here restates them.
    ModelConfig c;
    c.arch = d["arch"].cast<std::string>();
    for (const HParam& h : hparam_table()) {
        if (!d.contains(h.field)) fail(ErrorKind::invalid_argument, std::string("config is missing '") + h.field + "'");
        if (h.is_float) c.*h.float_member = d[h.field].cast<float>();
        else c.*h.int_member = d[h.field].cast<int>();
    }
    return c;
}

py::list hparam_table_for_python() {
    py::list rows;
    for (const HParam& h : hparam_table()) {
        py::dict r;
        r["field"] = h.field; r["key"] = h.key; r["is_float"] = h.is_float; r["required"] = h.required;
        r["fallback"] = h.fallback; r["from_field"] = h.from_field; r["choices"] = h.choices;
        r["lo"] = h.lo; r["hi"] = h.hi;
        rows.append(r);
    }
    return rows;
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
