// pyllm._core: the private extension module. Ergonomics live in the Python package around it.
#include <pybind11/pybind11.h>

#include "bindings/bindings.h"
#include "core/common.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "pyllm's C++ core (private; use the pyllm package)";

    // C++ errors become the Python types in pyllm/errors.py, looked up when first raised so that
    // importing _core alone never needs the package.
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const pyllm::Error& e) {
            const char* name = "PyllmError";
            PyObject* fallback = PyExc_RuntimeError;
            switch (e.kind) {
                case pyllm::ErrorKind::gguf: name = "GGUFError"; break;
                case pyllm::ErrorKind::unsupported: name = "UnsupportedModelError"; break;
                case pyllm::ErrorKind::context_overflow: name = "ContextOverflowError"; break;
                case pyllm::ErrorKind::invalid_token: name = "InvalidTokenError"; break;
                case pyllm::ErrorKind::quantize: name = "QuantizeError"; break;
                case pyllm::ErrorKind::numeric: name = "NumericalError"; fallback = PyExc_ValueError; break;
                case pyllm::ErrorKind::invalid_argument: PyErr_SetString(PyExc_ValueError, e.what()); return;
                case pyllm::ErrorKind::interrupted: PyErr_SetString(PyExc_KeyboardInterrupt, e.what()); return;
                case pyllm::ErrorKind::io: PyErr_SetString(PyExc_OSError, e.what()); return;
            }
            try {
                py::object cls = py::module_::import("pyllm.errors").attr(name);
                PyErr_SetString(cls.ptr(), e.what());
            } catch (py::error_already_set&) {
                PyErr_SetString(fallback, e.what());
            }
        }
    });

    pyllm::register_core(m);
    pyllm::register_gguf(m);
    pyllm::register_model(m);
    pyllm::register_bench(m);
    pyllm::register_quantize(m);
    pyllm::register_ops(m);
}
