// The parameter draws of the sample_views op, one (view, sample) row at a time, written once for
// the CPU and CUDA implementations.
//
// The definition is clever_kernels/augment/sampler.py (its tensor-op sampler, the reference); the
// hash is clever_kernels/augment/rng.py's. Every float operation below is the one PyTorch applies
// there, in the same precision and order, with fused multiply-adds ruled out (mul_rn / add_rn), so
// a row comes out bit for bit as the tensor ops draw it, on every device. No libm function is
// called: where torchvision's crop takes an exp, both take portable_exp, built from such
// operations alone (glibc's, PyTorch's CPU and CUDA's exp each round some inputs differently,
// which would move a box where sqrt(area * aspect) lies within an ulp of a half-integer).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include <c10/macros/Macros.h>

#include "clever_kernels/augment_pixel.h"

namespace clever_kernels {
namespace sample {

// Output tables, field-major: field f of view j is the contiguous (B,) row [f][j].
enum IntField : int { kTop = 0, kLeft, kHeight, kWidth, kElasticSeed, kImageHeight, kImageWidth, kNumIntFields };
enum FloatField : int { kAngle = 0, kBrightness, kContrast, kSaturation, kHue, kBlurSigma, kNumFloatFields };
enum FlagField : int { kFlip = 0, kElastic, kJitter, kGrayscale, kSolarize, kNumFlagFields };

// Per-view constants, one float64 row per view (clever_kernels.augment.sampler.VIEW_CONSTANTS):
// the probabilities and ranges of the float32 draws hold float32 values, the crop's float64 ones.
enum ViewConstant : int {
  kFlipP = 0,
  kRotationP,
  kElasticP,
  kJitterP,
  kGrayscaleP,
  kBlurP,
  kSolarizeP,
  kDegreesLo,
  kDegreesSpan,
  kBrightnessLo,
  kBrightnessSpan,
  kContrastLo,
  kContrastSpan,
  kSaturationLo,
  kSaturationSpan,
  kHueLo,
  kHueSpan,
  kBlurSigmaLo,
  kBlurSigmaSpan,
  kScaleLo,
  kScaleSpan,
  kLogRatioLo,
  kLogRatioSpan,
  kRatioLo,
  kRatioHi,
  kElasticAlpha,  // view-level, float32 values: only copied into the render table
  kElasticSigma,
  kNumViewConstants
};

// Op ids and draw indices (sampler.py's module docstring).
enum Op : uint32_t { kOpCrop = 0, kOpFlip, kOpRotate, kOpElastic, kOpJitter, kOpGrayscale, kOpBlur, kOpSolarize };
constexpr int kCropAttempts = 10;
constexpr uint32_t kCropTopDraw = 2 * kCropAttempts;
constexpr uint32_t kCropLeftDraw = 2 * kCropAttempts + 1;

// The hash chain continued from `state` (rng.hash32 over the words so far) by one word.
C10_HOST_DEVICE inline uint32_t mix(uint32_t state, uint32_t word) {
  return augment::lowbias32(state ^ word);
}

// rng.to_unit: 24 bits, exact in float32.
C10_HOST_DEVICE inline float to_unit(uint32_t bits) {
  return static_cast<float>(bits >> 8) * 5.9604644775390625e-08f;  // 2^-24
}

// rng.to_index for n in [1, 2^39): ((bits >> 8) * n) >> 24, exact in int64.
C10_HOST_DEVICE inline int64_t to_index(uint32_t bits, int64_t n) {
  return (static_cast<int64_t>(bits >> 8) * n) >> 24;
}

// sampler.permutation_from_index: the k-th permutation of 0..3 in lexicographic order.
C10_HOST_DEVICE inline void permutation_from_index(int64_t k, int64_t* perm) {
  const int64_t digits[4] = {k / 6, (k % 6) / 2, k % 2, 0};
  for (int i = 3; i >= 0; --i) {
    perm[i] = digits[i];
    for (int j = i + 1; j < 4; ++j) {
      perm[j] += perm[j] >= perm[i] ? 1 : 0;
    }
  }
}

// One (view, sample) row's draws. Pointers address the row's element of each field (stride
// `field_stride` elements between fields), its 4 order entries, and its rows of render_views'
// parameter tables (augment::IParam, augment::FParam).
struct RowOut {
  int64_t* ints;
  float* floats;
  bool* flags;
  int64_t* order;
  int64_t field_stride;
  int64_t* iparams;
  float* fparams;
};

// The op's outputs (ops.cpp): rows are view-major, row = v * B + b of `rows` = V * B.
struct Outputs {
  int64_t* ints;
  float* floats;
  bool* flags;
  int64_t* order;
  int64_t* iparams;
  float* fparams;

