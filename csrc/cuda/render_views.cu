// CUDA build of render_views (schema and contract in ops.cpp; pixel semantics in
// clever_kernels/reference/augment.py; kernels in render_views_kernels.cuh, per-pixel maths in
// augment_pixel.h, shared with the CPU).
//
// Two launches per call (one output size), each a grid of 16 x 16 output tiles x N images:
//   pass 1  per output pixel: the elastic field (noise regenerated from its seed and blurred in
//           shared memory, see below), inverse elastic -> inverse rotation -> the resized crop,
//           evaluated directly from the uint8 source as the separable antialiased filter's
//           outer product (no resized intermediate), clamp, the jitter ops before contrast.
//           Writes a float32 intermediate and one grayscale partial sum per tile, reduced in the
//           block; the partials, summed in a fixed order in pass 2, make contrast's mean
//           deterministic (float atomics would make re-renders differ in the last bits).
//   pass 2  contrast with that mean, the later jitter ops and grayscale applied to every
//           neighbour as it is loaded (the colour ops are pointwise, and the blur must see their
//           output), the separable Gaussian blur with reflect padding, solarize, normalise, one
//           store in the output dtype and memory format.
// Both separable blurs (the elastic field's and the view's) go through shared memory in 16 x 16
// chunks: the tile's halo rows are processed 16 at a time and, within them, the halo columns 16 at
// a time, so any radius works with a fixed 2-3 KiB per chunk buffer; each halo value is computed
// once per chunk that covers it.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cuda_fp16.h>

#include "render_views_kernels.cuh"

namespace clever_kernels {
namespace {

using at::Tensor;
using namespace render_views_kernels;

struct StreamLaunch {
  cudaStream_t stream;

  void prepare(const Tensor&, const Tensor&, const Tensor&) const {}

  void pass1(dim3 grid, dim3 block, const Geometry& g, float* inter, float* partial) const {
    render_pass1_kernel<<<grid, block, 0, stream>>>(g, inter, partial);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename scalar_t>
  void pass2(dim3 grid, dim3 block, const float* inter, const float* partial, const int64_t* iparams,
             const float* fparams, int size, float3 mean, float3 std, bool channels_last, scalar_t* out) const {
    render_pass2_kernel<scalar_t><<<grid, block, 0, stream>>>(inter, partial, iparams, fparams, size, mean, std,
                                                              channels_last, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

Tensor render_views_cuda(const Tensor& pixels, const Tensor& offsets, const Tensor& sizes, int64_t channels,
                         const Tensor& iparams, const Tensor& fparams, int64_t size, at::ArrayRef<double> mean,
                         at::ArrayRef<double> std, bool antialias, int64_t interpolation,
                         int64_t rotation_interpolation, at::ScalarType out_dtype, bool channels_last) {
  const c10::cuda::CUDAGuard guard(pixels.device());
  return render_views_with(StreamLaunch{c10::cuda::getCurrentCUDAStream()}, pixels, offsets, sizes, channels,
                           iparams, fparams, size, mean, std, antialias, interpolation, rotation_interpolation,
                           out_dtype, channels_last);
}

}  // namespace

TORCH_LIBRARY_IMPL(clever_kernels, CUDA, m) {
  m.impl("render_views", &render_views_cuda);
}

}  // namespace clever_kernels
