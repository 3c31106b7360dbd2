// Per-pixel maths of the render_views op, written once for the CPU and CUDA implementations.
//
// The definition is clever_kernels/reference/augment.py; every function here names the reference
// step it mirrors. Pixels are float32 in [0, 1]. Where the reference decides something by a
// comparison that float rounding can flip (which source pixel a nearest-neighbour rotation picks),
// the arithmetic below repeats the reference's own operations and precisions (float64 for the
// rotation grid, then float32 for grid_sample's unnormalisation), with fused multiply-adds
// disabled, so that the CPU and the GPU land on the same side of a tie as PyTorch does.
#pragma once

#include <cmath>
#include <cstdint>

#include <c10/macros/Macros.h>

namespace clever_kernels {
namespace augment {

// ------------------------------------------------------------------------------------------------
// Parameter tables (one row per output image); the Python layer builds them in this order.

enum IParam : int {
  kImage = 0,
  kTop,
  kLeft,
  kHeight,
  kWidth,
  kFlip,
  kElastic,
  kElasticSeed,
  kJitter,
  kOrder0,  // kOrder0..kOrder0 + 3: the jitter ops in application order
  kGrayscale = kOrder0 + 4,
  kSolarize,
  kNumIParams
};

enum FParam : int {
  kAngle = 0,
  kBrightness,
  kContrast,
  kSaturation,
  kHue,
  kBlurSigma,
  kElasticAlpha,
  kElasticSigma,
  kNumFParams
};

enum Interpolation : int { kBicubic = 0, kBilinear = 1 };
enum RotationInterpolation : int { kRotNearest = 0, kRotBilinear = 1 };
enum JitterOp : int { kOpBrightness = 0, kOpContrast = 1, kOpSaturation = 2, kOpHue = 3 };

// Largest blur or elastic sigma the callers accept (clever_kernels.augment.params.MAX_SIGMA).
constexpr float kMaxSigma = 1000.0f;

// Why a table row cannot be rendered, defined once for every kernel: the CPU op raises on it
// before rendering and the CUDA kernels assert on it in every block (the host could read the
// tables only after a device sync). Either way no kernel reads outside an image or blurs
// without bound.
enum TableError : int {
  kTableOk = 0,
  kImageIndexOutOfRange,
  kBadImageSize,
  kImageOutsidePixels,
  kCropOutsideImage,
  kOrderNotPermutation,
  kNonFiniteValue,
  kBlurSigmaOutOfRange,
  kElasticSigmaOutOfRange,
};

// Image b's entry of the offsets and sizes tables against a pixel buffer of pixel_bytes; the
// bound on the sides keeps channels * height * width far from overflow.
C10_HOST_DEVICE inline int image_table_error(int64_t offset, int64_t height, int64_t width, int channels,
                                             int64_t pixel_bytes) {
  if (!(height >= 1 && width >= 1 && height <= (1 << 20) && width <= (1 << 20))) {
    return kBadImageSize;
  }
  if (!(offset >= 0 && offset <= pixel_bytes - channels * height * width)) {
    return kImageOutsidePixels;
  }
  return kTableOk;
}

// false for NaN and both infinities, written with one comparison that host and device
// compilers treat alike
C10_HOST_DEVICE inline bool is_finite(float x) { return ::fabsf(x) <= 3.40282347e38f; }

// One view's rows ip (kNumIParams) and fp (kNumFParams), with the image it names.
C10_HOST_DEVICE inline int view_table_error(const int64_t* ip, const float* fp, const int64_t* offsets,
                                            const int64_t* sizes, int64_t batch, int channels,
                                            int64_t pixel_bytes) {
  const int64_t b = ip[kImage];
  if (b < 0 || b >= batch) {
    return kImageIndexOutOfRange;
  }
  const int64_t height = sizes[2 * b], width = sizes[2 * b + 1];
  const int image = image_table_error(offsets[b], height, width, channels, pixel_bytes);
  if (image != kTableOk) {
    return image;
  }
  if (!(ip[kTop] >= 0 && ip[kLeft] >= 0 && ip[kHeight] >= 1 && ip[kWidth] >= 1 &&
        ip[kTop] <= height - ip[kHeight] && ip[kLeft] <= width - ip[kWidth])) {
    return kCropOutsideImage;
  }
  int seen = 0;
  for (int k = 0; k < 4; ++k) {
    const int64_t op = ip[kOrder0 + k];
    if (op < 0 || op > 3 || (seen & (1 << op))) {
      return kOrderNotPermutation;
    }
    seen |= 1 << op;
  }
  // written so that NaN fails them too
  if (!(fp[kBlurSigma] >= 0.0f && fp[kBlurSigma] <= kMaxSigma)) {
    return kBlurSigmaOutOfRange;
  }
  if (!(fp[kElasticSigma] >= 0.0f && fp[kElasticSigma] <= kMaxSigma)) {
    return kElasticSigmaOutOfRange;
  }
  for (int k = 0; k < kNumFParams; ++k) {
    if (!is_finite(fp[k])) {
      return kNonFiniteValue;
    }
  }
  return kTableOk;
}

struct ViewParams {
  int64_t image, top, left, height, width;
  bool flip, elastic, jitter, grayscale, solarize;
  uint32_t elastic_seed;
  int order[4];
  // Jitter ops applied before contrast (pass 1) are order[0 .. n_pre); pass 2 does the rest.
  int n_pre;
  float angle, factor[4], blur_sigma, elastic_alpha, elastic_sigma;
};

C10_HOST_DEVICE inline ViewParams load_view(const int64_t* ip, const float* fp) {
  ViewParams v;
  v.image = ip[kImage];
  v.top = ip[kTop];
  v.left = ip[kLeft];
  v.height = ip[kHeight];
  v.width = ip[kWidth];
  v.flip = ip[kFlip] != 0;
  v.elastic = ip[kElastic] != 0;
  v.elastic_seed = static_cast<uint32_t>(ip[kElasticSeed] & 0xffffffffll);
  v.jitter = ip[kJitter] != 0;
  // n_pre: the slots before contrast's, counted with a fixed trip count (no runtime index)
  v.n_pre = 0;
  bool contrast_seen = false;
  for (int k = 0; k < 4; ++k) {
    v.order[k] = static_cast<int>(ip[kOrder0 + k]);
    contrast_seen = contrast_seen || v.order[k] == kOpContrast;
    v.n_pre += contrast_seen ? 0 : 1;
  }
  if (!v.jitter) {
    v.n_pre = 0;
  }
  v.grayscale = ip[kGrayscale] != 0;
  v.solarize = ip[kSolarize] != 0;
  v.angle = fp[kAngle];
  for (int k = 0; k < 4; ++k) {
    v.factor[k] = fp[kBrightness + k];
  }
  v.blur_sigma = fp[kBlurSigma];
  v.elastic_alpha = fp[kElasticAlpha];
  v.elastic_sigma = fp[kElasticSigma];
  return v;
}

// ------------------------------------------------------------------------------------------------
// Correctly rounded arithmetic that the compiler may not contract into FMAs. Used where ties
// matter. nvcc contracts by default, so device code says so with intrinsics; host code is built
// with -ffp-contract=off (setup.py), so a plain operation is one IEEE operation there and the
// loops that use these still vectorise.

C10_HOST_DEVICE inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

C10_HOST_DEVICE inline float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

C10_HOST_DEVICE inline double dmul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

C10_HOST_DEVICE inline double dadd_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// min and max for values that are never NaN here: fminf / fmaxf are library calls on the host
// (their NaN rules), these compile to one instruction and let loops vectorise.
C10_HOST_DEVICE inline float min_f(float a, float b) {
  return b < a ? b : a;
}

C10_HOST_DEVICE inline float max_f(float a, float b) {
  return a < b ? b : a;
}

// floor and round-half-to-even without libm: baseline x86-64 (SSE2) has no rounding instruction,
// so std::floor and std::nearbyint are calls, and they sit in every pixel's inner maths. Both are
// exact for |x| < 2^22 (pixel coordinates and hue values, far inside that range); larger floats
// are integers already. Written with selects and no branch, so loops over pixels vectorise.
C10_HOST_DEVICE inline float round_half_even(float x) {
#ifdef __CUDA_ARCH__
  return ::nearbyintf(x);
#else
  // 1.5 * 2^23: the sum's last mantissa bit is the units digit, rounded half to even
  const float rounded = add_rn(add_rn(x, 12582912.0f), -12582912.0f);
  return ::fabsf(x) < 4194304.0f ? rounded : x;
#endif
}

// From the rounding rather than through an int conversion: GCC vectorises this form for AVX2
// as well as SSE2.
C10_HOST_DEVICE inline float floor_exact(float x) {
#ifdef __CUDA_ARCH__
  return ::floorf(x);
#else
  const float rounded = round_half_even(x);
  const float below = rounded - 1.0f;
  return rounded > x ? below : rounded;
#endif
}

// ------------------------------------------------------------------------------------------------
// Counter-based hash (clever_kernels/augment/rng.py).

C10_HOST_DEVICE inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

C10_HOST_DEVICE inline uint32_t hash32(uint32_t w0, uint32_t w1) {
  return lowbias32(lowbias32(0x9e3779b9u ^ w0) ^ w1);
}

C10_HOST_DEVICE inline float hash_uniform(uint32_t key, uint32_t counter) {
  return static_cast<float>(hash32(key, counter) >> 8) * 5.9604644775390625e-08f;  // 2^-24
}

// Elastic noise n[plane, y, x] in [-1, 1) (reference step 4), plane 0 dx, 1 dy.
C10_HOST_DEVICE inline float elastic_noise(uint32_t seed, int plane, int y, int x, int size) {
  const uint32_t s = static_cast<uint32_t>(size);
  const uint32_t counter = (static_cast<uint32_t>(plane) * s + static_cast<uint32_t>(y)) * s +
                           static_cast<uint32_t>(x);
  return 2.0f * hash_uniform(seed, counter) - 1.0f;
}

// ------------------------------------------------------------------------------------------------
// Filtering helpers.

// numpy's "reflect" (edge not repeated), periodic so that any radius works on any size.
C10_HOST_DEVICE inline int reflect_index(int p, int n) {
  if (n == 1) {
    return 0;
  }
  const int period = 2 * (n - 1);
  int m = p % period;
  if (m < 0) {
    m += period;
  }
  return m >= n ? period - m : m;
}

// Unnormalised Gaussian tap exp(-t^2 / (2 sigma^2)), as reference.gaussian_taps (float32).
C10_HOST_DEVICE inline float gaussian_tap(int t, float sigma) {
  const float u = static_cast<float>(t) / sigma;
  return ::expf(-0.5f * (u * u));
}

// Sum of the taps at -radius..radius: divide a tap by it to normalise.
C10_HOST_DEVICE inline float gaussian_norm(int radius, float sigma) {
  float total = 0.0f;
  for (int t = -radius; t <= radius; ++t) {
    total += gaussian_tap(t, sigma);
  }
  return total;
}

// Largest radius a kernel computes with: the elastic radius of kMaxSigma (8 sigma + 1 taps). A
// backstop only: every kernel refuses a table whose sigmas pass kMaxSigma (view_table_error), and
// this keeps a radius a defined int should a row ever reach the maths unchecked.
constexpr double kMaxRadius = 4.0 * kMaxSigma;

// Blur radius ceil(3 sigma) (reference step 7; Python evaluates 3 * sigma in float64).
C10_HOST_DEVICE inline int blur_radius(float sigma) {
  return sigma > 0.0f ? static_cast<int>(::fmin(::ceil(3.0 * static_cast<double>(sigma)), kMaxRadius)) : 0;
}

// torchvision's ElasticTransform kernel size int(8 sigma + 1), made odd; returns its radius.
C10_HOST_DEVICE inline int elastic_radius(float sigma) {
  if (!(sigma > 0.0f)) {
    return 0;
  }
  int k = static_cast<int>(::fmin(8.0 * static_cast<double>(sigma) + 1.0, 2.0 * kMaxRadius + 1.0));
  if (k % 2 == 0) {
    ++k;
  }
  return (k - 1) / 2;
}

// ------------------------------------------------------------------------------------------------
// Resize weights (reference step 1, F.interpolate(align_corners=False)).
//
// With antialias, PyTorch's separable kernel: scale = in / out, support = (taps / 2) * max(scale,
// 1), output i covers source [trunc(c - support + 0.5), trunc(c + support + 0.5)) with c =
// scale * (i + 0.5), each tap weighted filter((j - c + 0.5) / max(scale, 1)), normalised to sum 1,
// taps outside the image dropped (not clamped); filter the a = -0.5 cubic or the triangle.
// Without antialias: source x = scale * (i + 0.5) - 0.5, the a = -0.75 cubic over 4 taps with
// indices clamped into the image, or linear over 2 (x clamped to >= 0 first).

C10_HOST_DEVICE inline float cubic_filter(float x, float a) {
  x = ::fabsf(x);
  if (x < 1.0f) {
    return ((a + 2.0f) * x - (a + 3.0f)) * x * x + 1.0f;
  }
  if (x < 2.0f) {
    return ((a * x - 5.0f * a) * x + 8.0f * a) * x - 4.0f * a;
  }
  return 0.0f;
}

C10_HOST_DEVICE inline float linear_filter(float x) {
  x = ::fabsf(x);
  return x < 1.0f ? 1.0f - x : 0.0f;
}

struct ResampleSpan {
  int start;  // source index of tap 0 (non-antialiased cubic: may be out of range, clamped)
  int count;  // number of taps
  int in_size;
  bool antialias;
  bool bicubic;
  float center;    // antialias: window centre in source pixels
  float invscale;  // antialias: 1 / max(scale, 1)
  float inv_total;
  float lambda;    // no antialias: fractional source position
};

C10_HOST_DEVICE inline ResampleSpan resample_span(int i, int in_size, int out_size, bool bicubic,
                                                  bool antialias) {
  ResampleSpan s;
  s.in_size = in_size;
  s.antialias = antialias;
  s.bicubic = bicubic;
  s.center = 0.0f;
  s.invscale = 1.0f;
  s.inv_total = 1.0f;
  s.lambda = 0.0f;
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  if (antialias) {
    const float half_taps = bicubic ? 2.0f : 1.0f;
    const float support = scale >= 1.0f ? half_taps * scale : half_taps;
    s.center = scale * (static_cast<float>(i) + 0.5f);
    s.invscale = scale >= 1.0f ? 1.0f / scale : 1.0f;
    int lo = static_cast<int>(s.center - support + 0.5f);
    lo = lo < 0 ? 0 : lo;
    int hi = static_cast<int>(s.center + support + 0.5f);
    hi = hi > in_size ? in_size : hi;
    const int max_count = static_cast<int>(::ceilf(support)) * 2 + 1;
    int count = hi - lo;
    count = count < 0 ? 0 : (count > max_count ? max_count : count);
    s.start = lo;
    s.count = count;
    float total = 0.0f;
    for (int k = 0; k < count; ++k) {
      const float x = (static_cast<float>(lo + k) - s.center + 0.5f) * s.invscale;
      total += bicubic ? cubic_filter(x, -0.5f) : linear_filter(x);
    }
    s.inv_total = total != 0.0f ? 1.0f / total : 1.0f;
    return s;
  }
  if (bicubic) {
    const float x = scale * (static_cast<float>(i) + 0.5f) - 0.5f;
    const float fl = ::floorf(x);
    int index = static_cast<int>(fl);
    index = index > in_size - 1 ? in_size - 1 : index;
    float t = x - static_cast<float>(index);
    t = t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);
    s.start = index - 1;
    s.count = 4;
    s.lambda = t;
    return s;
  }
  float x = scale * (static_cast<float>(i) + 0.5f) - 0.5f;
  x = x < 0.0f ? 0.0f : x;
  int index = static_cast<int>(::floorf(x));
  index = index > in_size - 1 ? in_size - 1 : index;
  float t = x - static_cast<float>(index);
  t = t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);
  s.start = index;
  s.count = index < in_size - 1 ? 2 : 1;
  s.lambda = t;
  return s;
}

