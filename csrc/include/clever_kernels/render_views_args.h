// Argument checks of render_views (schema in ops.cpp), shared by the CPU and CUDA hosts: dtypes,
// shapes, devices, contiguity and the scalar options; and the errors naming a table row that
// augment::view_table_error refuses, raised by the CPU op (and the emulated CUDA kernels) for the
// values inside the tables.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "clever_kernels/augment_pixel.h"

namespace clever_kernels {

inline void check_render_views_args(const at::Tensor& pixels, const at::Tensor& offsets,
                                    const at::Tensor& sizes, int64_t channels, const at::Tensor& iparams,
                                    const at::Tensor& fparams, int64_t size, at::ArrayRef<double> mean,
                                    at::ArrayRef<double> std, int64_t interpolation,
                                    int64_t rotation_interpolation, at::ScalarType out_dtype) {
  TORCH_CHECK(pixels.scalar_type() == at::kByte && pixels.dim() == 1,
              "render_views: pixels must be a flat uint8 tensor, got ", pixels.scalar_type(), " of shape ",
              pixels.sizes());
  TORCH_CHECK(pixels.is_contiguous(), "render_views: pixels must be contiguous");
  TORCH_CHECK(offsets.scalar_type() == at::kLong && offsets.dim() == 1 && offsets.size(0) >= 1,
              "render_views: offsets must be an int64 tensor of shape (B,), B >= 1, got ", offsets.scalar_type(),
              " of shape ", offsets.sizes());
  const int64_t batch = offsets.size(0);
  TORCH_CHECK(sizes.scalar_type() == at::kLong && sizes.dim() == 2 && sizes.size(0) == batch &&
                  sizes.size(1) == 2,
              "render_views: sizes must be an int64 tensor of shape (B, 2) = (", batch, ", 2), got ",
              sizes.scalar_type(), " of shape ", sizes.sizes());
  TORCH_CHECK(channels == 1 || channels == 3, "render_views: channels must be 1 or 3, got ", channels);
  TORCH_CHECK(iparams.scalar_type() == at::kLong && iparams.dim() == 2 && iparams.size(1) == augment::kNumIParams,
              "render_views: iparams must be an int64 tensor of shape (N, ", int(augment::kNumIParams), "), got ",
              iparams.scalar_type(), " of shape ", iparams.sizes());
  TORCH_CHECK(fparams.scalar_type() == at::kFloat && fparams.dim() == 2 && fparams.size(1) == augment::kNumFParams &&
                  fparams.size(0) == iparams.size(0),
              "render_views: fparams must be a float32 tensor of shape (N, ", int(augment::kNumFParams),
              ") with N = iparams.size(0) = ", iparams.size(0), ", got ", fparams.scalar_type(), " of shape ",
              fparams.sizes());
  TORCH_CHECK(!fparams.requires_grad(),
              "render_views: fparams requires grad; augmentation is not differentiable (detach the parameters)");
  for (const auto& t : {&offsets, &sizes, &iparams, &fparams}) {
    TORCH_CHECK(t->device() == pixels.device(), "render_views: offsets, sizes, iparams and fparams must be on "
                "pixels' device ", pixels.device(), ", got ", t->device());
  }
  TORCH_CHECK(offsets.is_contiguous(), "render_views: offsets must be contiguous");
  TORCH_CHECK(sizes.is_contiguous(), "render_views: sizes must be contiguous");
  TORCH_CHECK(iparams.is_contiguous(), "render_views: iparams must be contiguous");
  TORCH_CHECK(fparams.is_contiguous(), "render_views: fparams must be contiguous");
  // 4080: the CUDA grid puts one block per 16 x 16 tile in gridDim.y (at most 65535)
  TORCH_CHECK(size >= 1 && size <= 4080, "render_views: size must be in [1, 4080], got ", size);
  // normalisation runs in float32: each value must be finite there, and std no float32 zero
  constexpr double kFloatMax = std::numeric_limits<float>::max();
  constexpr double kFloatMinNormal = std::numeric_limits<float>::min();
  TORCH_CHECK(mean.size() == 3 && std::all_of(mean.begin(), mean.end(),
                                              [&](double m) { return std::fabs(m) <= kFloatMax; }),
              "render_views: mean must have 3 values, each finite in float32, got ", mean);
  TORCH_CHECK(std.size() == 3 && std::all_of(std.begin(), std.end(),
                                             [&](double s) { return s >= kFloatMinNormal && s <= kFloatMax; }),
              "render_views: std must have 3 values > 0, each a finite normal float32, got ", std);
  TORCH_CHECK(interpolation == augment::kBicubic || interpolation == augment::kBilinear,
              "render_views: interpolation must be 0 (bicubic) or 1 (bilinear), got ", interpolation);
  TORCH_CHECK(rotation_interpolation == augment::kRotNearest || rotation_interpolation == augment::kRotBilinear,
              "render_views: rotation_interpolation must be 0 (nearest) or 1 (bilinear), got ",
              rotation_interpolation);
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16,
              "render_views: out_dtype must be float32, float16 or bfloat16, got ", out_dtype);
}

