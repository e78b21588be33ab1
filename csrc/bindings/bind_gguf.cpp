// _core.GGUFReader: the C++ GGUF reader seen from Python. Metadata becomes plain Python objects
// (built once, on first use), except numeric arrays of more than kNumpyArrayMin elements, which
// become read-only numpy arrays (a list of Python ints or floats takes ~9x the file's bytes); tensor bytes are zero-copy read-only numpy views that keep the
// mapping alive. Helpers for users live in pyllm/gguf/reader.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <memory>

#include "bindings/bindings.h"
#include "core/common.h"
#include "gguf/gguf.h"

namespace py = pybind11;

namespace pyllm {

namespace {

// ---------------------------------------------------------------------------------------------
// Metadata values -> Python objects

// A string that is valid UTF-8 becomes str; anything else (byte tokens of some vocabularies)
// becomes bytes rather than failing or being mangled.
py::object str_or_bytes(std::string_view s) {
    PyObject* o = PyUnicode_DecodeUTF8(s.data(), (Py_ssize_t)s.size(), "strict");
    if (!o) {
        PyErr_Clear();
        o = PyBytes_FromStringAndSize(s.data(), (Py_ssize_t)s.size());
        if (!o) throw py::error_already_set();
    }
    return py::reinterpret_steal<py::object>(o);
}

template <typename T>
T load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

// One fixed-size element of an array, from its raw little-endian bytes.
PyObject* scalar_from_bytes(GGUFValueType t, const uint8_t* p) {
    switch (t) {
    case GGUFValueType::UINT8:   return PyLong_FromUnsignedLong(load<uint8_t>(p));
    case GGUFValueType::INT8:    return PyLong_FromLong(load<int8_t>(p));
    case GGUFValueType::UINT16:  return PyLong_FromUnsignedLong(load<uint16_t>(p));
    case GGUFValueType::INT16:   return PyLong_FromLong(load<int16_t>(p));
    case GGUFValueType::UINT32:  return PyLong_FromUnsignedLong(load<uint32_t>(p));
    case GGUFValueType::INT32:   return PyLong_FromLong(load<int32_t>(p));
    case GGUFValueType::UINT64:  return PyLong_FromUnsignedLongLong(load<uint64_t>(p));
    case GGUFValueType::INT64:   return PyLong_FromLongLong(load<int64_t>(p));
    case GGUFValueType::FLOAT32: return PyFloat_FromDouble(load<float>(p));
    case GGUFValueType::FLOAT64: return PyFloat_FromDouble(load<double>(p));
    case GGUFValueType::BOOL:    return PyBool_FromLong(load<uint8_t>(p));
    default: break;
    }
    PyErr_SetString(PyExc_RuntimeError, "not a fixed-size GGUF value type");
    return nullptr;
}

// Numeric arrays longer than this are numpy arrays: a list costs 8 bytes per pointer plus 24-28
// per int or float object (a 50 MB int32 array took 455 MB), a numpy copy the file's bytes. Shorter
// ones (per-layer hyper-parameters and the like) stay lists, as callers compare them with lists.
constexpr uint64_t kNumpyArrayMin = 1024;

const char* numpy_dtype(GGUFValueType t) {
    switch (t) {
    case GGUFValueType::UINT8: return "<u1";   case GGUFValueType::INT8: return "<i1";
    case GGUFValueType::UINT16: return "<u2";  case GGUFValueType::INT16: return "<i2";
    case GGUFValueType::UINT32: return "<u4";  case GGUFValueType::INT32: return "<i4";
    case GGUFValueType::UINT64: return "<u8";  case GGUFValueType::INT64: return "<i8";
    case GGUFValueType::FLOAT32: return "<f4"; case GGUFValueType::FLOAT64: return "<f8";
    case GGUFValueType::BOOL: return "?";
    default: return nullptr;
    }
}

py::object to_python(const GGUFValue& v) {
    switch (v.type) {
    case GGUFValueType::UINT8: case GGUFValueType::UINT16: case GGUFValueType::UINT32: case GGUFValueType::UINT64:
        return py::int_(v.scalar.u);
    case GGUFValueType::INT8: case GGUFValueType::INT16: case GGUFValueType::INT32: case GGUFValueType::INT64:
        return py::int_(v.scalar.i);
    case GGUFValueType::FLOAT32: case GGUFValueType::FLOAT64: return py::float_(v.scalar.f);
    case GGUFValueType::BOOL: return py::bool_(v.scalar.u != 0);
    case GGUFValueType::STRING: return str_or_bytes(v.str);
    case GGUFValueType::ARRAY: break;
    }
    // Arrays of strings or arrays, and short numeric arrays, are Python lists.
    py::list out((size_t)v.count);
    if (v.elem_type == GGUFValueType::STRING) {
        for (size_t j = 0; j < v.strs.size(); ++j) PyList_SET_ITEM(out.ptr(), j, str_or_bytes(v.strs[j]).release().ptr());
    } else if (v.elem_type == GGUFValueType::ARRAY) {
        for (size_t j = 0; j < v.items.size(); ++j) PyList_SET_ITEM(out.ptr(), j, to_python(v.items[j]).release().ptr());
    } else if (v.count > kNumpyArrayMin) {
        // A copy, not a view of the mapping: metadata outlives close() and must not fault if the
        // file is truncated later. GGUF booleans are bytes 0/1; the reader rejects other values.
        py::array a(py::dtype(numpy_dtype(v.elem_type)), py::array::ShapeContainer{(py::ssize_t)v.count});
        std::memcpy(a.mutable_data(), v.elems, (size_t)v.count * gguf_value_type_size((uint32_t)v.elem_type));
        py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
        return std::move(a);
    } else {
        const size_t size = gguf_value_type_size((uint32_t)v.elem_type);
        for (uint64_t j = 0; j < v.count; ++j) {
            PyObject* o = scalar_from_bytes(v.elem_type, v.elems + j * size);
            if (!o) throw py::error_already_set();
            PyList_SET_ITEM(out.ptr(), j, o);
        }
    }
    return std::move(out);
}

// "UINT32", "ARRAY[STRING]", "ARRAY[ARRAY[INT32]]"; a nested array whose items differ in type
// (or that is empty) says just "ARRAY[ARRAY]".
std::string type_description(const GGUFValue& v) {
    const std::string name = gguf_value_type_name((uint32_t)v.type);
    if (v.type != GGUFValueType::ARRAY) return name;
    if (v.elem_type != GGUFValueType::ARRAY) return name + "[" + gguf_value_type_name((uint32_t)v.elem_type) + "]";
    if (v.items.empty()) return "ARRAY[ARRAY]";
    const std::string first = type_description(v.items[0]);
    for (size_t j = 1; j < v.items.size(); ++j)
        if (type_description(v.items[j]) != first) return "ARRAY[ARRAY]";
    return "ARRAY[" + first + "]";
}

// ---------------------------------------------------------------------------------------------
// The bound reader

class Reader {
public:
    explicit Reader(const std::string& path) : path_(path) {
        py::gil_scoped_release nogil;
        file_ = GGUFFile::open(path);
    }