// Source index of tap k (always inside [0, in_size)).
C10_HOST_DEVICE inline int span_index(const ResampleSpan& s, int k) {
  int j = s.start + k;
  j = j < 0 ? 0 : (j > s.in_size - 1 ? s.in_size - 1 : j);
  return j;
}

C10_HOST_DEVICE inline float span_weight(const ResampleSpan& s, int k) {
  if (s.antialias) {
    const float x = (static_cast<float>(s.start + k) - s.center + 0.5f) * s.invscale;
    const float w = s.bicubic ? cubic_filter(x, -0.5f) : linear_filter(x);
    return w * s.inv_total;
  }
  const float t = s.lambda;
  if (s.bicubic) {
    constexpr float a = -0.75f;
    switch (k) {
      case 0: return cubic_filter(t + 1.0f, a);
      case 1: return cubic_filter(t, a);
      case 2: return cubic_filter(1.0f - t, a);
      default: return cubic_filter(2.0f - t, a);
    }
  }
  // One tap only at the last source pixel, whose weights 1 - t and t both land on it.
  return s.count == 1 ? 1.0f : (k == 0 ? 1.0f - t : t);
}

// ------------------------------------------------------------------------------------------------
// Geometry: flip, rotation and elastic displacement as inverse maps onto the resized S x S image
// (reference steps 2 to 4, torchvision's order: the rotation samples the flipped resized image,
// the elastic displacement samples the rotated one).

