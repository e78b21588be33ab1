// A persistent thread pool for the compute loops: workers spin briefly, then sleep, between jobs;
// a job's tasks are claimed in order from an atomic counter, so faster threads take more of them.
// The calling thread works too, so a pool of n threads starts n-1 workers. A job ends when its
// tasks are done, not when every worker has checked in: a worker the OS has descheduled (a busy
// machine) costs the job nothing unless it holds a task.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#if !defined(_WIN32)
#include <signal.h>
#include <pthread.h>
#endif

namespace pyllm {

// Starts a thread with every signal blocked. A process-directed signal (Ctrl-C's SIGINT) goes to
// any thread that does not block it; if one of ours took it, Python's handler would only set a
// flag, and the main thread, asleep in readline's select() or a lock wait, would never wake to
// raise KeyboardInterrupt. The new thread inherits the caller's mask, so it is set around the
// creation and restored.
template <class F>
std::thread start_thread(F&& fn) {
#if defined(_WIN32)
    return std::thread(std::forward<F>(fn));
#else
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    struct Restore {
        sigset_t* mask;
        ~Restore() { pthread_sigmask(SIG_SETMASK, mask, nullptr); }
    } restore{&old};
    return std::thread(std::forward<F>(fn));
#endif
}

// A non-owning reference to a callable (no allocation, unlike std::function).
class TaskRef {
public:
    template <class F>
    TaskRef(F& f) : obj_(&f), call_([](void* o, int64_t task, int thread) { (*static_cast<F*>(o))(task, thread); }) {}
    void operator()(int64_t task, int thread) const { call_(obj_, task, thread); }
private:
    void* obj_;
    void (*call_)(void*, int64_t, int);
};

class ThreadPool {
public:
    // At most kMaxThreads threads: beyond that a pool only starves the machine. Throws
    // Error(invalid_argument) above it, and Error(runtime) with no thread left running if the
    // system refuses to start one.
    static constexpr int kMaxThreads = 512;
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Runs fn(task, thread) for every task in [0, n_tasks), thread in [0, size()). Returns when
    // all tasks are done. Not re-entrant: one job at a time (the model serializes its calls).
    template <class F>
    void parallel_for(int64_t n_tasks, F&& fn) {
        if (n_tasks <= 0) return;
        if (n_threads_ == 1 || n_tasks == 1) {
            for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
            return;
        }
        TaskRef ref(fn);
        run(n_tasks, ref);
    }

    static int default_threads();  // physical cores, at least 1

private:
    // state_ packs the job's generation (high 32 bits) and its next unclaimed task (low 32 bits).
    // A task is claimed by a compare-exchange on the whole word, so a thread still looking at an
    // older job can never claim a task of the current one (unless it stalled between its load
    // and its compare-exchange for 2^32 jobs). kClosed marks a job being set up.
    static constexpr uint64_t kClosed = 0xffffffffu;
    static uint32_t generation_of(uint64_t s) { return (uint32_t)(s >> 32); }

    void run(int64_t n_tasks, TaskRef fn);
    void stop_workers();  // wakes, stops and joins every started worker
    void worker_main(int index);
    void work(uint32_t generation, int thread);

    int n_threads_;
    std::vector<std::thread> workers_;

    // The job being run, written by the caller while state_ is closed.
    std::atomic<TaskRef*> job_{nullptr};
    std::atomic<int64_t> n_tasks_{0};

    alignas(64) std::atomic<uint64_t> state_{kClosed};
    alignas(64) std::atomic<int64_t> n_done_{0};       // tasks of the current job finished
    alignas(64) std::atomic<bool> stop_{false};
    std::atomic<int> n_sleeping_{0};
    std::mutex mutex_;
    std::condition_variable wake_;
};

} // namespace pyllm
