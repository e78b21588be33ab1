// Measurement hooks for `pyllm bench`: this machine's streaming-read memory bandwidth, measured with
// the same thread pool the model uses, so decode speed can be reported as a fraction of it.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "bindings/bindings.h"
#include "core/common.h"
#include "core/threadpool.h"

namespace py = pybind11;

namespace pyllm {

namespace {

// Sums n words with eight independent accumulators, so the loop is bound by loads, not by the
// add latency; baseline code (the compiler vectorizes it with SSE2), which already reads far
// faster than DRAM delivers.
uint64_t sum_words(const uint64_t* p, int64_t n) {
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a0 += p[i + 0]; a1 += p[i + 1]; a2 += p[i + 2]; a3 += p[i + 3];
        a4 += p[i + 4]; a5 += p[i + 5]; a6 += p[i + 6]; a7 += p[i + 7];
    }
    for (; i < n; ++i) a0 += p[i];
    return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

// Reads a buffer of n_bytes (make it much larger than the last-level cache) `repeats` times with
// n_threads threads, each pass split into chunks taken from the pool's counter. Returns the
// bytes/second of every pass; the caller picks the statistic (STREAM reports the best).
py::dict read_bandwidth(int64_t n_bytes, int n_threads, int repeats) {
    if (n_bytes < (1 << 20)) fail(ErrorKind::invalid_argument, "read_bandwidth needs at least 1 MiB, got " + std::to_string(n_bytes));
    if (n_threads < 1) fail(ErrorKind::invalid_argument, "n_threads must be at least 1, got " + std::to_string(n_threads));
    if (repeats < 1) fail(ErrorKind::invalid_argument, "repeats must be at least 1, got " + std::to_string(repeats));
    const int64_t n_words = n_bytes / 8;
    std::vector<double> rates;
    uint64_t checksum = 0;
    {
        py::gil_scoped_release release;
        std::vector<uint64_t> buffer(n_words);  // written once below, so every page is resident
        for (int64_t i = 0; i < n_words; ++i) buffer[i] = (uint64_t)i * 0x9E3779B97F4A7C15ull;
        ThreadPool pool(n_threads);
        constexpr int64_t chunk_words = 1 << 17;  // 1 MiB per task
        const int64_t n_chunks = (n_words + chunk_words - 1) / chunk_words;
        std::vector<uint64_t> partial(n_chunks);
        for (int r = 0; r < repeats; ++r) {
            const auto t0 = std::chrono::steady_clock::now();
            pool.parallel_for(n_chunks, [&](int64_t c, int) {
                const int64_t begin = c * chunk_words;
                partial[c] = sum_words(buffer.data() + begin, std::min(chunk_words, n_words - begin));
            });
            const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            rates.push_back((double)(n_words * 8) / s);
            for (uint64_t v : partial) checksum += v;
        }
    }
    py::dict out;
    out["bytes_per_s"] = rates;
    out["checksum"] = checksum;  // returned so the compiler cannot drop the reads
    return out;
}

} // namespace

void register_bench(py::module_& m) {
    m.def("read_bandwidth", &read_bandwidth, py::arg("n_bytes"), py::arg("n_threads"), py::arg("repeats") = 5,
          "Streaming-read bandwidth: {'bytes_per_s': [per pass], 'checksum': int}.");
}

} // namespace pyllm