// Normalised coordinate (2i + 1) / n - 1 of a pixel centre, float64 (reference.pixel_centres).
C10_HOST_DEVICE inline double pixel_centre(int i, int n) {
  return (2.0 * static_cast<double>(i) + 1.0) / static_cast<double>(n) - 1.0;
}

// grid_sample's unnormalisation on the CPU (align_corners=False): (g + 1) * (n / 2) - 0.5.
C10_HOST_DEVICE inline float unnormalize(float g, int n) {
  return add_rn(mul_rn(add_rn(g, 1.0f), static_cast<float>(n) / 2.0f), -0.5f);
}

C10_HOST_DEVICE inline bool inside(int y, int x, int size) {
  return y >= 0 && y < size && x >= 0 && x < size;
}

struct Rotation {
  bool active;  // an angle of exactly 0 is the identity, bit for bit
  double cos_a, sin_a;
};

C10_HOST_DEVICE inline Rotation make_rotation(float angle) {
  Rotation r;
  r.active = angle != 0.0f;
  // math.radians: degrees * (pi / 180) in float64
  const double a = static_cast<double>(angle) * (3.141592653589793 / 180.0);
  r.cos_a = ::cos(a);
  r.sin_a = ::sin(a);
  return r;
}

// The rotation's per-axis terms for pixel i: cos(a) * c and sin(a) * c, with c the pixel
// centre's offset from the image centre in pixels (reference.rotation_grid, float64). A row of
// output pixels shares its y terms, a column its x terms, so a CPU pass can tabulate them.
struct RotationTerms {
  double cos_c, sin_c;
};

