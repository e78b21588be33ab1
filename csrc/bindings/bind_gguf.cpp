// PLACEHOLDER until the GGUF reader lands.
#include "bindings/bindings.h"
namespace pyllm { void register_gguf(pybind11::module_&) {} }
