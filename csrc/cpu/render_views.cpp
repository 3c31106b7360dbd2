// CPU kernel of render_views (schema and contract in ops.cpp; pixel semantics in
// clever_kernels/reference/augment.py, per-pixel maths in augment_pixel.h).
//
// Output images run in parallel; one task renders one image start to finish in per-thread
// scratch buffers, so the two passes of the op (geometry + the colour ops before contrast, then
// contrast, the rest of the colour ops, blur, solarize, normalise) meet at a plain per-image
// reduction instead of a second sweep over the batch:
//   resize   the crop to S x S, separable (columns, then rows), flip folded into the store, clamp
//   geometry inverse elastic -> inverse rotation -> resized value per output pixel (skipped when
//            neither applies); the elastic noise regenerated from its seed and blurred
//   pass 1   a row at a time: the jitter ops before contrast, and the grayscale sum for
//            contrast's mean
//   pass 2   contrast and the later jitter ops, grayscale, each op a vectorised loop over the
//            planes, then the separable blur, solarize, normalise, one write in the output dtype
//            and layout.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include "clever_kernels/augment_pixel.h"
#include "clever_kernels/render_views_args.h"

namespace clever_kernels {
namespace {

using at::Tensor;
using namespace augment;

// ----------------------------------------------------------------------------------------------
// Value checks: every image entry, then every view row, before any pixel is read (the CUDA
// kernels assert the same conditions, render_views_args.h / augment_pixel.h).

void check_values(const Tensor& pixels, const Tensor& offsets, const Tensor& sizes, int64_t channels,
                  const Tensor& iparams, const Tensor& fparams) {
  const int64_t batch = offsets.size(0);
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* hw = sizes.data_ptr<int64_t>();
  const int c = static_cast<int>(channels);
  for (int64_t b = 0; b < batch; ++b) {
    check_image_entry(b, off, hw, c, pixels.numel());
  }
  const int64_t* ip = iparams.data_ptr<int64_t>();
  const float* fp = fparams.data_ptr<float>();
  for (int64_t r = 0; r < iparams.size(0); ++r) {
    check_view_rows(r, ip + r * kNumIParams, fp + r * kNumFParams, off, hw, batch, c, pixels.numel());
  }
}

// ----------------------------------------------------------------------------------------------
// Vector loops. The build targets baseline x86-64 (SSE2); where GCC can clone functions by target,
// the loops that carry most of the work get an AVX2 copy chosen at load time. Both compute the
// same IEEE operations in the same order (no FMA contraction, see setup.py), so the result does
// not depend on which copy runs.

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CLEVER_KERNELS_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLEVER_KERNELS_VECTOR_CLONES
#endif

// out[i] = sum over k < taps, in ascending k, of weight[k] * base[index[k] * stride + i], for
// i < n: the weighted sum of `taps` rows that every separable pass (resize, blur) is made of.
// The rows are summed 32 columns at a time in registers, so each tap costs one load per column
// instead of the load, add and store of an accumulator in memory; each out[i] adds its terms in
// the same order as a scalar loop would.
#if defined(__GNUC__)
// Float8 values never cross a call boundary (load8 and store8 are always inlined), so the ABI
// note GCC gives for passing 32-byte vectors without AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float Float8 __attribute__((vector_size(32)));

C10_ALWAYS_INLINE Float8 load8(const float* p) {
  Float8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

C10_ALWAYS_INLINE void store8(float* p, Float8 v) {
  std::memcpy(p, &v, sizeof v);
}
#endif

CLEVER_KERNELS_VECTOR_CLONES void weighted_rows(float* __restrict out, const float* __restrict base,
                                                std::ptrdiff_t stride, const int* __restrict index,
                                                const float* __restrict weight, int taps, int n) {
  int x = 0;
#if defined(__GNUC__)
  for (; x + 32 <= n; x += 32) {
    Float8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int k = 0; k < taps; ++k) {
      const float* row = base + index[k] * stride + x;
      const float w = weight[k];
      a0 += w * load8(row);
      a1 += w * load8(row + 8);
      a2 += w * load8(row + 16);
      a3 += w * load8(row + 24);
    }
    store8(out + x, a0);
    store8(out + x + 8, a1);
    store8(out + x + 16, a2);
    store8(out + x + 24, a3);
  }
  for (; x + 8 <= n; x += 8) {
    Float8 a = {};
    for (int k = 0; k < taps; ++k) {
      a += weight[k] * load8(base + index[k] * stride + x);
    }
    store8(out + x, a);
  }
#endif
  for (; x < n; ++x) {
    float a = 0.0f;
    for (int k = 0; k < taps; ++k) {
      a += weight[k] * base[index[k] * stride + x];
    }
    out[x] = a;
  }
}

CLEVER_KERNELS_VECTOR_CLONES void to_float(float* __restrict dst, const uint8_t* __restrict src, int n) {
  for (int i = 0; i < n; ++i) {
    dst[i] = static_cast<float>(src[i]);
  }
}

// at[x] = linear source index of rotated pixel (y, x) of an S x S image, or -1 (fill); terms[x]
// are the column terms, ty the row's.
CLEVER_KERNELS_VECTOR_CLONES void nearest_sources(const RotationTerms* __restrict terms, RotationTerms ty, int S,
                                                  int* __restrict at) {
  for (int x = 0; x < S; ++x) {
    int iy, ix;
    at[x] = rotation_nearest(terms[x], ty, S, &iy, &ix) ? iy * S + ix : -1;
  }
}

// to[x] = at[x] < 0 ? 0 : from[at[x]]; the load is made unconditional (index 0 for a fill) so
// that the loop becomes a vector gather.
CLEVER_KERNELS_VECTOR_CLONES void gather_or_zero(const float* __restrict from, const int* __restrict at, int n,
                                                 float* __restrict to) {
  for (int x = 0; x < n; ++x) {
    const int i = at[x];
    const float v = from[i < 0 ? 0 : i];
    to[x] = i < 0 ? 0.0f : v;
  }
}

// x[i] = clamp01(x[i] * scale)
CLEVER_KERNELS_VECTOR_CLONES void unit_clamp(float* __restrict x, float scale, int n) {
  for (int i = 0; i < n; ++i) {
    x[i] = clamp01(x[i] * scale);
  }
}

// dst[i] = normalise(solarize ? solarize(src[i]) : src[i])
CLEVER_KERNELS_VECTOR_CLONES void normalise_plane(float* __restrict dst, const float* __restrict src, size_t n,
                                                  bool solarized, float mean, float std) {
  if (solarized) {
    for (size_t i = 0; i < n; ++i) {
      dst[i] = normalise(solarize(src[i]), mean, std);
    }
  } else {
    for (size_t i = 0; i < n; ++i) {
      dst[i] = normalise(src[i], mean, std);
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Rendering one output image

struct Job {
  const uint8_t* pixels;
  const int64_t* offsets;
  const int64_t* sizes;
  int channels;
  const int64_t* iparams;
  const float* fparams;
  int size;
  std::array<float, 3> mean, std;
  bool bicubic, antialias;
  int rot_interp;
  bool channels_last;
};

// Source taps of every output index along one axis, flattened.
struct AxisTaps {
  std::vector<int> first;  // taps of output i: [first[i], first[i + 1])
  std::vector<int> index;
  std::vector<float> weight;

  void build(int in_size, int out_size, bool bicubic, bool antialias) {
    first.assign(1, 0);
    index.clear();
    weight.clear();
    for (int i = 0; i < out_size; ++i) {
      const ResampleSpan s = resample_span(i, in_size, out_size, bicubic, antialias);
      for (int k = 0; k < s.count; ++k) {
        index.push_back(span_index(s, k));
        weight.push_back(span_weight(s, k));
      }
      first.push_back(static_cast<int>(index.size()));
    }
  }
};

struct Scratch {
  AxisTaps xs, ys;
  std::vector<float> ring;       // (ring rows, crop width) crop rows of one channel in float
  std::vector<int> ring_row;     // the crop row in each ring slot, -1 for none yet
  std::vector<int> ring_slots;   // the ring slot of every vertical tap
  std::vector<float> cols;       // (C, S, crop width) after the vertical resize, in 0..255 units
  std::vector<float> cols_t;     // (C, crop width, S) its transpose
  std::vector<float> resized_t;  // (C, S, S) the resized crop, transposed, before the flip
  std::vector<float> resized;  // (3, S, S) flipped resized crop
  std::vector<float> field;    // (2, S, S) elastic displacement
  std::vector<float> image;    // (3, S, S) the view in float
  std::vector<float> tmp;      // (3, S, S) blur intermediate; elastic noise
  std::vector<float> line;     // one reflect-padded row
  std::vector<float> taps;
  std::vector<int> pad_index;
  std::vector<int> line_taps;  // 0, 1, ..., 2 radius: a blur tap's shift along the padded line
  std::vector<RotationTerms> rot_terms;  // rotation terms of every column (and row)
  std::vector<int> source;                  // one row's nearest-rotation source indices
};

void gaussian_taps(int radius, float sigma, std::vector<float>& taps) {
  taps.resize(2 * radius + 1);
  const float norm = gaussian_norm(radius, sigma);
  for (int t = -radius; t <= radius; ++t) {
    taps[t + radius] = gaussian_tap(t, sigma) / norm;
  }
}

// Separable Gaussian blur of `planes` S x S planes in place (rows, then columns; reflect padding).
void blur_planes(float* data, int planes, int size, int radius, float sigma, Scratch& sc) {
  gaussian_taps(radius, sigma, sc.taps);
  const int width = 2 * radius + 1;
  const float* w = sc.taps.data();
  sc.pad_index.resize(size + 2 * radius);
  for (int p = -radius; p < size + radius; ++p) {
    sc.pad_index[p + radius] = reflect_index(p, size);
  }
  sc.line.resize(size + 2 * radius);
  sc.line_taps.resize(width);
  for (int t = 0; t < width; ++t) {
    sc.line_taps[t] = t;
  }
  sc.tmp.resize(static_cast<size_t>(planes) * size * size);
  const size_t plane = static_cast<size_t>(size) * size;
  for (int c = 0; c < planes; ++c) {
    for (int y = 0; y < size; ++y) {
      const float* src = data + c * plane + static_cast<size_t>(y) * size;
      for (int p = 0; p < size + 2 * radius; ++p) {
        sc.line[p] = src[sc.pad_index[p]];
      }
      // tap t of dst[x] is line[x + t]: the taps are the line shifted by t
      weighted_rows(sc.tmp.data() + c * plane + static_cast<size_t>(y) * size, sc.line.data(), 1,
                    sc.line_taps.data(), w, width, size);
    }
    for (int y = 0; y < size; ++y) {
      weighted_rows(data + c * plane + static_cast<size_t>(y) * size, sc.tmp.data() + c * plane, size,
                    sc.pad_index.data() + y, w, width, size);
    }
  }
}

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols, in cache-sized tiles;
// a negative src_stride walks the source rows backwards. On x86-64 the tiles move as 4 x 4 blocks
// through SSE registers (baseline x86-64, so no dispatch), twice the speed of the scalar copy.
void transpose(const float* src, int rows, int cols, std::ptrdiff_t src_stride, float* dst,
               std::ptrdiff_t dst_stride) {
  constexpr int kTile = 16;
#if defined(__SSE2__)
  constexpr int kBlock = 4;
#else
  constexpr int kBlock = 1;
#endif
  const int rows_blocked = rows - rows % kBlock, cols_blocked = cols - cols % kBlock;
  for (int i0 = 0; i0 < rows_blocked; i0 += kTile) {
    const int i1 = std::min(i0 + kTile, rows_blocked);
    for (int j0 = 0; j0 < cols_blocked; j0 += kTile) {
      const int j1 = std::min(j0 + kTile, cols_blocked);
      for (int i = i0; i < i1; i += kBlock) {
        for (int j = j0; j < j1; j += kBlock) {
          const float* from = src + i * src_stride + j;
          float* to = dst + j * dst_stride + i;
#if defined(__SSE2__)
          __m128 r0 = _mm_loadu_ps(from), r1 = _mm_loadu_ps(from + src_stride);
          __m128 r2 = _mm_loadu_ps(from + 2 * src_stride), r3 = _mm_loadu_ps(from + 3 * src_stride);
          _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
          _mm_storeu_ps(to, r0);
          _mm_storeu_ps(to + dst_stride, r1);
          _mm_storeu_ps(to + 2 * dst_stride, r2);
          _mm_storeu_ps(to + 3 * dst_stride, r3);
#else
          *to = *from;
#endif
        }
      }
    }
  }
  // the edges the blocks leave: the last rows % kBlock rows, and the last columns of the others
  for (int i = 0; i < rows; ++i) {
    for (int j = i < rows_blocked ? cols_blocked : 0; j < cols; ++j) {
      dst[j * dst_stride + i] = src[i * src_stride + j];
    }
  }
}

// Reference step 1 (+ flip): the crop resized to S x S, clamped, stored mirrored when flipped.
// Both separable passes are vector loops over contiguous memory: columns first, over the source
// rows; then the crop is transposed so that the pass over rows also runs along contiguous
// memory (instead of gathering taps one pixel at a time), and the result transposed back, the
// flip folded into that copy. Pixels stay in 0..255 units until the last multiply.
void resize_crop(const Job& job, const ViewParams& v, Scratch& sc) {
  const int S = job.size;
  const int64_t width = job.sizes[2 * v.image + 1];
  const int cw = static_cast<int>(v.width);
  const int channels = job.channels;
  sc.xs.build(cw, S, job.bicubic, job.antialias);
  sc.ys.build(static_cast<int>(v.height), S, job.bicubic, job.antialias);
  const size_t cols_plane = static_cast<size_t>(S) * cw;
  const size_t plane = static_cast<size_t>(S) * S;
  // The vertical taps sum float rows: each crop row converted once, into a ring of as many rows
  // as the widest tap window spans rather than a float copy of the whole crop (the windows only
  // move down, so a row is never needed again once its slot is reused).
  int ring_rows = 1;
  for (int y = 0; y < S; ++y) {
    const auto lo = sc.ys.index.begin() + sc.ys.first[y], hi = sc.ys.index.begin() + sc.ys.first[y + 1];
    if (lo != hi) {
      const auto [min_row, max_row] = std::minmax_element(lo, hi);
      ring_rows = std::max(ring_rows, *max_row - *min_row + 1);
    }
  }
  sc.ring.resize(static_cast<size_t>(ring_rows) * cw);
  sc.ring_slots.resize(sc.ys.index.size());
  sc.cols.resize(channels * cols_plane);
  sc.cols_t.resize(channels * cols_plane);
  sc.resized_t.resize(channels * plane);
  sc.resized.resize(3 * plane);
  const uint8_t* image = job.pixels + job.offsets[v.image];
  const size_t src_plane = static_cast<size_t>(job.sizes[2 * v.image]) * width;
  const float to_unit = 1.0f / 255.0f;
  for (int c = 0; c < channels; ++c) {
    const uint8_t* crop = image + c * src_plane + static_cast<size_t>(v.top) * width + v.left;
    sc.ring_row.assign(ring_rows, -1);  // the crop row each slot holds
    // (S, cw): output rows, source columns
    float* cols = sc.cols.data() + c * cols_plane;
    for (int y = 0; y < S; ++y) {
      const int k0 = sc.ys.first[y], k1 = sc.ys.first[y + 1];
      for (int k = k0; k < k1; ++k) {
        const int row = sc.ys.index[k];
        const int slot = row % ring_rows;
        if (sc.ring_row[slot] != row) {
          to_float(sc.ring.data() + static_cast<size_t>(slot) * cw, crop + static_cast<size_t>(row) * width, cw);
          sc.ring_row[slot] = row;
        }
        sc.ring_slots[k] = slot;
      }
      weighted_rows(cols + static_cast<size_t>(y) * cw, sc.ring.data(), cw, sc.ring_slots.data() + k0,
                    sc.ys.weight.data() + k0, k1 - k0, cw);
    }
    // (cw, S): source columns, output rows
    float* cols_t = sc.cols_t.data() + c * cols_plane;
    transpose(cols, S, cw, cw, cols_t, S);
    // (S, S) transposed: output columns, output rows
    float* resized_t = sc.resized_t.data() + c * plane;
    for (int x = 0; x < S; ++x) {
      float* acc = resized_t + static_cast<size_t>(x) * S;
      const int k = sc.xs.first[x];
      weighted_rows(acc, cols_t, S, sc.xs.index.data() + k, sc.xs.weight.data() + k, sc.xs.first[x + 1] - k, S);
      unit_clamp(acc, to_unit, S);
    }
    // output column x lands at S - 1 - x when flipped: read the columns backwards
    const float* from = v.flip ? resized_t + (plane - S) : resized_t;
    transpose(from, S, S, v.flip ? -S : S, sc.resized.data() + c * plane, S);
  }
  for (int c = channels; c < 3; ++c) {
    std::copy(sc.resized.begin(), sc.resized.begin() + plane, sc.resized.begin() + c * plane);
  }
}

// Reference step 4's displacement field (alpha / S) * blur(noise), planes dx, dy.
void elastic_field(const ViewParams& v, int S, Scratch& sc) {
  const size_t plane = static_cast<size_t>(S) * S;
  sc.field.resize(2 * plane);
  for (int p = 0; p < 2; ++p) {
    for (int y = 0; y < S; ++y) {
      for (int x = 0; x < S; ++x) {
        sc.field[p * plane + static_cast<size_t>(y) * S + x] = elastic_noise(v.elastic_seed, p, y, x, S);
      }
    }
  }
  const int radius = elastic_radius(v.elastic_sigma);
  if (radius > 0) {
    blur_planes(sc.field.data(), 2, S, radius, v.elastic_sigma, sc);
  }
  const float scale = static_cast<float>(static_cast<double>(v.elastic_alpha) / S);
  for (auto& d : sc.field) {
    d *= scale;
  }
}

struct ResizedFromScratch {
  const float* data;
  int size;
  C10_ALWAYS_INLINE void operator()(int y, int x, float* rgb) const {
    load_planar_rgb(data, static_cast<int64_t>(size) * size, static_cast<int64_t>(y) * size + x, rgb);
  }
};

// Reference steps 2 to 4 into sc.image. Nearest rotation alone (CAug's default) gathers through
// tabulated rotation terms a row at a time; bilinear rotation and elastic go pixel by pixel.
void geometry(const Job& job, const ViewParams& v, Scratch& sc) {
  const int S = job.size;
  const size_t plane = static_cast<size_t>(S) * S;
  const Rotation rot = make_rotation(v.angle);
  float* img = sc.image.data();
  const float* src = sc.resized.data();
  if (!v.elastic && rot.active && job.rot_interp == kRotNearest) {
    // a column's x terms and a row's y terms are the same function of the index
    sc.rot_terms.resize(S);
    for (int i = 0; i < S; ++i) {
      sc.rot_terms[i] = rotation_terms(rot, i, S);
    }
    sc.source.resize(S);
    int* at = sc.source.data();
    for (int y = 0; y < S; ++y) {
      nearest_sources(sc.rot_terms.data(), sc.rot_terms[y], S, at);
      const size_t row = static_cast<size_t>(y) * S;
      for (int c = 0; c < 3; ++c) {
        gather_or_zero(src + c * plane, at, S, img + c * plane + row);
      }
    }
    return;
  }
  if (v.elastic) {
    elastic_field(v, S, sc);
  }
  const ResizedFromScratch resized{src, S};
  for (int y = 0; y < S; ++y) {
    for (int x = 0; x < S; ++x) {
      const size_t at = static_cast<size_t>(y) * S + x;
      const float dx = v.elastic ? sc.field[at] : 0.0f;
      const float dy = v.elastic ? sc.field[plane + at] : 0.0f;
      float rgb[3];
      geometry_pixel(rot, job.rot_interp, v.elastic, dx, dy, y, x, S, resized, rgb);
      img[at] = rgb[0];
      img[plane + at] = rgb[1];
      img[2 * plane + at] = rgb[2];
    }
  }
}

template <typename Op>
C10_ALWAYS_INLINE void each_pixel(float* __restrict r, float* __restrict g, float* __restrict b, size_t n,
                                  const Op& op) {
  for (size_t i = 0; i < n; ++i) {
    float rgb[3] = {r[i], g[i], b[i]};
    op(rgb);
    r[i] = rgb[0];
    g[i] = rgb[1];
    b[i] = rgb[2];
  }
}

// One jitter op over n planar pixels, the op chosen once so the loop over pixels vectorises.
CLEVER_KERNELS_VECTOR_CLONES void jitter_planes(float* r, float* g, float* b, size_t n, int op, float factor,
                                                float mean) {
  switch (op) {
    case kOpBrightness: each_pixel(r, g, b, n, [&](float* rgb) { adjust_brightness(rgb, factor); }); break;
    case kOpContrast: each_pixel(r, g, b, n, [&](float* rgb) { adjust_contrast(rgb, factor, mean); }); break;
    case kOpSaturation: each_pixel(r, g, b, n, [&](float* rgb) { adjust_saturation(rgb, factor); }); break;
    default: each_pixel(r, g, b, n, [&](float* rgb) { adjust_hue(rgb, factor); }); break;
  }
}

template <typename out_t>
void render_one(const Job& job, int64_t n, Scratch& sc, out_t* out) {
  const int S = job.size;
  const size_t plane = static_cast<size_t>(S) * S;
  const ViewParams v = load_view(job.iparams + n * kNumIParams, job.fparams + n * kNumFParams);
  resize_crop(job, v, sc);
  float* img;
  if (!v.elastic && !make_rotation(v.angle).active) {
    img = sc.resized.data();
  } else {
    sc.image.resize(3 * plane);
    geometry(job, v, sc);
    img = sc.image.data();
  }
  float* r = img;
  float* g = img + plane;
  float* b = img + 2 * plane;
  // Pass 1 ends at contrast, which needs the mean grayscale of the image as it stands then
  // (colour_pre's order); pass 2 (colour_post's) is the rest. Both run a row at a time, each op a
  // vector loop over the row while it stays in L1 (a whole global view does not fit in L2).
  const int rows_pre = v.jitter ? v.n_pre : 0;
  float mean = 0.0f;
  if (v.jitter) {
    double gray_sum = 0.0;
    for (int y = 0; y < S; ++y) {
      const size_t row = static_cast<size_t>(y) * S;
      for (int k = 0; k < rows_pre; ++k) {
        jitter_planes(r + row, g + row, b + row, S, v.order[k], factor_of(v, v.order[k]), 0.0f);
      }
      double row_sum = 0.0;
      for (int x = 0; x < S; ++x) {
        const float rgb[3] = {r[row + x], g[row + x], b[row + x]};
        row_sum += grayscale(rgb);
      }
      gray_sum += row_sum;
    }
    mean = static_cast<float>(gray_sum / static_cast<double>(plane));
  }
  if (v.jitter || v.grayscale) {
    for (int y = 0; y < S; ++y) {
      const size_t row = static_cast<size_t>(y) * S;
      for (int k = rows_pre; k < (v.jitter ? 4 : 0); ++k) {
        jitter_planes(r + row, g + row, b + row, S, v.order[k], factor_of(v, v.order[k]), mean);
      }
      if (v.grayscale) {
        for (int x = 0; x < S; ++x) {
          const float rgb[3] = {r[row + x], g[row + x], b[row + x]};
          r[row + x] = g[row + x] = b[row + x] = grayscale(rgb);
        }
      }
    }
  }
  const int radius = blur_radius(v.blur_sigma);
  if (radius > 0) {
    blur_planes(img, 3, S, radius, v.blur_sigma, sc);
  }
  for (int c = 0; c < 3; ++c) {
    const float m = job.mean[c], s = job.std[c];
    const float* src = img + c * plane;
    if (job.channels_last) {
      out_t* dst = out + static_cast<size_t>(n) * plane * 3 + c;
      for (size_t at = 0; at < plane; ++at) {
        dst[at * 3] = static_cast<out_t>(normalise(v.solarize ? solarize(src[at]) : src[at], m, s));
      }
    } else if constexpr (std::is_same_v<out_t, float>) {
      normalise_plane(out + (static_cast<size_t>(n) * 3 + c) * plane, src, plane, v.solarize, m, s);
    } else {
      out_t* dst = out + (static_cast<size_t>(n) * 3 + c) * plane;
      for (size_t at = 0; at < plane; ++at) {
        dst[at] = static_cast<out_t>(normalise(v.solarize ? solarize(src[at]) : src[at], m, s));
      }
    }
  }
}

Tensor render_views_cpu(const Tensor& pixels, const Tensor& offsets, const Tensor& sizes, int64_t channels,
                        const Tensor& iparams, const Tensor& fparams, int64_t size, at::ArrayRef<double> mean,
                        at::ArrayRef<double> std, bool antialias, int64_t interpolation,
                        int64_t rotation_interpolation, at::ScalarType out_dtype, bool channels_last) {
  check_render_views_args(pixels, offsets, sizes, channels, iparams, fparams, size, mean, std, interpolation,
               rotation_interpolation, out_dtype);
  check_values(pixels, offsets, sizes, channels, iparams, fparams);
  const int64_t n = iparams.size(0);
  auto out = at::empty({n, 3, size, size}, pixels.options().dtype(out_dtype),
                       channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (n == 0) {
    return out;
  }
  Job job;
  job.pixels = pixels.data_ptr<uint8_t>();
  job.offsets = offsets.data_ptr<int64_t>();
  job.sizes = sizes.data_ptr<int64_t>();
  job.channels = static_cast<int>(channels);
  job.iparams = iparams.data_ptr<int64_t>();
  job.fparams = fparams.data_ptr<float>();
  job.size = static_cast<int>(size);
  for (int c = 0; c < 3; ++c) {
    job.mean[c] = static_cast<float>(mean[c]);
    job.std[c] = static_cast<float>(std[c]);
  }
  job.bicubic = interpolation == kBicubic;
  job.antialias = antialias;
  job.rot_interp = static_cast<int>(rotation_interpolation);
  job.channels_last = channels_last;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "render_views_cpu", [&] {
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      Scratch scratch;
      for (int64_t i = begin; i < end; ++i) {
        render_one<scalar_t>(job, i, scratch, dst);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clever_kernels, CPU, m) {
  m.impl("render_views", &render_views_cpu);
}

}  // namespace clever_kernels
