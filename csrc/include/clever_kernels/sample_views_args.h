// Argument checks and outputs of sample_views (schema in ops.cpp), shared by the CPU and CUDA hosts.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <tuple>

#include "clever_kernels/sample_draws.h"

namespace clever_kernels {

inline void check_sample_views_args(const at::Tensor& sizes, const at::Tensor& ids, const at::Tensor& key,
                                    int64_t first_view, const at::Tensor& constants) {
  TORCH_CHECK(sizes.scalar_type() == at::kLong && sizes.dim() == 2 && sizes.size(0) >= 1 && sizes.size(1) == 2,
              "sample_views: sizes must be an int64 tensor of shape (B, 2), B >= 1, got ", sizes.scalar_type(),
              " of shape ", sizes.sizes());
  TORCH_CHECK(ids.scalar_type() == at::kLong && ids.dim() == 1 && ids.size(0) == sizes.size(0),
              "sample_views: ids must be an int64 tensor of shape (B,) = (", sizes.size(0), ",), got ",
              ids.scalar_type(), " of shape ", ids.sizes());
  TORCH_CHECK(key.scalar_type() == at::kLong && key.dim() == 0,
              "sample_views: key must be a 0-dim int64 tensor, got ", key.scalar_type(), " of shape ", key.sizes());
  TORCH_CHECK(constants.scalar_type() == at::kDouble && constants.dim() == 2 && constants.size(0) >= 1 &&
                  constants.size(1) == sample::kNumViewConstants,
              "sample_views: constants must be a float64 tensor of shape (V, ", int(sample::kNumViewConstants),
              "), V >= 1, got ", constants.scalar_type(), " of shape ", constants.sizes());
  // the view number is one 32-bit word of the key
  TORCH_CHECK(first_view >= 0 && first_view <= (int64_t{1} << 32) - constants.size(0),
              "sample_views: views first_view .. first_view + V - 1 must lie in [0, 2^32), got first_view ",
              first_view, " and V = ", constants.size(0));
  for (const auto& t : {&ids, &key, &constants}) {
    TORCH_CHECK(t->device() == sizes.device(), "sample_views: ids, key and constants must be on sizes' device ",
                sizes.device(), ", got ", t->device());
  }
  for (const auto& t : {&sizes, &ids, &constants}) {
    TORCH_CHECK(t->is_contiguous(), "sample_views: sizes, ids and constants must be contiguous");
  }
}

// (ints (kNumIntFields, V, B) int64, floats (kNumFloatFields, V, B) float32, flags (kNumFlagFields,
// V, B) bool, order (V, B, 4) int64, iparams (V * B, kNumIParams) int64, fparams (V * B,
// kNumFParams) float32), uninitialised.
inline std::array<at::Tensor, 6> empty_sample_views_outputs(const at::Tensor& sizes, const at::Tensor& constants) {
  const int64_t views = constants.size(0), batch = sizes.size(0);
  const auto opts = sizes.options();
  return {at::empty({sample::kNumIntFields, views, batch}, opts.dtype(at::kLong)),
          at::empty({sample::kNumFloatFields, views, batch}, opts.dtype(at::kFloat)),
          at::empty({sample::kNumFlagFields, views, batch}, opts.dtype(at::kBool)),
          at::empty({views, batch, 4}, opts.dtype(at::kLong)),
          at::empty({views * batch, augment::kNumIParams}, opts.dtype(at::kLong)),
          at::empty({views * batch, augment::kNumFParams}, opts.dtype(at::kFloat))};
}

// The tuple an op returns.
using SampleViewsOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline SampleViewsOutputs as_tuple(const std::array<at::Tensor, 6>& t) {
  return {t[0], t[1], t[2], t[3], t[4], t[5]};
}

// Where the rows write, in outputs as empty_sample_views_outputs makes them.
inline sample::Outputs output_pointers(const std::array<at::Tensor, 6>& t) {
  return {t[0].data_ptr<int64_t>(), t[1].data_ptr<float>(), t[2].data_ptr<bool>(), t[3].data_ptr<int64_t>(),
          t[4].data_ptr<int64_t>(), t[5].data_ptr<float>()};
}

}  // namespace clever_kernels
