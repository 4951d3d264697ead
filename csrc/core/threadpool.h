// A persistent pool of worker threads shared by every kernel of a model.
//
// Workers live as long as the pool. A parallel region hands out task indices
// through one atomic word (region, task count, next task), so a worker that
// wakes late can never take a task of another region; the calling thread
// takes part, so a pool of N threads starts N-1 workers. A region ends when
// its tasks are done, not when every worker has looked in: a worker the OS
// has not scheduled costs the region nothing unless it holds a task.
//
// Between regions (which follow each other within microseconds inside a
// forward pass) workers spin briefly, then sleep on a condition variable, so
// an idle model costs no CPU; the caller waits for a region's last tasks the
// same way, spinning longer (see threadpool.cpp).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace llmrt {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(task) for every task in [0, n_tasks), spread over all threads;
  // returns when all have finished. Not reentrant.
  void run(int n_tasks, const std::function<void(int)>& fn);

  // Splits [0, n) into contiguous ranges, about `grain` items or more each,
  // and calls fn(begin, end) for each.
  template <class F>
  void parallel_for(int64_t n, int64_t grain, F&& fn) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int64_t max_tasks = (n + grain - 1) / grain;
    // 8 tasks a thread: dynamic hand-out keeps the threads within a small
    // task of each other at the end of a region, and a thread the OS
    // descheduled holds back at most one small task
    int64_t n_tasks = std::min<int64_t>(max_tasks, (int64_t)n_threads_ * 8);
    if (n_threads_ == 1 || n_tasks <= 1) {
      fn(int64_t(0), n);
      return;
    }
    int64_t per = (n + n_tasks - 1) / n_tasks;
    n_tasks = (n + per - 1) / per;
    run((int)n_tasks, [&](int t) {
      int64_t b = (int64_t)t * per;
      int64_t e = std::min<int64_t>(n, b + per);
      fn(b, e);
    });
  }

 private:
  // state_: region number (bits 40-63), task count (bits 20-39), next task
  // (bits 0-19)
  static constexpr int kCountShift = 20, kRegionShift = 40;
  static constexpr uint64_t kField = (1u << 20) - 1, kRegionMask = (1u << 24) - 1;
  static uint64_t region_of(uint64_t s) { return s >> kRegionShift; }

  void worker_loop();
  // Claims and runs tasks of `region` while any is left.
  void work(uint64_t region);
  void run_region(int n_tasks, const std::function<void(int)>& fn);

  int n_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* fn_ = nullptr;
  std::atomic<uint64_t> state_{0};
  std::atomic<int> done_{0};          // tasks finished in the current region
  std::atomic<int> sleepers_{0};      // workers asleep on cv_
  std::atomic<bool> caller_asleep_{false};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;        // workers: a new region or stop
  std::condition_variable cv_done_;   // the caller: the region's last task done
};

}  // namespace llmrt
