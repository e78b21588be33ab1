// PLACEHOLDER until the model lands.
#include "bindings/bindings.h"
namespace pyllm { void register_model(pybind11::module_&) {} }
