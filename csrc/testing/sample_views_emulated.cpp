// sample_views computed by its CUDA kernel (csrc/cuda/sample_views_kernels.cuh) running on the CPU
// under simt.h, registered as torch.ops.clever_kernels_testing.sample_views with
// clever_kernels::sample_views's arguments, for CPU tensors; and the kernels' portable_exp alone.
// A test instrument, built by python_tests/cuda_emulation.py.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "simt.h"
#include "clever_kernels/sample_views_args.h"
#include "../cuda/sample_views_kernels.cuh"

namespace clever_kernels {
namespace {

using at::Tensor;
using namespace sample_views_kernels;

SampleViewsOutputs sample_views_emulated(const Tensor& sizes, const Tensor& ids, const Tensor& key,
                                         int64_t first_view, const Tensor& constants) {
  TORCH_CHECK(sizes.device().is_cpu(), "sample_views (CUDA kernel emulated): CPU tensors only, got ", sizes.device());
  check_sample_views_args(sizes, ids, key, first_view, constants);
  const auto outputs = empty_sample_views_outputs(sizes, constants);
  // the GPU leaves fresh buffers uninitialised: these values show any element the kernel skips
  for (const auto& t : outputs) {
    if (t.is_floating_point()) {
      t.fill_(std::numeric_limits<float>::quiet_NaN());
    } else {
      t.fill_(t.scalar_type() == at::kBool ? 1 : -7);
    }
  }
  const int64_t views = constants.size(0), batch = sizes.size(0);
  const sample::Outputs out = output_pointers(outputs);
  simt::launch(dim3(sample_views_blocks(views, batch)), dim3(kThreads), [&] {
    sample_views_kernel(sizes.data_ptr<int64_t>(), ids.data_ptr<int64_t>(), key.data_ptr<int64_t>(), first_view,
                        constants.data_ptr<double>(), views, batch, out);
  });
  return as_tuple(outputs);
}

// sample::portable_exp of every element of a float64 tensor, to hold it to sampler.portable_exp.
Tensor portable_exp(const Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kDouble, "portable_exp: float64 only, got ", x.scalar_type());
  Tensor in = x.contiguous(), out = at::empty_like(in);
  const double* src = in.data_ptr<double>();
  double* dst = out.data_ptr<double>();
  for (int64_t i = 0; i < in.numel(); ++i) {
    dst[i] = sample::portable_exp(src[i]);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(clever_kernels_testing, m) {
  m.def("sample_views", &sample_views_emulated);
  m.def("portable_exp", &portable_exp);
}

}  // namespace clever_kernels
