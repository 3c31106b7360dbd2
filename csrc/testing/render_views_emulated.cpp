// render_views computed by the CUDA kernels (csrc/cuda/render_views_kernels.cuh) running on the
// CPU under simt.h, so the tests execute the GPU code on machines without a GPU. Registered as
// torch.ops.clever_kernels_testing.render_views, with clever_kernels::render_views's arguments,
// for CPU tensors. Built by python_tests/cuda_emulation.py, never by setup.py: it is a test
// instrument (one block at a time, one fiber per thread), not a backend.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "simt.h"
#include "../cuda/render_views_kernels.cuh"

namespace clever_kernels {
namespace {

using at::Tensor;
using namespace render_views_kernels;

struct FiberLaunch {
  // the GPU leaves fresh buffers uninitialised: NaN shows any element the kernels fail to write
  void prepare(const Tensor& out, const Tensor& inter, const Tensor& partial) const {
    out.fill_(std::numeric_limits<float>::quiet_NaN());
    inter.fill_(std::numeric_limits<float>::quiet_NaN());
    partial.fill_(std::numeric_limits<float>::quiet_NaN());
  }

  void pass1(dim3 grid, dim3 block, const Geometry& g, float* inter, float* partial) const {
    simt::launch(grid, block, [&] { render_pass1_kernel(g, inter, partial); });
  }

  template <typename scalar_t>
  void pass2(dim3 grid, dim3 block, const float* inter, const float* partial, const int64_t* iparams,
             const float* fparams, int size, float3 mean, float3 std, bool channels_last, scalar_t* out) const {
    simt::launch(grid, block, [&] {
      render_pass2_kernel<scalar_t>(inter, partial, iparams, fparams, size, mean, std, channels_last, out);
    });
  }
};

Tensor render_views_emulated(const Tensor& pixels, const Tensor& offsets, const Tensor& sizes, int64_t channels,
                             const Tensor& iparams, const Tensor& fparams, int64_t size, at::ArrayRef<double> mean,
                             at::ArrayRef<double> std, bool antialias, int64_t interpolation,
                             int64_t rotation_interpolation, at::ScalarType out_dtype, bool channels_last) {
  TORCH_CHECK(pixels.device().is_cpu(), "render_views (CUDA kernels emulated): CPU tensors only, got ",
              pixels.device());
  return render_views_with(FiberLaunch{}, pixels, offsets, sizes, channels, iparams, fparams, size, mean, std,
                           antialias, interpolation, rotation_interpolation, out_dtype, channels_last);
}

}  // namespace

TORCH_LIBRARY(clever_kernels_testing, m) {
  m.def("render_views", &render_views_emulated);
}

}  // namespace clever_kernels