    const std::string& path() const { return path_; }
    bool file_closed() const { return !file_; }

    const GGUFFile& file() const {
        if (!file_) fail(ErrorKind::invalid_argument, "GGUF reader for '" + path_ + "' is closed");
        return *file_;
    }

    py::dict metadata() {
        const GGUFFile& f = file();
        if (!metadata_) {
            py::dict d;
            for (const auto& [key, value] : f.metadata()) d[py::str(key)] = to_python(value);
            metadata_ = std::move(d);
        }
        return py::reinterpret_borrow<py::dict>(metadata_);
    }

    py::dict metadata_types() const {
        py::dict d;
        for (const auto& [key, value] : file().metadata()) d[py::str(key)] = type_description(value);
        return d;
    }

    py::list tensors() const {
        py::list out;
        for (const GGUFTensorInfo& t : file().tensors()) {
            py::list shape;
            for (int j = 0; j < t.n_dims; ++j) shape.append(t.ne[j]);
            py::dict d;
            d["name"] = t.name;
            d["type"] = (int)t.type;
            d["type_name"] = type_layout(t.type)->name;
            d["supported"] = type_is_known(t.type);  // false: a ggml type pyllm reads but does not run
            d["shape"] = shape;  // ne order: ne[0], the row length, first
            d["n_elements"] = t.n_elements();
            d["nbytes"] = t.nbytes;
            d["offset"] = t.file_offset;  // absolute, in the file
            out.append(d);
        }
        return out;
    }