C10_HOST_DEVICE inline RotationTerms rotation_terms(const Rotation& r, int i, int size) {
  const double c = dmul_rn(pixel_centre(i, size), static_cast<double>(size) / 2.0);
  return {dmul_rn(r.cos_a, c), dmul_rn(r.sin_a, c)};
}

// Source position (in pixels of the S x S image, grid_sample's convention) that rotated output
// pixel (y, x) samples, from its terms: the grid in float64, rounded to float32, unnormalised.
C10_HOST_DEVICE inline void rotation_source_from(RotationTerms tx, RotationTerms ty, int size, float* sx,
                                                 float* sy) {
  const double half = static_cast<double>(size) / 2.0;
  const double gx = dadd_rn(tx.cos_c, -ty.sin_c) / half;
  const double gy = dadd_rn(tx.sin_c, ty.cos_c) / half;
  *sx = unnormalize(static_cast<float>(gx), size);
  *sy = unnormalize(static_cast<float>(gy), size);
}

C10_HOST_DEVICE inline void rotation_source(const Rotation& r, int y, int x, int size, float* sx,
                                            float* sy) {
  rotation_source_from(rotation_terms(r, x, size), rotation_terms(r, y, size), size, sx, sy);
}

// grid_sample's nearest pick (round half to even) of a rotated output pixel: its source pixel
// (*iy, *ix); false when that falls outside (fill).
C10_HOST_DEVICE inline bool rotation_nearest(RotationTerms tx, RotationTerms ty, int size, int* iy, int* ix) {
  float sx, sy;
  rotation_source_from(tx, ty, size, &sx, &sy);
  *ix = static_cast<int>(round_half_even(sx));
  *iy = static_cast<int>(round_half_even(sy));
  return inside(*iy, *ix, size);
}

