// CPU kernel of render_views (schema and contract in ops.cpp; pixel semantics in
// clever_kernels/reference/augment.py, per-pixel maths in augment_pixel.h).
//
// Output images run in parallel; one task renders one image start to finish in per-thread
// scratch buffers, so the two passes of the op (geometry + the colour ops before contrast, then
// contrast, the rest of the colour ops, blur, solarize, normalise) meet at a plain per-image
// reduction instead of a second sweep over the batch:
//   resize   the crop to S x S, separable (rows, then columns), flip folded into the store, clamp
//   field    elastic noise regenerated from its seed, blurred once per image (separable)
//   pass 1   per output pixel: inverse elastic -> inverse rotation -> resized value, the jitter
//            ops before contrast, and the grayscale sum for contrast's mean
//   pass 2   contrast and the later jitter ops, grayscale (pointwise, in place), then the
//            separable blur, solarize, normalise, one write in the output dtype and layout.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "clever_kernels/augment_pixel.h"
#include "clever_kernels/render_views_args.h"

namespace clever_kernels {
namespace {

using at::Tensor;
using namespace augment;

// ----------------------------------------------------------------------------------------------
// Value checks, CPU only: the CUDA side cannot read the tables without a host sync, and the Python
// layer has already checked the same things.

void check_values(const Tensor& pixels, const Tensor& offsets, const Tensor& sizes, int64_t channels,
                  const Tensor& iparams, const Tensor& fparams) {
  const int64_t batch = offsets.size(0);
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* hw = sizes.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t h = hw[2 * b], w = hw[2 * b + 1];
    TORCH_CHECK(h >= 1 && w >= 1 && h <= (1 << 20) && w <= (1 << 20),
                "render_views: sizes[", b, "] = (", h, ", ", w, ") is not a valid image size");
    TORCH_CHECK(off[b] >= 0 && off[b] + channels * h * w <= pixels.numel(), "render_views: offsets[", b,
                "] = ", off[b], " with size ", h, "x", w, "x", channels, " runs outside pixels (",
                pixels.numel(), " bytes)");
  }
  const int64_t n = iparams.size(0);
  const int64_t* ip = iparams.data_ptr<int64_t>();
  const float* fp = fparams.data_ptr<float>();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t* p = ip + r * kNumIParams;
    const float* f = fp + r * kNumFParams;
    TORCH_CHECK(p[kImage] >= 0 && p[kImage] < batch, "render_views: iparams[", r, "] image index ", p[kImage],
                " is not in [0, ", batch, ")");
    const int64_t h = hw[2 * p[kImage]], w = hw[2 * p[kImage] + 1];
    TORCH_CHECK(p[kTop] >= 0 && p[kLeft] >= 0 && p[kHeight] >= 1 && p[kWidth] >= 1 &&
                    p[kTop] + p[kHeight] <= h && p[kLeft] + p[kWidth] <= w,
                "render_views: iparams[", r, "] crop box (top ", p[kTop], ", left ", p[kLeft], ", height ",
                p[kHeight], ", width ", p[kWidth], ") is not inside its ", h, "x", w, " image");
    int seen = 0;
    for (int k = 0; k < 4; ++k) {
      const int64_t op = p[kOrder0 + k];
      TORCH_CHECK(op >= 0 && op < 4 && !(seen & (1 << op)), "render_views: iparams[", r,
                  "] order is not a permutation of 0, 1, 2, 3");
      seen |= 1 << op;
    }
    TORCH_CHECK(std::isfinite(f[kBlurSigma]) && f[kBlurSigma] >= 0 && f[kBlurSigma] <= 1000,
                "render_views: fparams[", r, "] blur sigma must be in [0, 1000], got ", f[kBlurSigma]);
    TORCH_CHECK(std::isfinite(f[kElasticSigma]) && f[kElasticSigma] >= 0 && f[kElasticSigma] <= 1000,
                "render_views: fparams[", r, "] elastic sigma must be in [0, 1000], got ", f[kElasticSigma]);
    for (int k = 0; k < kNumFParams; ++k) {
      TORCH_CHECK(std::isfinite(f[k]), "render_views: fparams[", r, "] holds a non-finite value");
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
  std::vector<float> rows;     // (3, crop height, S) after the horizontal resize
  std::vector<float> resized;  // (3, S, S) flipped resized crop
  std::vector<float> field;    // (2, S, S) elastic displacement
  std::vector<float> image;    // (3, S, S) the view in float
  std::vector<float> tmp;      // (3, S, S) blur intermediate; elastic noise
  std::vector<float> line;     // one reflect-padded row
  std::vector<float> unit_row;  // one crop row converted to [0, 1]
  std::vector<float> taps;
  std::vector<int> pad_index;
  std::array<float, 256> unit;  // uint8 -> [0, 1]

  Scratch() {
    for (int v = 0; v < 256; ++v) {
      unit[v] = static_cast<float>(v) / 255.0f;
    }
  }
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
  sc.tmp.resize(static_cast<size_t>(planes) * size * size);
  const size_t plane = static_cast<size_t>(size) * size;
  for (int c = 0; c < planes; ++c) {
    for (int y = 0; y < size; ++y) {
      const float* src = data + c * plane + static_cast<size_t>(y) * size;
      for (int p = 0; p < size + 2 * radius; ++p) {
        sc.line[p] = src[sc.pad_index[p]];
      }
      // taps outermost so that the loop over x vectorises; each dst[x] still sums its taps in
      // ascending order
      float* dst = sc.tmp.data() + c * plane + static_cast<size_t>(y) * size;
      std::fill(dst, dst + size, 0.0f);
      for (int t = 0; t < width; ++t) {
        const float wt = w[t];
        const float* src_t = sc.line.data() + t;
        for (int x = 0; x < size; ++x) {
          dst[x] += wt * src_t[x];
        }
      }
    }
    for (int y = 0; y < size; ++y) {
      float* dst = data + c * plane + static_cast<size_t>(y) * size;
      std::fill(dst, dst + size, 0.0f);
      for (int t = 0; t < width; ++t) {
        const float* src = sc.tmp.data() + c * plane + static_cast<size_t>(sc.pad_index[y + t]) * size;
        const float wt = w[t];
        for (int x = 0; x < size; ++x) {
          dst[x] += wt * src[x];
        }
      }
    }
  }
}

// Reference step 1 (+ flip): the crop resized to S x S, clamped, stored mirrored when flipped.
void resize_crop(const Job& job, const ViewParams& v, Scratch& sc) {
  const int S = job.size;
  const int64_t width = job.sizes[2 * v.image + 1];
  const int ch = static_cast<int>(v.height);
  sc.xs.build(static_cast<int>(v.width), S, job.bicubic, job.antialias);
  sc.ys.build(ch, S, job.bicubic, job.antialias);
  sc.rows.resize(static_cast<size_t>(job.channels) * ch * S);
  sc.resized.resize(static_cast<size_t>(3) * S * S);
  const uint8_t* image = job.pixels + job.offsets[v.image];
  const size_t src_plane = static_cast<size_t>(job.sizes[2 * v.image]) * width;
  const int cw = static_cast<int>(v.width);
  sc.unit_row.resize(cw);
  float* unit_row = sc.unit_row.data();
  for (int c = 0; c < job.channels; ++c) {
    for (int r = 0; r < ch; ++r) {
      const uint8_t* row = image + c * src_plane + static_cast<size_t>(v.top + r) * width + v.left;
      // each source pixel feeds several taps: convert the row once
      for (int x = 0; x < cw; ++x) {
        unit_row[x] = sc.unit[row[x]];
      }
      float* dst = sc.rows.data() + (static_cast<size_t>(c) * ch + r) * S;
      for (int x = 0; x < S; ++x) {
        float acc = 0.0f;
        for (int k = sc.xs.first[x]; k < sc.xs.first[x + 1]; ++k) {
          acc += sc.xs.weight[k] * unit_row[sc.xs.index[k]];
        }
        dst[x] = acc;
      }
    }
  }
  std::vector<float>& acc = sc.line;
  acc.resize(S);
  for (int c = 0; c < job.channels; ++c) {
    for (int y = 0; y < S; ++y) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int k = sc.ys.first[y]; k < sc.ys.first[y + 1]; ++k) {
        const float* src = sc.rows.data() + (static_cast<size_t>(c) * ch + sc.ys.index[k]) * S;
        const float w = sc.ys.weight[k];
        for (int x = 0; x < S; ++x) {
          acc[x] += w * src[x];
        }
      }
      float* dst = sc.resized.data() + (static_cast<size_t>(c) * S + y) * S;
      for (int x = 0; x < S; ++x) {
        dst[v.flip ? S - 1 - x : x] = clamp01(acc[x]);
      }
    }
  }
  const size_t plane = static_cast<size_t>(S) * S;
  for (int c = job.channels; c < 3; ++c) {
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

template <typename out_t>
void render_one(const Job& job, int64_t n, Scratch& sc, out_t* out) {
  const int S = job.size;
  const size_t plane = static_cast<size_t>(S) * S;
  const ViewParams v = load_view(job.iparams + n * kNumIParams, job.fparams + n * kNumFParams);
  resize_crop(job, v, sc);
  if (v.elastic) {
    elastic_field(v, S, sc);
  }
  // Pass 1
  sc.image.resize(3 * plane);
  float* img = sc.image.data();
  const Rotation rot = make_rotation(v.angle);
  const ResizedFromScratch resized{sc.resized.data(), S};
  double gray_sum = 0.0;
  for (int y = 0; y < S; ++y) {
    double row_sum = 0.0;
    for (int x = 0; x < S; ++x) {
      const size_t at = static_cast<size_t>(y) * S + x;
      const float dx = v.elastic ? sc.field[at] : 0.0f;
      const float dy = v.elastic ? sc.field[plane + at] : 0.0f;
      float rgb[3];
      geometry_pixel(rot, job.rot_interp, v.elastic, dx, dy, y, x, S, resized, rgb);
      row_sum += colour_pre(v, rgb);
      img[at] = rgb[0];
      img[plane + at] = rgb[1];
      img[2 * plane + at] = rgb[2];
    }
    gray_sum += row_sum;
  }
  const float mean = static_cast<float>(gray_sum / static_cast<double>(plane));
  // Pass 2
  if (v.jitter || v.grayscale) {
    for (size_t at = 0; at < plane; ++at) {
      float rgb[3] = {img[at], img[plane + at], img[2 * plane + at]};
      colour_post(v, mean, rgb);
      img[at] = rgb[0];
      img[plane + at] = rgb[1];
      img[2 * plane + at] = rgb[2];
    }
  }
  const int radius = blur_radius(v.blur_sigma);
  if (radius > 0) {
    blur_planes(img, 3, S, radius, v.blur_sigma, sc);
  }
  for (int c = 0; c < 3; ++c) {
    const float m = job.mean[c], s = job.std[c];
    const float* src = img + c * plane;
    for (size_t at = 0; at < plane; ++at) {
      float x = src[at];
      if (v.solarize) {
        x = solarize(x);
      }
      const out_t value = static_cast<out_t>(normalise(x, m, s));
      if (job.channels_last) {
        out[(static_cast<size_t>(n) * plane + at) * 3 + c] = value;
      } else {
        out[(static_cast<size_t>(n) * 3 + c) * plane + at] = value;
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
