// A persistent pool of worker threads shared by every kernel of a model.
//
// Workers live as long as the pool. A parallel region hands out task indices
// through an atomic counter; the calling thread takes part, so a pool of N
// threads starts N-1 workers. Between regions workers spin briefly (regions
// inside one forward pass follow each other within microseconds), then sleep
// on a condition variable so an idle model costs no CPU.
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
    // task of each other at the end of a region
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
  void worker_loop();
  void drain();

  int n_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* fn_ = nullptr;
  int n_tasks_ = 0;
  std::atomic<int> next_{0};
  std::atomic<int> busy_{0};
  std::atomic<uint64_t> epoch_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace llmrt