    // The tensor's raw bytes, zero copy. The array's base owns a reference to the mapping, so it
    // stays valid after close() or after the reader is gone.
    py::array tensor_data(const std::string& name) const {
        const GGUFTensorInfo* t = file().tensor(name);
        if (!t) throw py::key_error("no tensor named '" + name + "' in " + path_);
        auto* owner = new std::shared_ptr<const GGUFFile>(file_);
        py::capsule base(owner, [](void* p) { delete static_cast<std::shared_ptr<const GGUFFile>*>(p); });
        py::array_t<uint8_t> a({(py::ssize_t)t->nbytes}, {(py::ssize_t)1}, t->data, base);
        py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
        return std::move(a);
    }

    void close() {
        file_.reset();
        metadata_ = py::object();
    }

private:
    std::string path_;
    std::shared_ptr<const GGUFFile> file_;
    py::object metadata_;
};

} // namespace

void register_gguf(py::module_& m) {
    // GGUF's metadata value type ids (gguf/gguf.h), for Python's writer: name -> id.
    m.def("gguf_value_types", [] {
        py::dict d;
        for (uint32_t id = 0; gguf_value_type_name(id) != nullptr; ++id) d[gguf_value_type_name(id)] = id;
        return d;
    }, "GGUF metadata value type names -> ids ('UINT8': 0, ..., 'FLOAT64': 12)");
    py::class_<Reader>(m, "GGUFReader",
                       "A validated, memory-mapped GGUF file (versions 2 and 3, little-endian). Raises "
                       "GGUFError naming the field and byte offset of the first problem, OSError if the "
                       "file cannot be opened. Metadata arrays are Python lists, except numeric arrays of more than "
                       "1024 elements: read-only numpy arrays.")
        .def(py::init<const std::string&>(), py::arg("path"))
        .def_property_readonly("path", &Reader::path)
        .def_property_readonly("version", [](const Reader& r) { return r.file().version(); })
        .def_property_readonly("alignment", [](const Reader& r) { return r.file().alignment(); })
        .def_property_readonly("data_offset", [](const Reader& r) { return r.file().data_offset(); })
        .def_property_readonly("file_size", [](const Reader& r) { return r.file().file_size(); })
        .def_property_readonly("closed", [](const Reader& r) { return r.file_closed(); })
        .def_property_readonly("metadata", &Reader::metadata, "key -> int | float | bool | str | bytes | list | numpy array (numeric arrays of more than 1024 elements; cached)")
        .def_property_readonly("metadata_types", &Reader::metadata_types, "key -> 'UINT32', 'ARRAY[STRING]', ...")
        .def_property_readonly("tensors", &Reader::tensors,
                               "list of dicts: name, type, type_name, supported, shape (ne order), n_elements, nbytes, offset")
        .def("tensor_data", &Reader::tensor_data, py::arg("name"), "read-only uint8 view of a tensor's bytes")
        .def("close", &Reader::close)
        .def("__enter__", [](py::object self) { return self; })
        .def("__exit__", [](Reader& r, py::args) { r.close(); });
}

} // namespace pyllm
