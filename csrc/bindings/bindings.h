// The only pybind11 code lives in bindings/: thin registrars, one per area.
#pragma once
#include <pybind11/pybind11.h>

namespace pyllm {
void register_core(pybind11::module_& m);   // system info, type table, kernel test hooks
void register_gguf(pybind11::module_& m);   // GGUFReader
void register_model(pybind11::module_& m);  // Model, Context, Sampler
void register_bench(pybind11::module_& m);  // measurement hooks for `pyllm bench`
void register_quantize(pybind11::module_& m);  // tensor conversion, calibration, GPTQ
void register_ops(pybind11::module_& m);       // rmsnorm, rope, attention hooks for tests
} // namespace pyllm