// Raises naming image b's sizes or offsets entry where image_table_error refuses it.
inline void check_image_entry(int64_t b, const int64_t* offsets, const int64_t* sizes, int channels,
                              int64_t pixel_bytes) {
  const int64_t h = sizes[2 * b], w = sizes[2 * b + 1];
  const int error = augment::image_table_error(offsets[b], h, w, channels, pixel_bytes);
  TORCH_CHECK(error != augment::kBadImageSize, "render_views: sizes[", b, "] = (", h, ", ", w,
              ") is not a valid image size (each side in [1, 2^20])");
  TORCH_CHECK(error != augment::kImageOutsidePixels, "render_views: offsets[", b, "] = ", offsets[b], " with size ",
              h, "x", w, "x", channels, " runs outside pixels (", pixel_bytes, " bytes)");
}

// Raises naming row r of iparams / fparams (ip, fp) and what is wrong with it, where
// view_table_error refuses it.
inline void check_view_rows(int64_t r, const int64_t* ip, const float* fp, const int64_t* offsets,
                            const int64_t* sizes, int64_t batch, int channels, int64_t pixel_bytes) {
  using namespace augment;
  const int error = view_table_error(ip, fp, offsets, sizes, batch, channels, pixel_bytes);
  if (error == kTableOk) {
    return;
  }
  TORCH_CHECK(error != kImageIndexOutOfRange, "render_views: iparams[", r, "] image index ", ip[kImage],
              " is not in [0, ", batch, ")");
  check_image_entry(ip[kImage], offsets, sizes, channels, pixel_bytes);
  const int64_t h = sizes[2 * ip[kImage]], w = sizes[2 * ip[kImage] + 1];
  TORCH_CHECK(error != kCropOutsideImage, "render_views: iparams[", r, "] crop box (top ", ip[kTop], ", left ",
              ip[kLeft], ", height ", ip[kHeight], ", width ", ip[kWidth], ") is not inside its ", h, "x", w,
              " image");
  TORCH_CHECK(error != kOrderNotPermutation, "render_views: iparams[", r, "] order (", ip[kOrder0], ", ",
              ip[kOrder0 + 1], ", ", ip[kOrder0 + 2], ", ", ip[kOrder0 + 3],
              ") is not a permutation of 0, 1, 2, 3");
  TORCH_CHECK(error != kNonFiniteValue, "render_views: fparams[", r, "] holds a non-finite value: ",
              at::ArrayRef<float>(fp, kNumFParams));
  TORCH_CHECK(error != kBlurSigmaOutOfRange, "render_views: fparams[", r, "] blur sigma must be in [0, ", kMaxSigma,
              "], got ", fp[kBlurSigma]);
  TORCH_CHECK(error != kElasticSigmaOutOfRange, "render_views: fparams[", r, "] elastic sigma must be in [0, ",
              kMaxSigma, "], got ", fp[kElasticSigma]);
  TORCH_CHECK(false, "render_views: iparams / fparams[", r, "] refused with error ", error);
}

}  // namespace clever_kernels
