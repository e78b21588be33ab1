// Conversions more than one binding area needs: the model config dict, tensor-view dicts, and
// the Ctrl-C poll used while compute runs with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
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

HParams config_from_dict(const py::dict& d) {
    // Field by field from the one table (model/hparams.h); a key the dict lacks keeps its default.
    HParams c;
    for (const HParamField& f : hparam_fields()) {
        if (!d.contains(f.name)) continue;
        py::handle v = d[f.name];
        try {
            switch (f.kind) {
            case HParamField::i32: c.*f.i = v.cast<int>(); break;
            case HParamField::f32: c.*f.f = v.cast<float>(); break;
            case HParamField::boolean: c.*f.b = v.cast<bool>(); break;
            case HParamField::string: c.*f.s = v.cast<std::string>(); break;
            }
        } catch (const py::cast_error&) {
            fail(ErrorKind::invalid_argument, std::string("model config field '") + f.name + "' has a value of the wrong type or range");
        }
    }
    return c;
}

py::dict dict_from_hparams(const HParams& c) {
    py::dict d;
    for (const HParamField& f : hparam_fields()) {
        switch (f.kind) {
        case HParamField::i32: d[f.name] = c.*f.i; break;
        case HParamField::f32: d[f.name] = c.*f.f; break;
        case HParamField::boolean: d[f.name] = c.*f.b; break;
        case HParamField::string: d[f.name] = c.*f.s; break;
        }
    }
    return d;
}

Metadata metadata_for_hparams(const py::dict& md) {
    // Only what the key table can ask for: general.architecture, the "{arch}." keys, and the
    // token list's length (not its 262k strings).
    Metadata out;
    std::string prefix;
    if (md.contains("general.architecture") && py::isinstance<py::str>(md["general.architecture"]))
        prefix = md["general.architecture"].cast<std::string>() + ".";
    for (auto item : md) {
        if (!py::isinstance<py::str>(item.first)) continue;
        const std::string key = item.first.cast<std::string>();
        const bool wanted = key == "general.architecture" || key == "tokenizer.ggml.tokens" ||
                            (!prefix.empty() && key.compare(0, prefix.size(), prefix) == 0);
        if (!wanted) continue;
        py::handle v = item.second;
        MetaValue mv;
        if (PyBool_Check(v.ptr())) {
            mv.kind = MetaValue::boolean;
            mv.num = v.ptr() == Py_True;
        } else if (PyLong_Check(v.ptr())) {
            mv.kind = MetaValue::number;
            mv.integral = true;
            mv.num = PyLong_AsDouble(v.ptr());
            if (mv.num == -1.0 && PyErr_Occurred()) {  // beyond a double: as good as infinite
                PyErr_Clear();
                mv.num = PyObject_RichCompareBool(v.ptr(), py::int_(0).ptr(), Py_LT) == 1 ? -HUGE_VAL : HUGE_VAL;
            }
        } else if (PyFloat_Check(v.ptr())) {
            mv.kind = MetaValue::number;
            mv.num = PyFloat_AsDouble(v.ptr());
        } else if (py::isinstance<py::str>(v)) {
            mv.kind = MetaValue::string;
            mv.str = v.cast<std::string>();
        } else if (py::isinstance<py::list>(v) || py::isinstance<py::tuple>(v)) {
            mv.kind = MetaValue::array;
            mv.len = (int64_t)py::len(v);
        } else {
            mv.kind = MetaValue::other;
        }
        out[key] = std::move(mv);
    }
    return out;
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