// Bilinear corner weights as grid_sample computes them, corners k = 0..3 in the order nw, ne,
// sw, se. weight(k) selects its two factors rather than reading an array, so a corner loop whose
// body is too large to unroll still keeps everything in registers on the GPU.
struct Bilinear {
  int x0, y0;
  float e, w_, s, n;  // x - floor(x), 1 - that; y - floor(y), 1 - that

  C10_HOST_DEVICE float weight(int k) const {
    return ((k >> 1) ? s : n) * ((k & 1) ? e : w_);
  }
};

C10_HOST_DEVICE inline Bilinear bilinear_at(float x, float y) {
  Bilinear b;
  const float fx = floor_exact(x);
  const float fy = floor_exact(y);
  b.x0 = static_cast<int>(fx);
  b.y0 = static_cast<int>(fy);
  b.e = x - fx;
  b.w_ = 1.0f - b.e;
  b.s = y - fy;
  b.n = 1.0f - b.s;
  return b;
}

// Value of the rotated image at integer pixel (y, x). `resized(y, x, rgb)` must write the
// flipped resized image's pixel (both indices inside [0, size)).
template <typename Resized>
C10_HOST_DEVICE inline void rotated_pixel(const Rotation& r, int rot_interp, int y, int x, int size,
                                          const Resized& resized, float* rgb) {
  if (!r.active) {
    resized(y, x, rgb);
    return;
  }
  rgb[0] = rgb[1] = rgb[2] = 0.0f;
  if (rot_interp == kRotNearest) {
    int iy, ix;
    if (rotation_nearest(rotation_terms(r, x, size), rotation_terms(r, y, size), size, &iy, &ix)) {
      resized(iy, ix, rgb);
    }
    return;
  }
  float sx, sy;
  rotation_source(r, y, x, size, &sx, &sy);
  const Bilinear b = bilinear_at(sx, sy);
  for (int k = 0; k < 4; ++k) {
    const int yy = b.y0 + (k >> 1);
    const int xx = b.x0 + (k & 1);
    if (inside(yy, xx, size)) {
      float v[3];
      resized(yy, xx, v);
      const float w = b.weight(k);
      rgb[0] += w * v[0];
      rgb[1] += w * v[1];
      rgb[2] += w * v[2];
    }
  }
}

