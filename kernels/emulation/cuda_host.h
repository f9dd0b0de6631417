// A small host emulation of CUDA's execution model, so that the kernels in
// ../*.cuh run unchanged on a CPU.
//
// launch() runs the grid one block at a time. A block's threads are fibers
// (ucontext) on one OS thread, run in turn: each runs until it reaches a
// barrier (__syncthreads, or a warp-wide mma.sync) and hands over to the next.
// A thread passes a barrier only when every thread of its block (its warp,
// for mma.sync) has reached it, so a kernel that forgets a __syncthreads reads what its neighbours have
// not written yet, every time, instead of now and then as on a GPU.
// __shared__ becomes a function-static variable: with one block alive at a
// time, that is precisely the block's shared memory. threadIdx / blockIdx /
// blockDim / gridDim are set for the fiber that runs.
//
// Warp-wide instructions (mma.sync, ldmatrix) are emulated from their
// documented fragment layouts: every lane deposits its operands, and after
// the barrier each lane reads back the elements that the layout gives it.
#pragma once

#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
#define __launch_bounds__(...)

inline dim3 threadIdx;
inline dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

struct uint4 {
  uint32_t x, y, z, w;
};

namespace qc_host {

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  dim3 index;
  bool done = false;
};

// A barrier: `arrived` threads of `expected` so far in this generation.
struct Barrier {
  unsigned arrived = 0, expected = 0, generation = 0;
};

struct Block {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  Fiber* running = nullptr;
  void (*body)(void*) = nullptr;
  void* closure = nullptr;
  Barrier all;            // __syncthreads
  Barrier warps[32];      // warp-wide instructions
  uint64_t progress = 0;  // arrivals and exits: a round without any is a deadlock
};

inline Block* current_block = nullptr;

// Arrives at `barrier` and hands over to the other threads until all `expected` have arrived.
inline void wait_at(Barrier& barrier) {
  Block& block = *current_block;
  const unsigned generation = barrier.generation;
  ++block.progress;
  if (++barrier.arrived == barrier.expected) barrier.arrived = 0, ++barrier.generation;
  while (barrier.generation == generation) swapcontext(&block.running->context, &block.scheduler);
}

inline void fiber_entry() {
  Block& block = *current_block;
  block.body(block.closure);
  block.running->done = true;
  ++block.progress;
  --block.all.expected;  // as on a GPU, a thread that has exited no longer holds __syncthreads up
  Barrier& all = block.all;
  if (all.expected > 0 && all.arrived == all.expected) all.arrived = 0, ++all.generation;
}

// The calling thread's lane and warp: threads are numbered x fastest, then y, then z, 32 to a warp.
inline unsigned linear_thread() { return (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x; }

// Exchange space of the warps of the running block for warp-wide instructions. Two sets, used in turn: a lane
// that has read its results may deposit the next instruction's operands while slower lanes still read.
struct WarpExchange {
  uint32_t a[32][4];
  uint32_t b[32][2];
  int32_t c[32][4];
  const uint8_t* rows[32];
};
inline WarpExchange exchange[2][32];  // [parity][warp]
inline unsigned exchange_parity[1024];  // per thread: which set its next instruction uses

constexpr size_t kFiberStack = 64 * 1024;

// getcontext returns twice; kept out of launch() so that launch's loop variables stay in registers safely.
[[gnu::noinline]] inline void start(Fiber& fiber, Block& block) {
  getcontext(&fiber.context);
  fiber.context.uc_stack.ss_sp = fiber.stack.get();
  fiber.context.uc_stack.ss_size = kFiberStack;
  fiber.context.uc_link = &block.scheduler;
  makecontext(&fiber.context, fiber_entry, 0);
}

[[gnu::noinline]] inline void resume(Fiber& fiber, Block& block) { swapcontext(&block.scheduler, &fiber.context); }

template <class Kernel, class... Args>
void launch(dim3 grid, dim3 block_shape, Kernel kernel, Args... args) {
  const unsigned threads = block_shape.x * block_shape.y * block_shape.z;
  if (threads == 0 || threads > 1024) throw std::invalid_argument("a block has 1 to 1024 threads");
  if (grid.y > 65535 || grid.z > 65535) throw std::invalid_argument("grid.y and grid.z are at most 65535");
  gridDim = grid;
  blockDim = block_shape;
  auto call = [&] { kernel(args...); };
  Block block;
  block.body = [](void* closure) { (*static_cast<decltype(call)*>(closure))(); };
  block.closure = &call;
  block.fibers.resize(threads);
  for (auto& fiber : block.fibers) fiber.stack.reset(new char[kFiberStack]);
  current_block = &block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        unsigned t = 0;
        for (unsigned tz = 0; tz < block_shape.z; ++tz)
          for (unsigned ty = 0; ty < block_shape.y; ++ty)
            for (unsigned tx = 0; tx < block_shape.x; ++tx, ++t) {
              Fiber& fiber = block.fibers[t];
              fiber.index = dim3(tx, ty, tz);
              fiber.done = false;
              start(fiber, block);
            }
        block.all = Barrier{0, threads, 0};
        for (unsigned w = 0; w < 32; ++w) {
          const unsigned first = 32 * w;
          block.warps[w] = Barrier{0, first < threads ? (threads - first < 32 ? threads - first : 32) : 0, 0};
        }
        for (auto& parity : exchange_parity) parity = 0;
        blockIdx = dim3(bx, by, bz);
        for (bool alive = true; alive;) {  // one round: every live thread runs until it has to wait
          alive = false;
          const uint64_t before = block.progress;
          for (auto& fiber : block.fibers) {
            if (fiber.done) continue;
            block.running = &fiber;
            threadIdx = fiber.index;
            resume(fiber, block);
            alive = alive || !fiber.done;
          }
          if (alive && block.progress == before) {
            std::fprintf(stderr, "qcompile CUDA emulation: the threads of block (%u, %u, %u) wait on each other "
                         "forever (a barrier that not every thread reaches)\n", bx, by, bz);
            std::abort();
          }
        }
      }
  current_block = nullptr;
}

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32: D (16x8) = A (16x32, row-major) * B (32x8, column-major)
// + C, with each lane holding the fragments the PTX ISA documents for this shape:
//   groupID = lane / 4, threadID_in_group = lane % 4 (below: g, t);
//   A: a[r] holds bytes i = 4r..4r+3; row g for r in {0, 2}, g + 8 for r in {1, 3};
//      columns 4t..4t+3, plus 16 for r in {2, 3}; byte i % 4 in bits 8 (i % 4) and up;
//   B: b[r] holds rows (k) 4t..4t+3, plus 16 for r = 1, of column g;
//   C, D: c[r] at row g (r < 2) or g + 8 (r >= 2), column 2t + r % 2.
inline int8_t byte_of(uint32_t word, int i) { return static_cast<int8_t>((word >> (8 * i)) & 0xFF); }

