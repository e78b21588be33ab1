// Shared basics: the typed error every boundary throws, and small helpers.
// Not for: anything SIMD (see kernels/), anything Python (see bindings/).
#pragma once
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyllm {

// Each kind maps to one Python exception type in bindings/.
enum class ErrorKind {
    gguf,             // malformed / hostile / truncated GGUF file      -> pyllm.GGUFError
    unsupported,      // valid file, but an architecture or type we don't run -> UnsupportedModelError
    context_overflow, // more tokens than the context holds             -> ContextOverflowError
    invalid_token,    // token id outside the vocabulary                -> InvalidTokenError
    invalid_argument, // bad API argument                               -> ValueError
    quantize,         // quantizer failure                              -> QuantizeError
    interrupted,      // a cancel flag was raised (Ctrl-C)              -> KeyboardInterrupt
    io,               // file system                                    -> OSError
    numeric,          // the model produced NaN/Inf where numbers are needed -> NumericalError
};

struct Error : std::runtime_error {
    ErrorKind kind;
    Error(ErrorKind k, const std::string& msg) : std::runtime_error(msg), kind(k) {}
};

[[noreturn]] inline void fail(ErrorKind k, const std::string& msg) { throw Error(k, msg); }

// Overflow-checked arithmetic for sizes that come from files.
inline bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }
inline bool add_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_add_overflow(a, b, out); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

} // namespace pyllm
