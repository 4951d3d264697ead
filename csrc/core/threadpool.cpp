#include "core/threadpool.h"

#include <algorithm>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LLMRT_PAUSE() _mm_pause()
#else
#define LLMRT_PAUSE() std::this_thread::yield()
#endif

namespace llmrt {

namespace {
// Spinning before a wait sleeps. Workers: about a millisecond on current x86
// cores (regions inside a forward pass follow each other within
// microseconds). The caller, whose region ends only when a task a worker
// holds is done, spins four times as long: on a machine busy with other
// processes that worker may be waiting for a core, and a caller that slept
// would give up its own (measured: decode beside two busy processes on two
// cores 0.42-0.45x its quiet speed with a short spin, 0.44-0.50x with a long
// one). Spinning never yields: a yield hands the core to a busy neighbour for
// a whole time slice (0.34-0.36x measured).
constexpr int kWorkerSpin = 1 << 14;
constexpr int kCallerSpin = 1 << 16;

// Spins until done() holds or `iters` pauses have passed; true if it holds.
template <class Pred>
bool spin_until(Pred done, int iters) {
  for (int i = 0; i < iters; ++i) {
    if (done()) return true;
    LLMRT_PAUSE();
  }
  return done();
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::work(uint64_t region) {
  uint64_t s = state_.load(std::memory_order_acquire);
  for (;;) {
    if (region_of(s) != region) return;
    const uint64_t next = s & kField, count = (s >> kCountShift) & kField;
    if (next >= count) return;
    // claim task `next` of this region (the region and the count travel in
    // the same word, so a late thread cannot claim a task of a later one)
    if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire))
      continue;
    (*fn_)((int)next);
    // seq_cst, as the caller's caller_asleep_ store and done_ load: either
    // it sees this task done or this sees it asleep
    if (done_.fetch_add(1) + 1 == (int)count && caller_asleep_.load()) {
      std::lock_guard<std::mutex> lk(mu_);
      cv_done_.notify_one();
    }
    s = state_.load(std::memory_order_acquire);
  }
}

void ThreadPool::run_region(int n_tasks, const std::function<void(int)>& fn) {
  fn_ = &fn;
  done_.store(0, std::memory_order_relaxed);
  // the region number wraps at 2^24 (a worker only compares it for change)
  const uint64_t region = (region_of(state_.load(std::memory_order_relaxed)) + 1) & kRegionMask;
  // publishes fn_ and done_ with the new region (seq_cst: ordered against a
  // worker's sleepers_ increment, so either it sees the region or we see it)
  state_.store((region << kRegionShift) | ((uint64_t)n_tasks << kCountShift));
  if (sleepers_.load() > 0) {
    { std::lock_guard<std::mutex> lk(mu_); }
    cv_.notify_all();
  }
  work(region);
  auto finished = [&] { return done_.load() == n_tasks; };
  if (!spin_until(finished, kCallerSpin)) {
    std::unique_lock<std::mutex> lk(mu_);
    caller_asleep_.store(true);
    cv_done_.wait(lk, finished);
    caller_asleep_.store(false);
  }
}

void ThreadPool::run(int n_tasks, const std::function<void(int)>& fn) {
  if (n_tasks <= 0) return;
  if (workers_.empty() || n_tasks == 1) {
    for (int t = 0; t < n_tasks; ++t) fn(t);
    return;
  }
  // the task field holds fewer than 2^20: larger counts run as several regions
  constexpr int kMax = (int)kField;
  for (int t0 = 0; t0 < n_tasks; t0 += kMax) {
    const int n = std::min(kMax, n_tasks - t0);
    if (t0 == 0 && n == n_tasks) {
      run_region(n, fn);
    } else {
      const std::function<void(int)> part = [&](int t) { fn(t0 + t); };
      run_region(n, part);
    }
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    // seq_cst, as the caller's state_ store and sleepers_ load: a region
    // published while this goes to sleep is seen, or the caller wakes it
    auto ready = [&] { return region_of(state_.load()) != seen || stop_.load(); };
    if (!spin_until(ready, kWorkerSpin)) {
      std::unique_lock<std::mutex> lk(mu_);
      sleepers_.fetch_add(1);
      cv_.wait(lk, ready);
      sleepers_.fetch_sub(1);
    }
    if (stop_.load()) return;
    seen = region_of(state_.load(std::memory_order_acquire));
    work(seen);
  }
}

}  // namespace llmrt
