// CUDA build of sample_views (schema in ops.cpp; the kernel in sample_views_kernels.cuh, the
// draws in sample_draws.h): one launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "clever_kernels/sample_views_args.h"
#include "sample_views_kernels.cuh"

namespace clever_kernels {
namespace {

using at::Tensor;
using namespace sample_views_kernels;

SampleViewsOutputs sample_views_cuda(const Tensor& sizes, const Tensor& ids, const Tensor& key, int64_t first_view,
                                     const Tensor& constants) {
  check_sample_views_args(sizes, ids, key, first_view, constants);
  const c10::cuda::CUDAGuard guard(sizes.device());
  const auto outputs = empty_sample_views_outputs(sizes, constants);
  const int64_t views = constants.size(0), batch = sizes.size(0);
  sample_views_kernel<<<sample_views_blocks(views, batch), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      sizes.data_ptr<int64_t>(), ids.data_ptr<int64_t>(), key.data_ptr<int64_t>(), first_view,
      constants.data_ptr<double>(), views, batch, output_pointers(outputs));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return as_tuple(outputs);
}

}  // namespace

TORCH_LIBRARY_IMPL(clever_kernels, CUDA, m) {
  m.impl("sample_views", &sample_views_cuda);
}

}  // namespace clever_kernels
