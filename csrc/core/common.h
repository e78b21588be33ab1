// Shared basics: the typed error every boundary throws, and small helpers.
// Not for: anything SIMD (see kernels/), anything Python (see bindings/).
#pragma once
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
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
// (GCC and Clang builtins; Windows builds use clang-cl, see CMakeLists.txt.)
inline bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }
inline bool add_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_add_overflow(a, b, out); }

// Aligned allocation (size a multiple of align); nullptr on failure. Windows has no aligned_alloc
// (its free cannot release an over-aligned block), so it gets _aligned_malloc/_aligned_free.
inline void* aligned_malloc(size_t align, size_t size) {
#if defined(_WIN32)
    return _aligned_malloc(size, align);
#else
    return std::aligned_alloc(align, size);
#endif
}
inline void aligned_free(void* p) {
#if defined(_WIN32)
    _aligned_free(p);
#else
    std::free(p);
#endif
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

} // namespace pyllm
