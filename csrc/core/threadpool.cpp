#include "core/threadpool.h"

#include <sched.h>

#include <fstream>
#include <set>
#include <string>
#include <utility>

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
    workers_.reserve(n_threads_ - 1);
    for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_main(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_.store(true);
        generation_.fetch_add(1);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
}

void ThreadPool::work(int thread) {
    for (;;) {
        const int64_t task = next_task_.fetch_add(1, std::memory_order_relaxed);
        if (task >= n_tasks_) break;
        (*job_)(task, thread);
    }
}

void ThreadPool::run(int64_t n_tasks, TaskRef fn) {
    job_ = &fn;
    n_tasks_ = n_tasks;
    next_task_.store(0, std::memory_order_relaxed);
    n_busy_.store(n_threads_ - 1, std::memory_order_relaxed);
    // seq_cst on both sides: a worker going to sleep increments n_sleeping_ then re-reads
    // generation_; we bump generation_ then read n_sleeping_. One of the two must see the other.
    generation_.fetch_add(1);
    if (n_sleeping_.load() > 0) {
        std::lock_guard<std::mutex> lock(mutex_);
        wake_.notify_all();
    }
    work(0);
    for (int round = 0; n_busy_.load(std::memory_order_acquire) != 0; ++round) backoff(round);
    job_ = nullptr;
}

void ThreadPool::worker_main(int index) {
    uint64_t seen = 0;
    for (;;) {
        uint64_t gen = generation_.load(std::memory_order_acquire);
        for (int round = 0; gen == seen && round < kPauseRounds + kYieldRounds; ++round) {
            backoff(round);
            gen = generation_.load(std::memory_order_acquire);
        }
        if (gen == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            n_sleeping_.fetch_add(1);
            wake_.wait(lock, [&] { return generation_.load() != seen; });
            n_sleeping_.fetch_sub(1);
            gen = generation_.load(std::memory_order_acquire);
        }
        seen = gen;
        if (stop_.load()) return;
        work(index);
        n_busy_.fetch_sub(1, std::memory_order_release);
    }
}

int ThreadPool::default_threads() {
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
    cpu_set_t set;
    int hw = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set)
                                                          : (int)std::thread::hardware_concurrency();
    if (n <= 0 || (hw > 0 && n > hw)) n = hw;
    return n > 0 ? n : 1;
}

} // namespace pyllm