  C10_HOST_DEVICE RowOut row(int64_t r, int64_t rows) const {
    return {ints + r, floats + r, flags + r, order + 4 * r, rows, iparams + r * augment::kNumIParams,
            fparams + r * augment::kNumFParams};
  }
};

// The hash state of one (view, sample) row: the chain continued from the seed and step's state by
// the sample's id (two words) and the view.
C10_HOST_DEVICE inline uint32_t row_state(uint32_t key_state, int64_t id, uint32_t view) {
  const uint64_t id_bits = static_cast<uint64_t>(id);
  const uint32_t state = mix(key_state, static_cast<uint32_t>(id_bits));
  return mix(mix(state, static_cast<uint32_t>(id_bits >> 32)), view);
}

// 2^k for k in [-1022, 1023], exactly, from its bits.
C10_HOST_DEVICE inline double pow2(int64_t k) {
  const uint64_t bits = static_cast<uint64_t>(k + 1023) << 52;
#ifdef __CUDA_ARCH__
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
#endif
}

// sampler.portable_exp: exp(x) for x in [-745, 709] within about an ulp, the same bits on every
// device. x = k ln2 + r with |r| <= ln2 / 2 (Cody and Waite's two-part ln2, whose high part has
// zero low bits, so k * ln2_hi is exact), exp(r) by its Taylor polynomial of degree 13 in Horner
// form (truncation below 1e-17), and 2^k applied as two exact powers of two, so that a subnormal
// result is reached through one rounding.
C10_HOST_DEVICE inline double portable_exp(double x) {
  using augment::dadd_rn;
  using augment::dmul_rn;
  const double coefficients[14] = {0x1.0000000000000p+0,  0x1.0000000000000p+0,  0x1.0000000000000p-1,
                                   0x1.5555555555555p-3,  0x1.5555555555555p-5,  0x1.1111111111111p-7,
                                   0x1.6c16c16c16c17p-10, 0x1.a01a01a01a01ap-13, 0x1.a01a01a01a01ap-16,
                                   0x1.71de3a556c734p-19, 0x1.27e4fb7789f5cp-22, 0x1.ae64567f544e4p-26,
                                   0x1.1eed8eff8d898p-29, 0x1.6124613a86d09p-33};  // 1 / n!
  const double k = ::nearbyint(dmul_rn(x, 0x1.71547652b82fep+0));  // x / ln2, rounded half to even
  const double r = dadd_rn(dadd_rn(x, -dmul_rn(k, 0x1.62e42fee00000p-1)), -dmul_rn(k, 0x1.a39ef35793c76p-33));
  double p = coefficients[13];
  for (int n = 12; n >= 0; --n) {
    p = dadd_rn(dmul_rn(p, r), coefficients[n]);
  }
  const int64_t k_int = static_cast<int64_t>(k);
  const int64_t half = k_int >> 1;  // floor, as the tensor ops' arithmetic shift
  return dmul_rn(dmul_rn(p, pow2(half)), pow2(k_int - half));
}

// torchvision's RandomResizedCrop as sampler._crop_boxes draws it: ten attempts in float64, the
// first that fits wins, else the whole image with its aspect ratio clamped, centred.
C10_HOST_DEVICE inline void crop_box(uint32_t state, int64_t image_h, int64_t image_w, const double* c,
                                     int64_t* box) {
  using augment::dadd_rn;
  using augment::dmul_rn;
  const double height = static_cast<double>(image_h);
  const double width = static_cast<double>(image_w);
  const double area = dmul_rn(height, width);
  const uint32_t crop = mix(state, kOpCrop);
  for (uint32_t a = 0; a < kCropAttempts; ++a) {
    const double u_scale = static_cast<double>(to_unit(mix(crop, 2 * a)));
    const double u_ratio = static_cast<double>(to_unit(mix(crop, 2 * a + 1)));
    const double target_area = dmul_rn(area, dadd_rn(c[kScaleLo], dmul_rn(c[kScaleSpan], u_scale)));
    const double aspect = portable_exp(dadd_rn(c[kLogRatioLo], dmul_rn(c[kLogRatioSpan], u_ratio)));
    const double w = ::nearbyint(::sqrt(dmul_rn(target_area, aspect)));
    const double h = ::nearbyint(::sqrt(target_area / aspect));
    if (w > 0.0 && w <= width && h > 0.0 && h <= height) {
      const int64_t h_int = static_cast<int64_t>(h), w_int = static_cast<int64_t>(w);
      box[0] = to_index(mix(crop, kCropTopDraw), image_h - h_int + 1);
      box[1] = to_index(mix(crop, kCropLeftDraw), image_w - w_int + 1);
      box[2] = h_int;
      box[3] = w_int;
      return;
    }
  }
  const double in_ratio = width / height;
  int64_t h_fb = image_h, w_fb = image_w;
  if (in_ratio < c[kRatioLo]) {
    h_fb = static_cast<int64_t>(::fmax(::nearbyint(width / c[kRatioLo]), 1.0));
  }
  if (in_ratio > c[kRatioHi]) {
    w_fb = static_cast<int64_t>(::fmax(::nearbyint(dmul_rn(height, c[kRatioHi])), 1.0));
  }
  box[0] = (image_h - h_fb) / 2;  // both non-negative: floor division
  box[1] = (image_w - w_fb) / 2;
  box[2] = h_fb;
  box[3] = w_fb;
}

// The row's render_views parameters, from the fields sample_row has written: what
// clever_kernels.augment._fused.param_tables builds from the AugParams, with `image` the sample's
// index in the batch.
static_assert(augment::kLeft == augment::kTop + 1 && augment::kHeight == augment::kTop + 2 &&
                  augment::kWidth == augment::kTop + 3,
              "the crop box's columns follow each other in both tables");
static_assert(int{augment::kAngle} == kAngle && int{augment::kBrightness} == kBrightness &&
                  int{augment::kContrast} == kContrast && int{augment::kSaturation} == kSaturation &&
                  int{augment::kHue} == kHue && int{augment::kBlurSigma} == kBlurSigma,
              "the float fields are the render table's first float columns, in order");
C10_HOST_DEVICE inline void render_row(const RowOut& out, int64_t image, const double* c) {
  const int64_t s = out.field_stride;
  int64_t* ip = out.iparams;
  float* fp = out.fparams;
  ip[augment::kImage] = image;
  for (int f = 0; f < 4; ++f) {
    ip[augment::kTop + f] = out.ints[(kTop + f) * s];
  }
  ip[augment::kElasticSeed] = out.ints[kElasticSeed * s];
  const int flag_columns[kNumFlagFields] = {augment::kFlip, augment::kElastic, augment::kJitter, augment::kGrayscale,
                                            augment::kSolarize};
  for (int f = 0; f < kNumFlagFields; ++f) {
    ip[flag_columns[f]] = out.flags[f * s];
  }
  for (int i = 0; i < 4; ++i) {
    ip[augment::kOrder0 + i] = out.order[i];
  }
  for (int f = 0; f < kNumFloatFields; ++f) {
    fp[f] = out.floats[f * s];
  }
  fp[augment::kElasticAlpha] = static_cast<float>(c[sample::kElasticAlpha]);
  fp[augment::kElasticSigma] = static_cast<float>(c[sample::kElasticSigma]);
}

// Every draw of one (view, sample) row, `image` the sample's index in the batch: `state` is its
// row_state, c the view's constants.
C10_HOST_DEVICE inline void sample_row(uint32_t state, int64_t image, int64_t image_h, int64_t image_w,
                                       const double* c, RowOut out) {
  using augment::add_rn;
  using augment::mul_rn;
  auto unit = [&](uint32_t op, uint32_t draw) { return to_unit(mix(mix(state, op), draw)); };
  // the float32 constants, exact in float64
  auto f32 = [&](int k) { return static_cast<float>(c[k]); };
  auto happens = [&](uint32_t op, int p) { return unit(op, 0) < f32(p); };
  auto within = [&](uint32_t op, uint32_t draw, int lo) { return add_rn(f32(lo), mul_rn(f32(lo + 1), unit(op, draw))); };
  const int64_t s = out.field_stride;

  int64_t box[4];
  crop_box(state, image_h, image_w, c, box);
  out.ints[kTop * s] = box[0];
  out.ints[kLeft * s] = box[1];
  out.ints[kHeight * s] = box[2];
  out.ints[kWidth * s] = box[3];
  out.ints[kImageHeight * s] = image_h;
  out.ints[kImageWidth * s] = image_w;

  out.flags[kFlip * s] = happens(kOpFlip, kFlipP);
  const bool rotate = happens(kOpRotate, kRotationP);
  out.floats[kAngle * s] = rotate ? within(kOpRotate, 1, kDegreesLo) : 0.0f;

  const bool elastic = happens(kOpElastic, kElasticP);
  out.flags[kElastic * s] = elastic;
  out.ints[kElasticSeed * s] = elastic ? static_cast<int64_t>(mix(mix(state, kOpElastic), 1)) : 0;

  const bool jitter = happens(kOpJitter, kJitterP);
  out.flags[kJitter * s] = jitter;
  out.floats[kBrightness * s] = jitter ? within(kOpJitter, 1, kBrightnessLo) : 1.0f;
  out.floats[kContrast * s] = jitter ? within(kOpJitter, 2, kContrastLo) : 1.0f;
  out.floats[kSaturation * s] = jitter ? within(kOpJitter, 3, kSaturationLo) : 1.0f;
  out.floats[kHue * s] = jitter ? within(kOpJitter, 4, kHueLo) : 0.0f;
  if (jitter) {
    permutation_from_index(to_index(mix(mix(state, kOpJitter), 5), 24), out.order);
  } else {
    for (int i = 0; i < 4; ++i) {
      out.order[i] = i;
    }
  }

  out.flags[kGrayscale * s] = happens(kOpGrayscale, kGrayscaleP);
  const bool blur = happens(kOpBlur, kBlurP);
  out.floats[kBlurSigma * s] = blur ? within(kOpBlur, 1, kBlurSigmaLo) : 0.0f;
  out.flags[kSolarize * s] = happens(kOpSolarize, kSolarizeP);
  render_row(out, image, c);
}

// Row `row` (= v * B + b) of the op: the arguments as ops.cpp names them, key_state the key's
// value, `views` x `batch` rows in all. Both builds run it once per row.
C10_HOST_DEVICE inline void draw_row(int64_t row, int64_t views, int64_t batch, uint32_t key_state, const int64_t* ids,
                                     const int64_t* sizes, int64_t first_view, const double* constants,
                                     const Outputs& out) {
  const int64_t v = row / batch, b = row % batch;
  sample_row(row_state(key_state, ids[b], static_cast<uint32_t>(first_view + v)), b, sizes[2 * b], sizes[2 * b + 1],
             constants + v * kNumViewConstants, out.row(row, views * batch));
}

}  // namespace sample
}  // namespace clever_kernels
