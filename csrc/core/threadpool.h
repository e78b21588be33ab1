// A persistent thread pool for the compute loops: workers spin briefly, then sleep, between jobs;
// a job's tasks are taken in order from an atomic counter, so faster threads take more of them.
// The calling thread works too, so a pool of n threads starts n-1 workers.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace pyllm {

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
    void run(int64_t n_tasks, TaskRef fn);
    void worker_main(int index);
    void work(int thread);

    int n_threads_;
    std::vector<std::thread> workers_;

    // The job being run. Written by the caller before `generation_` is bumped.
    TaskRef* job_ = nullptr;
    int64_t n_tasks_ = 0;

    alignas(64) std::atomic<int64_t> next_task_{0};
    alignas(64) std::atomic<int> n_busy_{0};          // workers still inside the current job
    alignas(64) std::atomic<uint64_t> generation_{0};  // bumped once per job
    alignas(64) std::atomic<bool> stop_{false};
    std::atomic<int> n_sleeping_{0};
    std::mutex mutex_;
    std::condition_variable wake_;
};

} // namespace pyllm
