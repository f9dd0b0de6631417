// parallel_for for the twin's host kernels: [0, count) split into one contiguous range per thread, the calling
// thread running the first range and waiting for the others. The other threads are kept between calls (a model
// makes a hundred calls of a few hundred microseconds each, where starting threads every time cost more than
// the second core gained). After a call they watch for the next one for kSpin (a model's next kernel comes
// within microseconds), then sleep: waking a sleeping thread took 25-30 us on a two-core virtual machine (an
// add of 12,544 codes: 13-17 us on one thread, 36-41 us on two), more than a small layer's whole work, while
// spinning without end took the core from torch's own threads between its ops. Ranges are claimed, not
// assigned: the calling thread, done with range 0, runs those no thread has taken yet, so a call never waits for
// a thread the system has not yet scheduled (beside another runtime's spinning threads on two cores, waiting for
// it made the seed CNN's median call 2.3x slower on two threads than on one). A forked child starts its own.
#pragma once

#include <stdint.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QC_SPIN_PAUSE() _mm_pause()
#else
#define QC_SPIN_PAUSE() std::this_thread::yield()
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace qc_host {

class ThreadPool {
 public:
  // The pool of this process (rebuilt after a fork: the parent's threads do not exist in the child).
  static ThreadPool& instance() {
    static std::mutex guard;
    static ThreadPool* pool = nullptr;
    std::lock_guard<std::mutex> lock(guard);
    if (pool == nullptr || pool->pid_ != getpid()) pool = new ThreadPool();  // a child leaks its parent's
    return *pool;
  }

  // body(begin, end) on `ranges` ranges of [0, count), range 0 on the calling thread, the others on whichever
  // thread claims them first. One call at a time.
  void run(int64_t count, int ranges, const std::function<void(int64_t, int64_t)>& body) {
    std::lock_guard<std::mutex> serial(calls_);
    grow(ranges - 1);
    uint64_t generation;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &body, count_ = count, ranges_ = ranges;
      pending_.store(ranges - 1);
      generation = generation_.load() + 1;
      claim_.store(generation << 32 | 1);  // range 1 is the next one to claim; set before a thread can look
      generation_.store(generation);
    }
    wake_.notify_all();
    body(0, std::min(count, step()));
    run_claimed(generation);
    while (pending_.load() != 0) std::this_thread::yield();
  }

 private:
  static constexpr std::chrono::microseconds kSpin{50};

  ThreadPool() : pid_(getpid()) {}

  int64_t step() const { return (count_ + ranges_ - 1) / ranges_; }

  // The ranges of call `generation` that no thread has claimed yet, run on this one. A thread still looking
  // at an earlier call claims nothing: the generation is part of the claim.
  void run_claimed(uint64_t generation) {
    uint64_t claim = claim_.load();
    while ((claim >> 32) == (generation & 0xFFFFFFFF) && static_cast<int>(claim & 0xFFFFFFFF) < ranges_) {
      if (!claim_.compare_exchange_weak(claim, claim + 1)) continue;
      const int64_t begin = static_cast<int64_t>(claim & 0xFFFFFFFF) * step();
      const int64_t end = std::min(count_, begin + step());
      if (begin < end) (*body_)(begin, end);
      pending_.fetch_sub(1);
      claim = claim_.load();
    }
  }

  void grow(int workers) {
    while (static_cast<int>(workers_.size()) < workers) {
      // the generation now, read here: a thread that read it itself might see the next call's and miss it
      const uint64_t seen = generation_.load();
      workers_.emplace_back([this, seen] { work(seen); });
      workers_.back().detach();
    }
  }

  void work(uint64_t seen) {
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + kSpin;
      while (generation_.load() == seen && std::chrono::steady_clock::now() < until)
        for (int i = 0; i < 64; ++i) QC_SPIN_PAUSE();
      if (generation_.load() == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load() != seen; });
      }
      seen = generation_.load();
      run_claimed(seen);
    }
  }

  const pid_t pid_;
  std::mutex calls_, mutex_;
  std::condition_variable wake_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> claim_{0};  // the call's generation (low 32 bits) << 32 | the next range to claim
  std::atomic<int> pending_{0};
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t count_ = 0;
  int ranges_ = 1;
};

template <class Body>
void parallel_for(int64_t count, int threads, Body body) {
  threads = std::max(1, std::min<int>(threads, static_cast<int>(std::min<int64_t>(count, 64))));
  if (threads == 1) {
    body(0, count);
    return;
  }
  const std::function<void(int64_t, int64_t)> job = body;
  ThreadPool::instance().run(count, threads, job);
}

}  // namespace qc_host
