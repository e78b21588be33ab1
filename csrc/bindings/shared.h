// Conversions more than one binding area needs (bindings/shared.cpp).
#pragma once
#include <pybind11/pybind11.h>

#include <string>
#include <unordered_map>

#include "model/model.h"

namespace pyllm {
// Polled between layers with the GIL released: takes the GIL, runs Python's pending signal
// handlers; true when a KeyboardInterrupt should abandon the evaluation.
bool python_interrupted();
// The dict pyllm.model builds from GGUF metadata (ModelConfig as a dict: "arch" and the fields of
// hparams.h's table).
ModelConfig config_from_dict(const pybind11::dict& d);
// hparams.h's table as a list of dicts (field, key, is_float, required, fallback, from_field,
// choices, lo, hi): how Python reads the metadata.
pybind11::list hparam_table_for_python();
// name -> (type_id, ne list, uint8 buffer): checked views; the buffers must outlive their use.
std::unordered_map<std::string, TensorView> tensor_views(const pybind11::dict& tensors);
} // namespace pyllm
