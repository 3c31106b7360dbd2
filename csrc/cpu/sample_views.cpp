// CPU kernel of sample_views (schema in ops.cpp; the draws in sample_draws.h): one task per block
// of (view, sample) rows, each row independent of every other.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "clever_kernels/sample_draws.h"
#include "clever_kernels/sample_views_args.h"

namespace clever_kernels {
namespace {

using at::Tensor;

SampleViewsOutputs sample_views_cpu(const Tensor& sizes, const Tensor& ids, const Tensor& key, int64_t first_view,
                                    const Tensor& constants) {
  check_sample_views_args(sizes, ids, key, first_view, constants);
  const int64_t views = constants.size(0), batch = sizes.size(0), rows = views * batch;
  const int64_t* size_data = sizes.data_ptr<int64_t>();
  for (int64_t i = 0; i < batch; ++i) {
    TORCH_CHECK(size_data[2 * i] >= 1 && size_data[2 * i + 1] >= 1, "sample_views: sizes[", i,
                "] must be >= 1 on both sides, got (", size_data[2 * i], ", ", size_data[2 * i + 1], ")");
  }
  const auto outputs = empty_sample_views_outputs(sizes, constants);
  const sample::Outputs out = output_pointers(outputs);
  const uint32_t key_state = static_cast<uint32_t>(key.item<int64_t>());
  const int64_t* id_data = ids.data_ptr<int64_t>();
  const double* const_data = constants.data_ptr<double>();
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      sample::draw_row(row, views, batch, key_state, id_data, size_data, first_view, const_data, out);
    }
  });
  return as_tuple(outputs);
}

}  // namespace

TORCH_LIBRARY_IMPL(clever_kernels, CPU, m) {
  m.impl("sample_views", &sample_views_cpu);
}

}  // namespace clever_kernels
