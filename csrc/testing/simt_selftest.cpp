// Kernels that check simt.h itself, registered as torch.ops.clever_kernels_testing.simt_*:
// a barrier-dependent block reduction (wrong without real barriers), a kernel whose threads wait
// at different __syncthreads() (must be refused), and one where some threads return early.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "simt.h"

namespace clever_kernels {
namespace {

using at::Tensor;

constexpr int kThreads = 64;

// Reverses each block's 64 values through shared memory, then tree-sums them: every step reads
// what other threads wrote before the last barrier.
__global__ void reverse_and_sum_kernel(const float* in, float* reversed, float* sums) {
  __shared__ float buffer[kThreads];
  const int t = threadIdx.x;
  const int base = blockIdx.x * kThreads;
  buffer[t] = in[base + t];
  __syncthreads();
  const float mine = buffer[kThreads - 1 - t];
  __syncthreads();
  buffer[t] = mine;
  reversed[base + t] = mine;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (t < stride) {
      buffer[t] += buffer[t + stride];
    }
    __syncthreads();
  }
  if (t == 0) {
    sums[blockIdx.x] = buffer[0];
  }
}

__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
    out[threadIdx.x] = 1.0f;
  } else {
    __syncthreads();
    out[threadIdx.x] = 2.0f;
  }
}

// Threads beyond `n` return before the barrier; the others still meet at it.
__global__ void early_return_kernel(int n, float* out) {
  __shared__ float buffer[kThreads];
  const int t = threadIdx.x;
  if (t >= n) {
    return;
  }
  buffer[t] = static_cast<float>(t);
  __syncthreads();
  out[t] = buffer[n - 1 - t];
}

// The missing barrier: thread 0 writes, every thread reads, nothing in between.
__global__ void unsynchronised_broadcast_kernel(float* out) {
  __shared__ float value;
  if (threadIdx.x == 0) {
    value = 7.0f;
  }
  out[threadIdx.x] = value;
}

__global__ void throwing_kernel() {
  TORCH_CHECK(threadIdx.x != 5, "thread 5 refuses");
  __syncthreads();
}

Tensor simt_unsynchronised_broadcast() {
  auto out = at::zeros({kThreads}, at::kFloat);
  float* o = out.data_ptr<float>();
  simt::launch(dim3(1), dim3(kThreads), [&] { unsynchronised_broadcast_kernel(o); });
  return out;
}

void simt_throwing_thread() {
  simt::launch(dim3(1), dim3(kThreads), [&] { throwing_kernel(); });
}

std::vector<Tensor> simt_reverse_and_sum(const Tensor& in) {
  TORCH_CHECK(in.dim() == 2 && in.size(1) == kThreads && in.scalar_type() == at::kFloat && in.is_contiguous(),
              "simt_reverse_and_sum: a contiguous float32 (blocks, 64) tensor");
  auto reversed = at::empty_like(in);
  auto sums = at::empty({in.size(0)}, in.options());
  const float* src = in.data_ptr<float>();
  float* rev = reversed.data_ptr<float>();
  float* sum = sums.data_ptr<float>();
  simt::launch(dim3(static_cast<unsigned>(in.size(0))), dim3(kThreads), [&] { reverse_and_sum_kernel(src, rev, sum); });
  return {reversed, sums};
}

Tensor simt_divergent_barrier() {
  auto out = at::zeros({kThreads}, at::kFloat);
  float* o = out.data_ptr<float>();
  simt::launch(dim3(1), dim3(kThreads), [&] { divergent_barrier_kernel(o); });
  return out;
}

Tensor simt_early_return(int64_t n) {
  auto out = at::full({kThreads}, -1.0f, at::kFloat);
  float* o = out.data_ptr<float>();
  simt::launch(dim3(1), dim3(kThreads), [&] { early_return_kernel(static_cast<int>(n), o); });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(clever_kernels_testing, m) {
  m.def("simt_reverse_and_sum", &simt_reverse_and_sum);
  m.def("simt_divergent_barrier", &simt_divergent_barrier);
  m.def("simt_early_return", &simt_early_return);
  m.def("simt_unsynchronised_broadcast", &simt_unsynchronised_broadcast);
  m.def("simt_throwing_thread", &simt_throwing_thread);
}

}  // namespace clever_kernels
