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
// HParams to and from the dict Python holds (ModelConfig as a dict), by the key table's fields.
HParams config_from_dict(const pybind11::dict& d);
pybind11::dict dict_from_hparams(const HParams& c);
// The metadata entries read_hparams may read, from the GGUF reader's dict.
Metadata metadata_for_hparams(const pybind11::dict& md);
// name -> (type_id, ne list, uint8 buffer): checked views; the buffers must outlive their use.
std::unordered_map<std::string, TensorView> tensor_views(const pybind11::dict& tensors);
} // namespace pyllm