inline int8_t a_element(const uint32_t (&a)[32][4], int row, int col) {
  const int g = row % 8, r = (row >= 8 ? 1 : 0) + (col >= 16 ? 2 : 0), t = (col % 16) / 4;
  return byte_of(a[4 * g + t][r], col % 4);
}

inline int8_t b_element(const uint32_t (&b)[32][2], int k, int col) {
  const int r = k >= 16 ? 1 : 0, t = (k % 16) / 4;
  return byte_of(b[4 * col + t][r], k % 4);
}

inline void mma_s8_16832(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const int32_t (&c)[4]) {
  const unsigned thread = linear_thread(), lane = thread % 32, warp = thread / 32;
  WarpExchange& x = exchange[exchange_parity[thread]][warp];
  exchange_parity[thread] ^= 1;
  for (int r = 0; r < 4; ++r) x.a[lane][r] = a[r], x.c[lane][r] = c[r];
  for (int r = 0; r < 2; ++r) x.b[lane][r] = b[r];
  wait_at(current_block->warps[warp]);  // every lane of the warp has deposited its operands
  const int g = static_cast<int>(lane / 4), t = static_cast<int>(lane % 4);
  for (int r = 0; r < 4; ++r) {
    const int row = g + (r >= 2 ? 8 : 0), col = 2 * t + r % 2;
    int32_t sum = 0;
    for (int k = 0; k < 32; ++k) sum += int32_t{a_element(x.a, row, k)} * int32_t{b_element(x.b, k, col)};
    const int32_t c_of = x.c[4 * (row % 8) + col / 2][(row >= 8 ? 2 : 0) + col % 2];
    d[r] = sum + c_of;
  }
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lanes 8i..8i+7 name the rows of matrix i; lane l gets, in r[i],
// bytes 4 (l % 4)..+3 of row l / 4 of matrix i.
inline void ldmatrix_x4(uint32_t (&r)[4], const uint8_t* row) {
  const unsigned thread = linear_thread(), lane = thread % 32, warp = thread / 32;
  WarpExchange& x = exchange[exchange_parity[thread]][warp];
  exchange_parity[thread] ^= 1;
  x.rows[lane] = row;
  wait_at(current_block->warps[warp]);  // every lane has named its row
  for (int i = 0; i < 4; ++i) std::memcpy(&r[i], x.rows[8 * i + lane / 4] + 4 * (lane % 4), 4);
}

}  // namespace qc_host

inline void __syncthreads() { qc_host::wait_at(qc_host::current_block->all); }

// Signed byte-wise dot product of two words, added to c (CUDA's int __dp4a(int, int, int)).
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) c += int{qc_host::byte_of(a, i)} * int{qc_host::byte_of(b, i)};
  return c;
}
