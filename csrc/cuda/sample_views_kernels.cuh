// The kernel of sample_views, written once for both builds that run it: csrc/cuda/sample_views.cu
// (nvcc) and csrc/testing/sample_views_emulated.cpp (a host compiler with csrc/testing/simt.h, so
// the test suite executes it where no GPU is present). One thread per (view, sample) row; the key
// is read on the device, so drawing never waits for the host.
//
// Expects from the including file: __global__, blockIdx, blockDim, threadIdx.
#pragma once

#include <cstdint>

#include "clever_kernels/sample_draws.h"

namespace clever_kernels {
namespace sample_views_kernels {

constexpr int kThreads = 128;

__global__ void sample_views_kernel(const int64_t* sizes, const int64_t* ids, const int64_t* key, int64_t first_view,
                                    const double* constants, int64_t views, int64_t batch, sample::Outputs out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row < views * batch) {
    sample::draw_row(row, views, batch, static_cast<uint32_t>(*key), ids, sizes, first_view, constants, out);
  }
}

// The launch's grid: enough blocks of kThreads for every row.
inline unsigned sample_views_blocks(int64_t views, int64_t batch) {
  const int64_t blocks = (views * batch + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= 0x7fffffff, "sample_views: ", views, " x ", batch, " rows are too many for one launch");
  return static_cast<unsigned>(blocks);
}

}  // namespace sample_views_kernels
}  // namespace clever_kernels
