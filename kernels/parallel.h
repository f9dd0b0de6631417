// parallel_for for the twin's host kernels: [0, count) split into one contiguous range per thread, the
// calling thread waiting. Threads are started per call: a few tens of microseconds, small against the
// convolutions and element-wise stages that use it.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <thread>
#include <vector>

namespace qc_host {

template <class Body>
void parallel_for(int64_t count, int threads, Body body) {
  threads = std::max(1, std::min<int>(threads, static_cast<int>(std::min<int64_t>(count, 64))));
  if (threads == 1) {
    body(0, count);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t step = (count + threads - 1) / threads;
  for (int t = 0; t < threads; ++t) {
    const int64_t begin = t * step, end = std::min(count, begin + step);
    if (begin < end) pool.emplace_back(body, begin, end);
  }
  for (auto& thread : pool) thread.join();
}

}  // namespace qc_host
