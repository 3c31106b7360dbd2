// Runs CUDA kernel code on the CPU, for tests: the built-ins a kernel body uses (threadIdx,
// blockIdx, gridDim, blockDim, __syncthreads, __shared__, a few intrinsics) defined for a host
// compiler, and launch(), which runs a grid one block at a time with each of the block's threads
// as a fiber (ucontext) on the calling thread.
//
// Semantics kept from the GPU, so that a kernel which is wrong there is wrong here:
// - __syncthreads() is a real barrier: a fiber runs until its next barrier (or its end), then the
//   next fiber runs; a block continues past a barrier only when every live thread has reached it.
//   Reading shared memory that another thread writes before the same barrier sees the old value
//   for every thread that runs earlier, so a missing barrier shows as a wrong result.
// - Live threads waiting at different __syncthreads() calls (a barrier in divergent code, undefined
//   on the GPU) abort the launch with an error naming both lines. Threads that have returned no
//   longer take part in barriers, as on sm_70 and later.
// - __shared__ variables are function statics, one instance per kernel, which is exact because
//   blocks run one after another. launch() fills nothing in them: a kernel reading shared memory
//   it did not write reads the previous block's values, which the comparison against the
//   reference then catches.
// Not modelled: warps, memory ordering between threads without a barrier, occupancy, timing.
//
// Include it after the ATen headers and before the kernel code: it defines CUDA's keywords as
// macros and max / min on int in the global namespace.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __launch_bounds__(...)
#define __syncthreads() ::simt::barrier(__LINE__)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct float3 {
  float x, y, z;
};

inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }

struct __half {
  uint16_t bits;
};

inline __half __float2half_rn(float v) { return __half{c10::Half(v).x}; }  // c10 rounds to nearest even
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline unsigned int __float_as_uint(float v) {
  unsigned int u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }

// The running fiber's coordinates; set by the scheduler before each switch into a fiber.
inline dim3 threadIdx, blockIdx, gridDim, blockDim;

namespace simt {

struct Block {
  enum class State { kReady, kAtBarrier, kDone };
  ucontext_t scheduler;
  std::vector<ucontext_t> contexts;
  std::vector<State> state;
  std::vector<std::vector<char>> stacks;
  std::vector<int> barrier_line;
  const std::function<void()>* body = nullptr;
  int current = 0;
};

inline Block*& running_block() {
  static Block* block = nullptr;
  return block;
}

inline void fiber_main() {
  Block& b = *running_block();
  (*b.body)();
  b.state[b.current] = Block::State::kDone;
  // returning ends the fiber; uc_link resumes the scheduler
}

inline void barrier(int line) {
  Block& b = *running_block();
  b.state[b.current] = Block::State::kAtBarrier;
  b.barrier_line[b.current] = line;
  swapcontext(&b.contexts[b.current], &b.scheduler);
}

// Runs body() as every thread of every block of `grid`, blocks in order x fastest, then y, z.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body, size_t stack_bytes = 64 * 1024) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  TORCH_CHECK(threads >= 1 && threads <= 1024, "simt::launch: 1 to 1024 threads per block, got ", threads);
  TORCH_CHECK(running_block() == nullptr, "simt::launch: launches do not nest");
  Block b;
  b.body = &body;
  b.contexts.resize(threads);
  b.state.resize(threads);
  b.barrier_line.resize(threads);
  b.stacks.assign(threads, std::vector<char>(stack_bytes));
  running_block() = &b;
  gridDim = grid;
  blockDim = block;
  struct Reset {
    ~Reset() { running_block() = nullptr; }
  } reset;
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, bz);
        for (int t = 0; t < threads; ++t) {
          TORCH_CHECK(getcontext(&b.contexts[t]) == 0, "simt::launch: getcontext failed");
          b.contexts[t].uc_stack.ss_sp = b.stacks[t].data();
          b.contexts[t].uc_stack.ss_size = b.stacks[t].size();
          b.contexts[t].uc_link = &b.scheduler;
          makecontext(&b.contexts[t], fiber_main, 0);
          b.state[t] = Block::State::kReady;
        }
        for (;;) {
          int waiting = 0, line = -1;
          for (int t = 0; t < threads; ++t) {
            if (b.state[t] == Block::State::kDone) {
              continue;
            }
            b.current = t;
            threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            b.state[t] = Block::State::kReady;
            TORCH_CHECK(swapcontext(&b.scheduler, &b.contexts[t]) == 0, "simt::launch: swapcontext failed");
            if (b.state[t] == Block::State::kAtBarrier) {
              TORCH_CHECK(line < 0 || line == b.barrier_line[t], "simt::launch: threads of block (", bx, ", ", by,
                          ", ", bz, ") wait at different __syncthreads() (lines ", line, " and ",
                          b.barrier_line[t], ")");
              line = b.barrier_line[t];
              ++waiting;
            }
          }
          if (waiting == 0) {
            break;
          }
        }
      }
    }
  }
}

}  // namespace simt