// The geometry value of output pixel (y, x): elastic displacement (dx, dy in normalised units,
// ignored unless `elastic`) sampled bilinearly from the rotated image, zeros outside.
template <typename Resized>
C10_HOST_DEVICE inline void geometry_pixel(const Rotation& r, int rot_interp, bool elastic, float dx,
                                           float dy, int y, int x, int size,
                                           const Resized& resized, float* rgb) {
  if (!elastic) {
    rotated_pixel(r, rot_interp, y, x, size, resized, rgb);
    return;
  }
  const float gx = static_cast<float>(pixel_centre(x, size)) + dx;
  const float gy = static_cast<float>(pixel_centre(y, size)) + dy;
  const Bilinear b = bilinear_at(unnormalize(gx, size), unnormalize(gy, size));
  rgb[0] = rgb[1] = rgb[2] = 0.0f;
  for (int k = 0; k < 4; ++k) {
    const int yy = b.y0 + (k >> 1);
    const int xx = b.x0 + (k & 1);
    if (inside(yy, xx, size)) {
      float v[3];
      rotated_pixel(r, rot_interp, yy, xx, size, resized, v);
      const float w = b.weight(k);
      rgb[0] += w * v[0];
      rgb[1] += w * v[1];
      rgb[2] += w * v[2];
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Colour (reference steps 5 to 9), pointwise on one RGB pixel.

// As x < 0 ? 0 : (x > 1 ? 1 : x), NaN passed through, in the min/max form compilers turn into
// two instructions (and vector ones in a loop).
C10_HOST_DEVICE inline float clamp01(float x) {
  return min_f(max_f(x, 0.0f), 1.0f);
}

C10_HOST_DEVICE inline float grayscale(const float* rgb) {
  return 0.299f * rgb[0] + 0.587f * rgb[1] + 0.114f * rgb[2];
}

C10_HOST_DEVICE inline void adjust_brightness(float* rgb, float f) {
  for (int c = 0; c < 3; ++c) {
    rgb[c] = clamp01(rgb[c] * f);
  }
}

// mean: the image's mean grayscale at the point where contrast is applied.
C10_HOST_DEVICE inline void adjust_contrast(float* rgb, float f, float mean) {
  for (int c = 0; c < 3; ++c) {
    rgb[c] = clamp01((rgb[c] - mean) * f + mean);
  }
}

C10_HOST_DEVICE inline void adjust_saturation(float* rgb, float f) {
  const float g = grayscale(rgb);
  for (int c = 0; c < 3; ++c) {
    rgb[c] = clamp01(g + f * (rgb[c] - g));
  }
}

// Channel n of HSV -> RGB (n = 5 red, 3 green, 1 blue) at hue h6 = 6 h in [0, 6), with v the
// value and vs = v * s the chroma (max - min).
C10_HOST_DEVICE inline float hsv_channel(float v, float vs, float h6, float n) {
  const float k_raw = n + h6;
  const float k_wrapped = k_raw - 6.0f;
  const float k = k_raw >= 6.0f ? k_wrapped : k_raw;
  return clamp01(v - vs * clamp01(min_f(k, 4.0f - k)));
}

// torchvision's adjust_hue (_rgb2hsv, hue shifted modulo 1, _hsv2rgb), rearranged: the hue is
// kept in sixths, (g - b) / chroma and its two siblings in one division instead of torchvision's
// five, and the chroma v * s is max - min itself. Equal to torchvision's up to float rounding; no
// data-dependent choice of formula, so a loop over pixels vectorises.
C10_HOST_DEVICE inline void adjust_hue(float* rgb, float shift) {
  const float r = rgb[0], g = rgb[1], b = rgb[2];
  const float maxc = max_f(r, max_f(g, b));
  const float minc = min_f(r, min_f(g, b));
  const float chroma = maxc - minc;
  const float d = chroma == 0.0f ? 1.0f : chroma;  // grey: every numerator below is 0
  // every candidate computed, then selected: arithmetic inside a conditional would keep the loop
  // over pixels from vectorising (it might raise a floating-point flag the branch would not)
  const float num_r = g - b, num_g = b - r, num_b = r - g;
  const float num = maxc == r ? num_r : (maxc == g ? num_g : num_b);
  const float sector = maxc == r ? 0.0f : (maxc == g ? 2.0f : 4.0f);
  // modulo 6 (torch.remainder(h, 1) in sixths) for any shift; a result a rounding off 0 or 6
  // lands on the same colour, which hsv_channel's wrap takes care of
  const float h6_raw = sector + num / d + 6.0f * shift;
  const float h6 = h6_raw - 6.0f * floor_exact(h6_raw * (1.0f / 6.0f));
  rgb[0] = hsv_channel(maxc, chroma, h6, 5.0f);
  rgb[1] = hsv_channel(maxc, chroma, h6, 3.0f);
  rgb[2] = hsv_channel(maxc, chroma, h6, 1.0f);
}

C10_HOST_DEVICE inline void jitter_op(float* rgb, int op, float factor, float mean) {
  switch (op) {
    case kOpBrightness: adjust_brightness(rgb, factor); break;
    case kOpContrast: adjust_contrast(rgb, factor, mean); break;
    case kOpSaturation: adjust_saturation(rgb, factor); break;
    default: adjust_hue(rgb, factor); break;
  }
}

// v.factor[op], selected rather than indexed: a GPU keeps an array indexed by a runtime value in
// local memory, where the selects stay in registers.
C10_HOST_DEVICE inline float factor_of(const ViewParams& v, int op) {
  return op == kOpBrightness ? v.factor[kOpBrightness]
         : op == kOpContrast ? v.factor[kOpContrast]
         : op == kOpSaturation ? v.factor[kOpSaturation]
                               : v.factor[kOpHue];
}

// Pass 1 colour: the jitter ops before contrast. Returns the grayscale that contrast's mean sums.
// The loops run all four slots with a predicate, so the slot index is a constant once unrolled
// (the same reason as factor_of).
C10_HOST_DEVICE inline float colour_pre(const ViewParams& v, float* rgb) {
  for (int k = 0; k < 4; ++k) {
    if (k < v.n_pre) {
      jitter_op(rgb, v.order[k], factor_of(v, v.order[k]), 0.0f);
    }
  }
  return grayscale(rgb);
}

// Pass 2 colour: contrast (with the image mean) and the jitter ops after it, then grayscale.
C10_HOST_DEVICE inline void colour_post(const ViewParams& v, float mean, float* rgb) {
  for (int k = 0; k < 4; ++k) {
    if (v.jitter && k >= v.n_pre) {
      jitter_op(rgb, v.order[k], factor_of(v, v.order[k]), mean);
    }
  }
  if (v.grayscale) {
    const float g = grayscale(rgb);
    rgb[0] = rgb[1] = rgb[2] = g;
  }
}

C10_HOST_DEVICE inline float solarize(float x) {
  return x >= 0.5f ? 1.0f - x : x;
}

C10_HOST_DEVICE inline float normalise(float x, float mean, float std) {
  return (x - mean) / std;
}

// Reads pixel `at` of a planar (3, S, S) float image, `plane` = S * S apart per channel.
C10_HOST_DEVICE inline void load_planar_rgb(const float* image, int64_t plane, int64_t at, float* rgb) {
  rgb[0] = image[at];
  rgb[1] = image[plane + at];
  rgb[2] = image[2 * plane + at];
}

}  // namespace augment
}  // namespace clever_kernels
