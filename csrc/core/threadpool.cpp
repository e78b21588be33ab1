#include "core/threadpool.h"

#if defined(__linux__)
#include <sched.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#elif defined(_WIN32)
#define NOMINMAX
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#endif

#include <cassert>

#include <fstream>
#include <set>
#include <string>
#include <system_error>
#include <utility>

#include "core/common.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax() { asm volatile("yield" ::: "memory"); }
#else
static inline void cpu_relax() {}
#endif

namespace pyllm {

// Waiting for work or for the other threads: spin with `pause` first (a decode step issues a
// job every few microseconds, so workers should stay hot), then yield the core to whoever else
// is runnable, then (workers only) sleep. Without the yield phase, a busy machine is a disaster:
// when a thread we wait for is descheduled, spinning burns the whole time slice it needs.
static constexpr int kPauseRounds = 2048;   // ~ tens of microseconds
static constexpr int kYieldRounds = 2048;   // then sched_yield; ~ a millisecond when the core is free

static inline void backoff(int round) {
    if (round < kPauseRounds) cpu_relax();
    else std::this_thread::yield();
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
    if (n_threads > kMaxThreads)
        fail(ErrorKind::invalid_argument, "n_threads = " + std::to_string(n_threads) + " is more than pyllm's limit of " +
             std::to_string(kMaxThreads) + " threads");
    workers_.reserve(n_threads_ - 1);
    try {
        for (int i = 1; i < n_threads_; ++i) workers_.push_back(start_thread([this, i] { worker_main(i); }));
    } catch (const std::system_error& e) {
        // A constructor that throws runs no destructor: stop and join the workers started so far.
        stop_workers();
        throw std::runtime_error("cannot start " + std::to_string(n_threads_) + " threads (" +
                                 std::to_string(workers_.size() + 1) + " started): " + e.what());
    }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_.store(true);
        state_.store(((uint64_t)(generation_of(state_.load()) + 1) << 32) | kClosed);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
}

// Claims and runs tasks of job `generation` until there are none; then reports how many it ran.
// The job's fields are read only after a successful claim (or, for n_tasks_, checked by it): the
// caller changes them only once every task of the job is done, after closing state_.
void ThreadPool::work(uint32_t generation, int thread) {
    int64_t done = 0;
    uint64_t s = state_.load(std::memory_order_acquire);
    for (;;) {
        if (generation_of(s) != generation) break;
        const uint64_t task = s & 0xffffffffu;
        if ((int64_t)task >= n_tasks_.load(std::memory_order_acquire)) break;  // kClosed too
        if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
        (*job_.load(std::memory_order_relaxed))((int64_t)task, thread);
        ++done;
        s = state_.load(std::memory_order_acquire);
    }
    if (done) n_done_.fetch_add(done, std::memory_order_release);
}

void ThreadPool::run(int64_t n_tasks, TaskRef fn) {
    assert(n_tasks < (int64_t)kClosed);
    const uint32_t generation = generation_of(state_.load()) + 1;
    // Close first: whoever still looks at the previous job must fail to claim from here on.
    state_.store(((uint64_t)generation << 32) | kClosed);
    job_.store(&fn, std::memory_order_relaxed);
    n_tasks_.store(n_tasks, std::memory_order_release);
    n_done_.store(0, std::memory_order_relaxed);
    // seq_cst: a worker going to sleep increments n_sleeping_ then re-reads state_; we publish
    // state_ then read n_sleeping_. One of the two must see the other.
    state_.store((uint64_t)generation << 32);
    if (n_sleeping_.load() > 0) {
        std::lock_guard<std::mutex> lock(mutex_);
        wake_.notify_all();
    }
    work(generation, 0);
    for (int round = 0; n_done_.load(std::memory_order_acquire) != n_tasks; ++round) backoff(round);
}

void ThreadPool::worker_main(int index) {
    uint32_t seen = generation_of(state_.load());
    for (;;) {
        uint64_t s = state_.load(std::memory_order_acquire);
        // Wait for a new job, spinning, then yielding, then sleeping; a job still being set up
        // (closed) is waited for too, or the worker would miss it.
        for (int round = 0; (generation_of(s) == seen || (s & 0xffffffffu) == kClosed) && !stop_.load(std::memory_order_relaxed) &&
                            round < kPauseRounds + kYieldRounds; ++round) {
            backoff(round);
            s = state_.load(std::memory_order_acquire);
        }
        if (stop_.load()) return;
        if (generation_of(s) == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            n_sleeping_.fetch_add(1);
            wake_.wait(lock, [&] { return generation_of(state_.load()) != seen || stop_.load(); });
            n_sleeping_.fetch_sub(1);
            continue;  // re-check: the new job may still be closed for setup
        }
        if ((s & 0xffffffffu) == kClosed) continue;  // set-up took long: wait again
        seen = generation_of(s);
        work(seen, index);
    }
}

int ThreadPool::default_threads() {
#if defined(__APPLE__)
    // The performance cores (hw.perflevel0, macOS 12+ on Apple Silicon), else all physical cores:
    // a job split evenly across performance and efficiency cores waits for the slow ones.
    int n = 0;
    size_t len = sizeof(n);
    if (sysctlbyname("hw.perflevel0.physicalcpu", &n, &len, nullptr, 0) != 0 || n <= 0) {
        len = sizeof(n);
        if (sysctlbyname("hw.physicalcpu", &n, &len, nullptr, 0) != 0) n = 0;
    }
    if (n <= 0) n = (int)std::thread::hardware_concurrency();
    return n > 0 ? n : 1;
#elif defined(_WIN32)
    // Physical cores: one RelationProcessorCore record per core; at most the active processors.
    int n = 0;
    DWORD len = 0;
    GetLogicalProcessorInformationEx(RelationProcessorCore, nullptr, &len);
    std::string buf(len, '\0');
    auto* info = reinterpret_cast<SYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX*>(buf.data());
    if (len && GetLogicalProcessorInformationEx(RelationProcessorCore, info, &len))
        for (DWORD off = 0; off < len; off += reinterpret_cast<SYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX*>(buf.data() + off)->Size) ++n;
    const int hw = (int)GetActiveProcessorCount(ALL_PROCESSOR_GROUPS);
    if (n <= 0 || (hw > 0 && n > hw)) n = hw;
    return n > 0 ? n : 1;
#else
    // Physical cores: count distinct (physical id, core id) pairs; hyper-threads share a core's
    // execution units and only add contention to these bandwidth-bound loops.
    std::ifstream f("/proc/cpuinfo");
    std::set<std::pair<std::string, std::string>> cores;
    std::string line, phys = "0";
    while (std::getline(f, line)) {
        auto colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string key = line.substr(0, line.find_first_of(" \t"));
        std::string val = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
        if (line.rfind("physical id", 0) == 0) phys = val;
        else if (line.rfind("core id", 0) == 0) cores.insert({phys, val});
    }
    int n = (int)cores.size();
    // The cores this process may run on (containers and taskset limit it below the machine's).
#if defined(__linux__)
    cpu_set_t set;
    int hw = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set)
                                                          : (int)std::thread::hardware_concurrency();
#else
    int hw = (int)std::thread::hardware_concurrency();
#endif
    if (n <= 0 || (hw > 0 && n > hw)) n = hw;
    return n > 0 ? n : 1;
#endif
}

} // namespace pyllm
