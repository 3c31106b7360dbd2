// Runs CUDA kernel code on the CPU, for tests: the built-ins a kernel body uses (threadIdx,
// blockIdx, gridDim, blockDim, __syncthreads, __shared__, a few intrinsics) defined for a host
// compiler, and launch(), which runs a grid one block at a time with each of the block's threads
// as a fiber (ucontext) on the calling thread.
//
// What it checks:
// - __syncthreads() is a real barrier: a fiber runs until its next barrier (or its end), then
//   another fiber runs; a block continues past a barrier only when every live thread has reached
//   it. Between two barriers the fibers run in a shuffled order, a new one for every interval
//   (seeded by the block and the interval, so a run is reproducible): where a barrier is missing,
//   some reader runs before the writer it needs and sees the old value, whichever thread writes.
//   One run can still miss a given missing barrier (every reader may happen to run after its
//   writer); the suite's many launches make that unlikely, not impossible.
// - Live threads waiting at different __syncthreads() calls (a barrier in divergent code,
//   undefined on the GPU) abort the launch with an error. Call sites are told apart by line and
//   by return address, so a helper inlined into both branches is caught; a barrier inside one
//   out-of-line helper called from both branches is not.
// - Threads that have returned no longer take part in barriers, as on sm_70 and later.
// - An exception thrown in a fiber (a TORCH_CHECK in kernel code) ends the launch and is rethrown
//   by launch(); a fiber overrunning its stack hits a guard page (a crash, not silent corruption).
// What it does not model: warps and their lock-step, memory ordering without barriers, races
// between blocks (blocks run one after another), atomics, occupancy, timing; __shared__ variables
// are function statics, zero before the first block and then holding the previous block's
// values, not poisoned; device-only code paths (#ifdef __CUDA_ARCH__: the __fmul_rn-style
// intrinsics), nvcc's fused multiply-adds and CUDA's libm are replaced by the host's, so equal
// results here say nothing about the GPU's last bits.
//
// Include it after the ATen headers and before the kernel code: it defines CUDA's keywords as
// macros and max / min on int in the global namespace.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <numeric>
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

// Fiber stacks with a PROT_NONE page below each, so an overflow faults.
class Stacks {
 public:
  Stacks(int count, size_t bytes) : page_(static_cast<size_t>(sysconf(_SC_PAGESIZE))) {
    stride_ = (bytes + page_ - 1) / page_ * page_ + page_;
    size_ = stride_ * count;
    void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "simt::launch: cannot map ", size_, " bytes of fiber stacks");
    base_ = static_cast<char*>(p);
    for (int i = 0; i < count; ++i) {
      TORCH_CHECK(mprotect(base_ + i * stride_, page_, PROT_NONE) == 0, "simt::launch: mprotect failed");
    }
  }
  ~Stacks() { munmap(base_, size_); }
  Stacks(const Stacks&) = delete;
  Stacks& operator=(const Stacks&) = delete;
  char* stack(int i) const { return base_ + i * stride_ + page_; }
  size_t stack_size() const { return stride_ - page_; }

 private:
  size_t page_, stride_ = 0, size_ = 0;
  char* base_ = nullptr;
};

struct Block {
  enum class State { kReady, kAtBarrier, kDone };
  ucontext_t scheduler;
  std::vector<ucontext_t> contexts;
  std::vector<State> state;
  std::vector<int> barrier_line;
  std::vector<void*> barrier_site;
  const std::function<void()>* body = nullptr;
  std::exception_ptr error;
  int current = 0;
};

inline Block*& running_block() {
  static Block* block = nullptr;
  return block;
}

inline void fiber_main() {
  Block& b = *running_block();
  try {
    (*b.body)();
  } catch (...) {
    if (!b.error) {
      b.error = std::current_exception();
    }
  }
  b.state[b.current] = Block::State::kDone;
  // returning ends the fiber; uc_link resumes the scheduler
}

__attribute__((noinline)) inline void barrier(int line) {
  Block& b = *running_block();
  b.state[b.current] = Block::State::kAtBarrier;
  b.barrier_line[b.current] = line;
  b.barrier_site[b.current] = __builtin_return_address(0);
  swapcontext(&b.contexts[b.current], &b.scheduler);
}

// A permutation of 0..n-1 from (block, interval): splitmix64 for the random stream.
inline void shuffle(std::vector<int>& order, uint64_t seed) {
  std::iota(order.begin(), order.end(), 0);
  for (size_t i = order.size(); i > 1; --i) {
    seed += 0x9e3779b97f4a7c15ull;
    uint64_t z = seed;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::swap(order[i - 1], order[z % i]);
  }
}

// Runs body() as every thread of every block of `grid`, blocks in order x fastest, then y, z.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body, size_t stack_bytes = 64 * 1024) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  TORCH_CHECK(threads >= 1 && threads <= 1024 && block.z <= 64, "simt::launch: 1 to 1024 threads per block (z <= 64), got ",
              block.x, " x ", block.y, " x ", block.z);
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.y <= 65535 && grid.z <= 65535,
              "simt::launch: grid ", grid.x, " x ", grid.y, " x ", grid.z, " outside CUDA's limits");
  TORCH_CHECK(running_block() == nullptr, "simt::launch: launches do not nest");
  Block b;
  b.body = &body;
  b.contexts.resize(threads);
  b.state.resize(threads);
  b.barrier_line.resize(threads);
  b.barrier_site.resize(threads);
  const Stacks stacks(threads, stack_bytes);
  std::vector<int> order(threads);
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
        const uint64_t block_key = (static_cast<uint64_t>(bz) * grid.y + by) * grid.x + bx;
        for (int t = 0; t < threads; ++t) {
          TORCH_CHECK(getcontext(&b.contexts[t]) == 0, "simt::launch: getcontext failed");
          b.contexts[t].uc_stack.ss_sp = stacks.stack(t);
          b.contexts[t].uc_stack.ss_size = stacks.stack_size();
          b.contexts[t].uc_link = &b.scheduler;
          makecontext(&b.contexts[t], fiber_main, 0);
          b.state[t] = Block::State::kReady;
        }
        for (uint64_t interval = 0;; ++interval) {
          shuffle(order, block_key * 0x100000001b3ull + interval);
          int waiting = 0, first = -1;
          for (const int t : order) {
            if (b.state[t] == Block::State::kDone) {
              continue;
            }
            b.current = t;
            threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            b.state[t] = Block::State::kReady;
            TORCH_CHECK(swapcontext(&b.scheduler, &b.contexts[t]) == 0, "simt::launch: swapcontext failed");
            if (b.error) {
              std::rethrow_exception(b.error);
            }
            if (b.state[t] == Block::State::kAtBarrier) {
              if (first < 0) {
                first = t;
              }
              TORCH_CHECK(b.barrier_line[t] == b.barrier_line[first] && b.barrier_site[t] == b.barrier_site[first],
                          "simt::launch: threads of block (", bx, ", ", by, ", ", bz,
                          ") wait at different __syncthreads() (lines ", b.barrier_line[first], " and ",
                          b.barrier_line[t], ")");
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
