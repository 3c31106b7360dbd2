// CPU kernels of the loss ops (schemas in ops.cpp): dir_loss_fwd/bwd and dvr_loss_fwd/bwd.
//
// Forward: one pass over K per image b. The 2 teacher rows and the V student rows of the image
// are read tile by tile; each tile is summarised (maxima, rescaled sums, the 2 x V cross terms)
// and merged into the image's running statistics (online softmax, maths in online_softmax.h).
// Only per-row statistics are written. Images run in parallel; when there are fewer images than
// threads, K is split too and the partial statistics are merged the same way.
// Backward: every gradient element is a function of its logits and per-row statistics, so the
// gradient is written once, in parallel over (image, K tile); a tile's teacher probabilities are
// computed once and shared by the image's V student rows, each softmax rebuilt from the offset the
// forward stored for its row (row_offset in online_softmax.h).
//
// Accumulation is in float (double for float64 inputs); half and bfloat16 tiles are converted to
// float once per tile.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

#include "clever_kernels/online_softmax.h"

namespace clever_kernels {
namespace {

using at::Tensor;

// Elements per row segment. Each segment is contiguous but the next row is K elements away, so
// long segments let the hardware prefetcher stream each row (1024 -> 4096 took the forward from
// 1.6 to 1.15 ms at B=16, V=10, K=8192 on one core), while a 16 KB segment read by the max pass is
// still in L2 for the exp pass, as are the tile's two teacher segments reused by all V students.
constexpr int64_t kTile = 4096;
// Smallest share of K worth a thread of its own when the forward splits K.
constexpr int64_t kMinSplit = 4096;
// Roughly the elements a parallel task must cover to be worth starting a thread for.
constexpr int64_t kGrainElems = 1 << 15;
// Temperatures taken (TEMPERATURE_RANGE in clever_kernels/loss/_function.py).
constexpr double kMinTemperature = 1e-4;
constexpr double kMaxTemperature = 1e4;

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

int64_t grain_for(int64_t elems_per_item) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, elems_per_item));
}

// ----------------------------------------------------------------------------------------------
// Argument checks

int64_t check_logits(const Tensor& student, const Tensor& teacher, const Tensor& center,
                     int64_t ncrops, double student_temp, double teacher_temp) {
  TORCH_CHECK(ncrops >= 2, "ncrops must be >= 2 (two global views at least), got ", ncrops);
  // float32 holds 1/T and T times a log-sum across this range, not at, say, 1e-40 or 1e38
  TORCH_CHECK(student_temp >= kMinTemperature && student_temp <= kMaxTemperature,
              "student_temp must be finite and > 0, in [0.0001, 10000], got ", student_temp);
  TORCH_CHECK(teacher_temp >= kMinTemperature && teacher_temp <= kMaxTemperature,
              "teacher_temp must be finite and > 0, in [0.0001, 10000], got ", teacher_temp);
  TORCH_CHECK(student.dim() == 2, "student must be 2-D (ncrops*B, K), got shape ",
              student.sizes());
  TORCH_CHECK(teacher.dim() == 2, "teacher must be 2-D (2*B, K), got shape ", teacher.sizes());
  const auto dtype = student.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              "student must be float32, float64, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(teacher.scalar_type() == dtype, "teacher must have student's dtype ", dtype, ", got ",
              teacher.scalar_type());
  TORCH_CHECK(center.scalar_type() == at::kFloat, "center must be float32, got ",
              center.scalar_type());
  TORCH_CHECK(teacher.device() == student.device(), "teacher must be on student's device ",
              student.device(), ", got ", teacher.device());
  TORCH_CHECK(center.device() == student.device(), "center must be on student's device ",
              student.device(), ", got ", center.device());
  TORCH_CHECK(teacher.size(0) >= 2 && teacher.size(0) % 2 == 0,
              "teacher must have 2*B rows (two global views of B >= 1 images), got ",
              teacher.size(0));
  const int64_t batch = teacher.size(0) / 2;
  TORCH_CHECK(student.size(0) == ncrops * batch, "student must have ncrops*B = ", ncrops, "*",
              batch, " = ", ncrops * batch, " rows (B from teacher), got ", student.size(0));
  const int64_t width = student.size(1);
  TORCH_CHECK(width >= 1, "student must have K >= 1 columns, got ", width);
  TORCH_CHECK(teacher.size(1) == width, "teacher must have student's width K = ", width, ", got ",
              teacher.size(1));
  TORCH_CHECK(center.numel() == width, "center must have K = ", width, " elements, got shape ",
              center.sizes());
  TORCH_CHECK(student.is_contiguous(), "student must be contiguous");
  TORCH_CHECK(teacher.is_contiguous(), "teacher must be contiguous");
  TORCH_CHECK(center.is_contiguous(), "center must be contiguous");
  return batch;
}

void check_stat(const Tensor& x, const char* name, at::IntArrayRef shape, const Tensor& student) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.sizes() == shape, name,
              " must be a float32 tensor of shape ", shape, ", got ", x.scalar_type(), " ",
              x.sizes());
  TORCH_CHECK(x.device() == student.device(), name, " must be on student's device ",
              student.device(), ", got ", x.device());
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
}

// ----------------------------------------------------------------------------------------------
// Segment loops. Contiguous and branch-free so that `omp simd` vectorises them (the element maths
// of online_softmax.h is always inlined). The extension is built for baseline x86-64 (SSE2); these
// loops, where nearly all the time goes, are also compiled for AVX2+FMA and AVX-512 and the best
// one the CPU supports is picked when the library loads (GCC function multiversioning), which is
// about 3x faster than SSE2 on the exp-heavy loops.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CK_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CK_SIMD_CLONES
#endif

// Flush-to-zero and denormals-are-zero for the scope of one parallel chunk, restored after (the
// chunk may run on the caller's thread). Gradient elements are products of small factors, a
// probability near exp(-43) times a pair coefficient, and a quarter of a cosine head's came out
// denormal on random logits: on x86 each such result or operand takes a microcode assist, which
// made that backward 6x slower. Flushed, they are 0 (below float32's 1.2e-38, under any
// tolerance). Other CPUs keep IEEE subnormals: without that penalty on most of them, and no
// portable way to set the mode.
#if defined(__SSE__) || defined(_M_X64)
class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  static constexpr unsigned kFlushToZero = 0x8000;
  static constexpr unsigned kDenormalsAreZero = 0x0040;
  unsigned saved_;
};
#else
struct FlushDenormals {
  FlushDenormals() {}  // user-provided: no unused-variable warning where it is declared
};
#endif

// The segment sums add kSumBlock elements at a time (vectorised) and then the block sums: the
// error of a plain running sum grows with the segment's length (4096) divided by the vector
// width, so without the blocks an unvectorised build (-O1, or a target without SIMD) misses the
// float32 accuracy the tests hold the statistics to.
constexpr int64_t kSumBlock = 256;

// A segment as acc_t: the input itself when it already is, else converted into buf.
template <typename scalar_t, typename acc_t>
CK_SIMD_CLONES const acc_t* as_acc(const scalar_t* src, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      buf[k] = static_cast<acc_t>(src[k]);
    }
    return buf;
  }
}

// The maximum ignores NaN elements; they still reach the sums through exp(NaN) = NaN, which is
// how NaN logits make the statistics NaN.
template <typename T>
CK_SIMD_CLONES T segment_max(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t k = 0; k < n; ++k) {
    m = x[k] > m ? x[k] : m;
  }
  return m;
}

// a = teacher - center, written to a; returns max a.
template <typename T>
CK_SIMD_CLONES T centred_max(const T* t, const float* c, int64_t n, T* a) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t k = 0; k < n; ++k) {
    const T v = t[k] - static_cast<T>(c[k]);
    a[k] = v;
    m = v > m ? v : m;
  }
  return m;
}

// Replaces a by e = exp((a - offset) * inv_temp); sums e and e^2.
template <typename T>
CK_SIMD_CLONES void exp_in_place(T* a, int64_t n, T offset, T inv_temp, T& sum, T& sum_sq) {
  T l = 0, sq = 0;
  for (int64_t k0 = 0; k0 < n; k0 += kSumBlock) {
    const int64_t k1 = std::min(n, k0 + kSumBlock);
    T bl = 0, bsq = 0;
#pragma omp simd reduction(+ : bl, bsq)
    for (int64_t k = k0; k < k1; ++k) {
      const T e = softmax_exp((a[k] - offset) * inv_temp);
      a[k] = e;
      bl += e;
      bsq += e * e;
    }
    l += bl;
    sq += bsq;
  }
  sum = l;
  sum_sq = sq;
}

// One student segment against the image's two teacher segments e0, e1 (weights relative to the
// teacher maxima): sum of exp((s - offset) * inv_ts) and the cross terms sum e_t * (s - offset).
// Plain products: a -inf student logit against a weight of 0 makes the cross term NaN here, and
// dir_cross_redo then redoes the segment (no test for it on the common path).
template <typename T>
CK_SIMD_CLONES void dir_student_segment(const T* s, const T* e0, const T* e1, int64_t n, T offset,
                                        T inv_ts, T& sum, T& d0, T& d1) {
  T l = 0, x0 = 0, x1 = 0;
  for (int64_t k0 = 0; k0 < n; k0 += kSumBlock) {
    const int64_t k1 = std::min(n, k0 + kSumBlock);
    T bl = 0, b0 = 0, b1 = 0;
#pragma omp simd reduction(+ : bl, b0, b1)
    for (int64_t k = k0; k < k1; ++k) {
      const T x = s[k] - offset;
      bl += softmax_exp(x * inv_ts);
      b0 += e0[k] * x;
      b1 += e1[k] * x;
    }
    l += bl;
    x0 += b0;
    x1 += b1;
  }
  sum = l;
  d0 = x0;
  d1 = x1;
}

// For a segment whose plain cross term came out NaN: what a -inf student logit adds against
// each teacher column, 0 where the teacher's probability is exactly 0 (its centred logit is -inf),
// as 0 log 0 does in the cross-entropy, and -inf wherever it is positive, its weight underflowed
// or not (the cross-entropy is +inf). Filled once per tile, only for tiles that need it.
template <typename T, typename scalar_t>
CK_SIMD_CLONES void log_zero_terms(const scalar_t* teacher, const float* center, int64_t n, T* out) {
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    out[k] = static_cast<T>(teacher[k]) - static_cast<T>(center[k]) == minus_inf ? T(0) : minus_inf;
  }
}

// Both cross terms again with those terms at -inf student logits; NaN elsewhere stays NaN (and
// a NaN teacher column has already made the teacher's sum NaN).
template <typename T>
CK_SIMD_CLONES void dir_cross_redo(const T* s, const T* e0, const T* e1, const T* log_zero0,
                                   const T* log_zero1, int64_t n, T offset, T& d0, T& d1) {
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  T x0 = 0, x1 = 0;
  for (int64_t k0 = 0; k0 < n; k0 += kSumBlock) {
    const int64_t k1 = std::min(n, k0 + kSumBlock);
    T b0 = 0, b1 = 0;
#pragma omp simd reduction(+ : b0, b1)
    for (int64_t k = k0; k < k1; ++k) {
      const T x = s[k] - offset;
      const bool log_zero = x == minus_inf;
      b0 += log_zero ? log_zero0[k] : e0[k] * x;
      b1 += log_zero ? log_zero1[k] : e1[k] * x;
    }
    x0 += b0;
    x1 += b1;
  }
  d0 = x0;
  d1 = x1;
}

// Same for the cosine head: sum e_s, sum e_s^2 and the dot products sum e_t * e_s.
template <typename T>
CK_SIMD_CLONES void dvr_student_segment(const T* s, const T* e0, const T* e1, int64_t n, T offset,
                                        T inv_ts, T& sum, T& sum_sq, T& p0, T& p1) {
  T l = 0, sq = 0, x0 = 0, x1 = 0;
  for (int64_t k0 = 0; k0 < n; k0 += kSumBlock) {
    const int64_t k1 = std::min(n, k0 + kSumBlock);
    T bl = 0, bsq = 0, b0 = 0, b1 = 0;
#pragma omp simd reduction(+ : bl, bsq, b0, b1)
    for (int64_t k = k0; k < k1; ++k) {
      const T e = softmax_exp((s[k] - offset) * inv_ts);
      bl += e;
      bsq += e * e;
      b0 += e0[k] * e;
      b1 += e1[k] * e;
    }
    l += bl;
    sq += bsq;
    x0 += b0;
    x1 += b1;
  }
  sum = l;
  sum_sq = sq;
  p0 = x0;
  p1 = x1;
}

// Back from acc_t to the logits' dtype.
template <typename acc_t, typename scalar_t>
CK_SIMD_CLONES void store(const acc_t* src, int64_t n, scalar_t* dst) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    dst[k] = static_cast<scalar_t>(src[k]);
  }
}

// A teacher segment's probabilities q = softmax_from_offset(t - c) with its row offset (m, off).
template <typename T>
CK_SIMD_CLONES void teacher_probs(const T* t, const float* c, int64_t n, T m, T off, T inv_tt,
                                  T* q) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    q[k] = softmax_from_offset(t[k] - static_cast<T>(c[k]), m, off, inv_tt);
  }
}

template <typename T>
CK_SIMD_CLONES void dir_grad_segment(const T* s, const T* q0, const T* q1, int64_t n, T m, T off,
                                     T inv_ts, T alpha, T beta0, T beta1, T* g) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    g[k] = dir_grad(alpha, softmax_from_offset(s[k], m, off, inv_ts), beta0, q0[k], beta1, q1[k]);
  }
}

template <typename T>
CK_SIMD_CLONES void dvr_grad_segment(const T* s, const T* p0, const T* p1, int64_t n, T m, T off,
                                     T inv_ts, T u0, T u1, T z, T* g) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    g[k] = dvr_grad(softmax_from_offset(s[k], m, off, inv_ts), u0, p0[k], u1, p1[k], z);
  }
}

// ----------------------------------------------------------------------------------------------
// Per-image statistics over a range of K. Row statistics: max m (raw units), sum l, and for the
// cosine head the sum of squares sq. Cross terms are indexed [iq * V + v].

template <typename T>
struct DirStats {
  explicit DirStats(int64_t views) : V(views), ms(views), ls(views), d(2 * views) {}
  int64_t V;
  bool empty = true;
  T mt[2] = {0, 0};
  T lt[2] = {0, 0};
  std::vector<T> ms, ls, d;

  void merge(const DirStats& o, T inv_ts, T inv_tt) {
    if (o.empty) {
      return;
    }
    if (empty) {
      *this = o;
      return;
    }
    MaxMerge<T> t[2] = {merge_max(mt[0], o.mt[0], inv_tt), merge_max(mt[1], o.mt[1], inv_tt)};
    for (int64_t v = 0; v < V; ++v) {
      const MaxMerge<T> s = merge_max(ms[v], o.ms[v], inv_ts);
      const T shift_a = max_shift(ms[v], s.m);
      const T shift_b = max_shift(o.ms[v], s.m);
      for (int iq = 0; iq < 2; ++iq) {
        T& x = d[iq * V + v];
        x = merge_ce_cross(x, lt[iq], t[iq].alpha_a, shift_a, o.d[iq * V + v], o.lt[iq],
                           t[iq].alpha_b, shift_b);
      }
      ls[v] = s.alpha_a * ls[v] + s.alpha_b * o.ls[v];
      ms[v] = s.m;
    }
    for (int iq = 0; iq < 2; ++iq) {
      lt[iq] = t[iq].alpha_a * lt[iq] + t[iq].alpha_b * o.lt[iq];
      mt[iq] = t[iq].m;
    }
  }
};

template <typename T>
struct DvrStats {
  explicit DvrStats(int64_t views) : V(views), ms(views), ls(views), sqs(views), p(2 * views) {}
  int64_t V;
  bool empty = true;
  T mt[2] = {0, 0};
  T lt[2] = {0, 0};
  T sqt[2] = {0, 0};
  std::vector<T> ms, ls, sqs, p;

  void merge(const DvrStats& o, T inv_ts, T inv_tt) {
    if (o.empty) {
      return;
    }
    if (empty) {
      *this = o;
      return;
    }
    MaxMerge<T> t[2] = {merge_max(mt[0], o.mt[0], inv_tt), merge_max(mt[1], o.mt[1], inv_tt)};
    for (int64_t v = 0; v < V; ++v) {
      const MaxMerge<T> s = merge_max(ms[v], o.ms[v], inv_ts);
      for (int iq = 0; iq < 2; ++iq) {
        T& x = p[iq * V + v];
        x = merge_dot_cross(x, t[iq].alpha_a, s.alpha_a, o.p[iq * V + v], t[iq].alpha_b,
                            s.alpha_b);
      }
      ls[v] = s.alpha_a * ls[v] + s.alpha_b * o.ls[v];
      sqs[v] = s.alpha_a * s.alpha_a * sqs[v] + s.alpha_b * s.alpha_b * o.sqs[v];
      ms[v] = s.m;
    }
    for (int iq = 0; iq < 2; ++iq) {
      const MaxMerge<T>& g = t[iq];
      lt[iq] = g.alpha_a * lt[iq] + g.alpha_b * o.lt[iq];
      sqt[iq] = g.alpha_a * g.alpha_a * sqt[iq] + g.alpha_b * g.alpha_b * o.sqt[iq];
      mt[iq] = g.m;
    }
  }
};

// Shapes and temperatures shared by the kernels; pointers to the logits of one head.
template <typename scalar_t>
struct Problem {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* student;
  const scalar_t* teacher;
  const float* center;
  int64_t B, V, K;
  acc_t inv_ts, inv_tt;

  const scalar_t* student_row(int64_t v, int64_t b) const { return student + (v * B + b) * K; }
  const scalar_t* teacher_row(int64_t iq, int64_t b) const { return teacher + (iq * B + b) * K; }
};

// Per-task scratch: the tile's two teacher segments (a = t - c, then their exponentials) and a
// conversion buffer for half / bfloat16 rows.
template <typename T>
struct Scratch {
  std::vector<T> e0 = std::vector<T>(kTile), e1 = std::vector<T>(kTile),
                 row = std::vector<T>(kTile);
  std::vector<T> log_zero0, log_zero1;  // allocated on a first -inf student logit
  T* e(int iq) { return iq == 0 ? e0.data() : e1.data(); }
  T* log_zero(int iq) {
    std::vector<T>& v = iq == 0 ? log_zero0 : log_zero1;
    v.resize(kTile);
    return v.data();
  }
};

// The teacher segments of image b at [k0, k0 + n): exponentials relative to the segment maxima.
template <typename scalar_t, typename T>
void teacher_tile(const Problem<scalar_t>& pb, int64_t b, int64_t k0, int64_t n, Scratch<T>& ws,
                  T mt[2], T lt[2], T sqt[2]) {
  for (int iq = 0; iq < 2; ++iq) {
    const T* t = as_acc(pb.teacher_row(iq, b) + k0, n, ws.row.data());
    mt[iq] = centred_max(t, pb.center + k0, n, ws.e(iq));
    exp_in_place(ws.e(iq), n, exp_offset(mt[iq]), pb.inv_tt, lt[iq], sqt[iq]);
  }
}

template <typename scalar_t, typename T>
void dir_range(const Problem<scalar_t>& pb, int64_t b, int64_t k_begin, int64_t k_end,
               Scratch<T>& ws, DirStats<T>& acc) {
  DirStats<T> tile(pb.V);
  T sqt_unused[2];
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kTile) {
    const int64_t n = std::min(kTile, k_end - k0);
    teacher_tile(pb, b, k0, n, ws, tile.mt, tile.lt, sqt_unused);
    bool log_zero_ready = false;
    for (int64_t v = 0; v < pb.V; ++v) {
      const T* s = as_acc(pb.student_row(v, b) + k0, n, ws.row.data());
      tile.ms[v] = segment_max(s, n);
      const T offset = exp_offset(tile.ms[v]);
      dir_student_segment(s, ws.e0.data(), ws.e1.data(), n, offset, pb.inv_ts, tile.ls[v],
                          tile.d[v], tile.d[pb.V + v]);
      T& d0 = tile.d[v];
      T& d1 = tile.d[pb.V + v];
      if (std::isnan(d0) || std::isnan(d1)) {
        if (!log_zero_ready) {
          for (int iq = 0; iq < 2; ++iq) {
            log_zero_terms(pb.teacher_row(iq, b) + k0, pb.center + k0, n, ws.log_zero(iq));
          }
          log_zero_ready = true;
        }
        T r0, r1;
        dir_cross_redo(s, ws.e0.data(), ws.e1.data(), ws.log_zero(0), ws.log_zero(1), n, offset,
                       r0, r1);
        d0 = std::isnan(d0) ? r0 : d0;  // a finite sum stays as the common path made it
        d1 = std::isnan(d1) ? r1 : d1;
      }
    }
    tile.empty = false;
    acc.merge(tile, pb.inv_ts, pb.inv_tt);
  }
}

template <typename scalar_t, typename T>
void dvr_range(const Problem<scalar_t>& pb, int64_t b, int64_t k_begin, int64_t k_end,
               Scratch<T>& ws, DvrStats<T>& acc) {
  DvrStats<T> tile(pb.V);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kTile) {
    const int64_t n = std::min(kTile, k_end - k0);
    teacher_tile(pb, b, k0, n, ws, tile.mt, tile.lt, tile.sqt);
    for (int64_t v = 0; v < pb.V; ++v) {
      const T* s = as_acc(pb.student_row(v, b) + k0, n, ws.row.data());
      tile.ms[v] = segment_max(s, n);
      dvr_student_segment(s, ws.e0.data(), ws.e1.data(), n, exp_offset(tile.ms[v]), pb.inv_ts,
                          tile.ls[v], tile.sqs[v], tile.p[v], tile.p[pb.V + v]);
    }
    tile.empty = false;
    acc.merge(tile, pb.inv_ts, pb.inv_tt);
  }
}

// Runs range_fn(b, k_begin, k_end, scratch, stats) over every image, split along K into chunks
// when there are fewer images than threads, and returns each image's merged statistics.
template <typename Stats, typename scalar_t, typename RangeFn>
std::vector<Stats> image_stats(const Problem<scalar_t>& pb, RangeFn range_fn) {
  using T = acc_type<scalar_t>;
  const int64_t threads = at::get_num_threads();
  int64_t splits = 1;
  if (pb.B < threads) {
    const int64_t want = (threads + pb.B - 1) / pb.B;
    splits = std::max<int64_t>(1, std::min(want, pb.K / kMinSplit));
  }
  // Chunk boundaries on tile multiples, so a split does not change how K is tiled.
  const int64_t tiles = (pb.K + kTile - 1) / kTile;
  const int64_t tiles_per_split = (tiles + splits - 1) / splits;
  const int64_t chunk = tiles_per_split * kTile;
  splits = (pb.K + chunk - 1) / chunk;

  std::vector<Stats> partial(pb.B * splits, Stats(pb.V));
  const int64_t grain = grain_for((pb.V + 2) * chunk);
  at::parallel_for(0, pb.B * splits, grain, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    Scratch<T> ws;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / splits;
      const int64_t k_begin = (i % splits) * chunk;
      range_fn(b, k_begin, std::min(pb.K, k_begin + chunk), ws, partial[i]);
    }
  });
  std::vector<Stats> merged(pb.B, Stats(pb.V));
  for (int64_t b = 0; b < pb.B; ++b) {
    for (int64_t j = 0; j < splits; ++j) {
      merged[b].merge(partial[b * splits + j], pb.inv_ts, pb.inv_tt);
    }
  }
  return merged;
}

// teacher_sum[k] = sum over the teacher rows, accumulated in double, parallel over K.
template <typename scalar_t>
void teacher_column_sum(const scalar_t* teacher, int64_t rows, int64_t K, float* out) {
  constexpr int64_t kChunk = 512;
  at::parallel_for(0, K, std::max(kChunk, grain_for(rows)), [&](int64_t begin, int64_t end) {
    double acc[kChunk];
    for (int64_t k0 = begin; k0 < end; k0 += kChunk) {
      const int64_t n = std::min(kChunk, end - k0);
      std::fill(acc, acc + n, 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* t = teacher + r * K + k0;
#pragma omp simd
        for (int64_t k = 0; k < n; ++k) {
          acc[k] += static_cast<double>(t[k]);
        }
      }
      for (int64_t k = 0; k < n; ++k) {
        out[k0 + k] = static_cast<float>(acc[k]);
      }
    }
  });
}

template <typename scalar_t>
Problem<scalar_t> make_problem(const Tensor& student, const Tensor& teacher, const Tensor& center,
                               int64_t B, int64_t ncrops, double student_temp,
                               double teacher_temp) {
  using acc_t = acc_type<scalar_t>;
  return {student.data_ptr<scalar_t>(),
          teacher.data_ptr<scalar_t>(),
          center.data_ptr<float>(),
          B,
          ncrops,
          student.size(1),
          static_cast<acc_t>(1.0 / student_temp),
          static_cast<acc_t>(1.0 / teacher_temp)};
}

// Kernel bodies are templates outside the dispatch macros: `omp simd` pragmas cannot sit inside
// a macro argument.

template <typename scalar_t>
void dir_fwd_kernel(const Problem<scalar_t>& pb, double student_temp, double teacher_temp,
                    float* off_s, float* off_t, float* ce, float* teacher_sum) {
  using T = acc_type<scalar_t>;
  const int64_t B = pb.B, V = pb.V;
  const auto stats = image_stats<DirStats<T>>(
      pb, [&](int64_t b, int64_t k0, int64_t k1, Scratch<T>& ws, DirStats<T>& out) {
        dir_range(pb, b, k0, k1, ws, out);
      });
  for (int64_t b = 0; b < B; ++b) {
    const DirStats<T>& st = stats[b];
    for (int iq = 0; iq < 2; ++iq) {
      row_offset(st.mt[iq], st.lt[iq], teacher_temp, off_t + iq * B + b, off_t + (2 + iq) * B + b);
    }
    for (int64_t v = 0; v < V; ++v) {
      row_offset(st.ms[v], st.ls[v], student_temp, off_s + v * B + b, off_s + (V + v) * B + b);
      for (int iq = 0; iq < 2; ++iq) {
        ce[iq * V * B + v * B + b] = static_cast<float>(
            cross_entropy(st.ls[v], st.d[iq * V + v], st.lt[iq], student_temp));
      }
    }
  }
  teacher_column_sum(pb.teacher, 2 * B, pb.K, teacher_sum);
}

template <typename scalar_t>
void dvr_fwd_kernel(const Problem<scalar_t>& pb, double student_temp, double teacher_temp,
                    float* off_s, float* off_t, float* norm_s, float* norm_t, float* cos,
                    float* teacher_sum) {
  using T = acc_type<scalar_t>;
  const int64_t B = pb.B, V = pb.V;
  const auto stats = image_stats<DvrStats<T>>(
      pb, [&](int64_t b, int64_t k0, int64_t k1, Scratch<T>& ws, DvrStats<T>& out) {
        dvr_range(pb, b, k0, k1, ws, out);
      });
  for (int64_t b = 0; b < B; ++b) {
    const DvrStats<T>& st = stats[b];
    for (int iq = 0; iq < 2; ++iq) {
      row_offset(st.mt[iq], st.lt[iq], teacher_temp, off_t + iq * B + b, off_t + (2 + iq) * B + b);
      norm_t[iq * B + b] = static_cast<float>(softmax_norm(st.lt[iq], st.sqt[iq]));
    }
    for (int64_t v = 0; v < V; ++v) {
      row_offset(st.ms[v], st.ls[v], student_temp, off_s + v * B + b, off_s + (V + v) * B + b);
      norm_s[v * B + b] = static_cast<float>(softmax_norm(st.ls[v], st.sqs[v]));
      for (int iq = 0; iq < 2; ++iq) {
        cos[iq * V * B + v * B + b] =
            static_cast<float>(cosine(st.p[iq * V + v], st.sqt[iq], st.sqs[v]));
      }
    }
  }
  teacher_column_sum(pb.teacher, 2 * B, pb.K, teacher_sum);
}

// The offsets (m, c) of softmax_from_offset for nrows rows, from the (2, nrows) table the
// forward stored (row_offset).
template <typename T>
void read_offsets(const float* offsets, int64_t nrows, double temp, std::vector<T>& m,
                  std::vector<T>& c) {
  m.resize(nrows);
  c.resize(nrows);
  for (int64_t r = 0; r < nrows; ++r) {
    m[r] = static_cast<T>(offsets[r]);
    c[r] = static_cast<T>(temp * static_cast<double>(offsets[nrows + r]));
  }
}

// Shared backward driver: for every (image b, K tile), the teacher probabilities q0, q1 of the
// tile, then grad_fn(row, m, c, s, q0, q1, n, g) writes the acc_t gradient of a student row's
// segment into g, which is the output itself for float / double and a buffer converted afterwards
// otherwise; (m, c) is the row's softmax offset. pair_coef (2, rows) holds each (teacher, student
// row) pair's coefficient. A global view and its own teacher row form no pair of the loss, and
// their coefficient is 0 then: grad_fn sees zeros for that teacher, so a teacher row without
// probabilities (all NaN or -inf) reaches only the rows it is paired with, as in the reference.
template <typename scalar_t, typename GradFn>
void backward_tiles(const Problem<scalar_t>& pb, const float* offset_student,
                    const float* offset_teacher, double student_temp, double teacher_temp,
                    const float* pair_coef, scalar_t* grad, GradFn grad_fn) {
  using T = acc_type<scalar_t>;
  std::vector<T> ms, cs, mt, ct;
  read_offsets(offset_student, pb.V * pb.B, student_temp, ms, cs);
  read_offsets(offset_teacher, 2 * pb.B, teacher_temp, mt, ct);
  const std::vector<T> zeros(kTile, T(0));
  const int64_t rows = pb.V * pb.B;
  const int64_t tiles = (pb.K + kTile - 1) / kTile;
  at::parallel_for(0, pb.B * tiles, grain_for((pb.V + 2) * kTile), [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    Scratch<T> ws;
    std::vector<T> out_buf(std::is_same_v<scalar_t, T> ? 0 : kTile);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / tiles;
      const int64_t k0 = (i % tiles) * kTile;
      const int64_t n = std::min(kTile, pb.K - k0);
      for (int iq = 0; iq < 2; ++iq) {
        const int64_t row = iq * pb.B + b;
        const T* t = as_acc(pb.teacher_row(iq, b) + k0, n, ws.row.data());
        teacher_probs(t, pb.center + k0, n, mt[row], ct[row], pb.inv_tt, ws.e(iq));
      }
      for (int64_t v = 0; v < pb.V; ++v) {
        const int64_t row = v * pb.B + b;
        const T* s = as_acc(pb.student_row(v, b) + k0, n, ws.row.data());
        scalar_t* out = grad + row * pb.K + k0;
        const T* q0 = v == 0 && pair_coef[row] == 0.0f ? zeros.data() : ws.e0.data();
        const T* q1 = v == 1 && pair_coef[rows + row] == 0.0f ? zeros.data() : ws.e1.data();
        if constexpr (std::is_same_v<scalar_t, T>) {
          grad_fn(row, ms[row], cs[row], s, q0, q1, n, out);
        } else {
          grad_fn(row, ms[row], cs[row], s, q0, q1, n, out_buf.data());
          store(out_buf.data(), n, out);
        }
      }
    }
  });
}

template <typename scalar_t>
void dir_bwd_kernel(const Problem<scalar_t>& pb, double student_temp, double teacher_temp,
                    const float* off_s, const float* off_t, const float* alpha, const float* beta,
                    scalar_t* grad) {
  using T = acc_type<scalar_t>;
  const int64_t rows = pb.V * pb.B;
  backward_tiles(pb, off_s, off_t, student_temp, teacher_temp, beta, grad,
                 [&](int64_t row, T m, T c, const T* s, const T* q0, const T* q1, int64_t n,
                     T* g) {
                   dir_grad_segment(s, q0, q1, n, m, c, pb.inv_ts, static_cast<T>(alpha[row]),
                                    static_cast<T>(beta[row]), static_cast<T>(beta[rows + row]), g);
                 });
}

template <typename scalar_t>
void dvr_bwd_kernel(const Problem<scalar_t>& pb, double student_temp, double teacher_temp,
                    const float* off_s, const float* off_t, const float* u, const float* z,
                    scalar_t* grad) {
  using T = acc_type<scalar_t>;
  const int64_t rows = pb.V * pb.B;
  backward_tiles(pb, off_s, off_t, student_temp, teacher_temp, u, grad,
                 [&](int64_t row, T m, T c, const T* s, const T* p0, const T* p1, int64_t n,
                     T* g) {
                   dvr_grad_segment(s, p0, p1, n, m, c, pb.inv_ts, static_cast<T>(u[row]),
                                    static_cast<T>(u[rows + row]), static_cast<T>(z[row]), g);
                 });
}

// ----------------------------------------------------------------------------------------------
// Ops

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> dir_loss_fwd_cpu(
    const Tensor& student, const Tensor& teacher, const Tensor& center, int64_t ncrops,
    double student_temp, double teacher_temp) {
  const int64_t B = check_logits(student, teacher, center, ncrops, student_temp, teacher_temp);
  const int64_t rows = ncrops * B;
  const auto f32 = student.options().dtype(at::kFloat);
  Tensor offset_student = at::empty({2, rows}, f32);
  Tensor offset_teacher = at::empty({2, 2 * B}, f32);
  Tensor ce = at::empty({2, rows}, f32);
  Tensor teacher_sum = at::empty({student.size(1)}, f32);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "dir_loss_fwd",
                                  [&] {
    const auto pb = make_problem<scalar_t>(student, teacher, center, B, ncrops, student_temp,
                                           teacher_temp);
    dir_fwd_kernel(pb, student_temp, teacher_temp, offset_student.data_ptr<float>(),
                   offset_teacher.data_ptr<float>(), ce.data_ptr<float>(),
                   teacher_sum.data_ptr<float>());
  });
  return {offset_student, offset_teacher, ce, teacher_sum, center.reshape({-1}).clone()};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> dvr_loss_fwd_cpu(
    const Tensor& student, const Tensor& teacher, const Tensor& center, int64_t ncrops,
    double student_temp, double teacher_temp) {
  const int64_t B = check_logits(student, teacher, center, ncrops, student_temp, teacher_temp);
  const int64_t rows = ncrops * B;
  const auto f32 = student.options().dtype(at::kFloat);
  Tensor offset_student = at::empty({2, rows}, f32);
  Tensor offset_teacher = at::empty({2, 2 * B}, f32);
  Tensor norm_student = at::empty({rows}, f32);
  Tensor norm_teacher = at::empty({2 * B}, f32);
  Tensor cos = at::empty({2, rows}, f32);
  Tensor teacher_sum = at::empty({student.size(1)}, f32);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "dvr_loss_fwd",
                                  [&] {
    const auto pb = make_problem<scalar_t>(student, teacher, center, B, ncrops, student_temp,
                                           teacher_temp);
    dvr_fwd_kernel(pb, student_temp, teacher_temp, offset_student.data_ptr<float>(),
                   offset_teacher.data_ptr<float>(), norm_student.data_ptr<float>(),
                   norm_teacher.data_ptr<float>(), cos.data_ptr<float>(),
                   teacher_sum.data_ptr<float>());
  });
  return {offset_student, offset_teacher, norm_student, norm_teacher, cos, teacher_sum,
          center.reshape({-1}).clone()};
}

Tensor dir_loss_bwd_cpu(const Tensor& student, const Tensor& teacher, const Tensor& center,
                        const Tensor& offset_student, const Tensor& offset_teacher,
                        const Tensor& alpha, const Tensor& beta, int64_t ncrops,
                        double student_temp, double teacher_temp) {
  const int64_t B = check_logits(student, teacher, center, ncrops, student_temp, teacher_temp);
  const int64_t rows = ncrops * B;
  check_stat(offset_student, "offset_student", {2, rows}, student);
  check_stat(offset_teacher, "offset_teacher", {2, 2 * B}, student);
  check_stat(alpha, "alpha", {rows}, student);
  check_stat(beta, "beta", {2, rows}, student);
  Tensor grad = at::empty_like(student);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "dir_loss_bwd",
                                  [&] {
    const auto pb = make_problem<scalar_t>(student, teacher, center, B, ncrops, student_temp,
                                           teacher_temp);
    dir_bwd_kernel(pb, student_temp, teacher_temp, offset_student.data_ptr<float>(),
                   offset_teacher.data_ptr<float>(), alpha.data_ptr<float>(),
                   beta.data_ptr<float>(), grad.data_ptr<scalar_t>());
  });
  return grad;
}

Tensor dvr_loss_bwd_cpu(const Tensor& student, const Tensor& teacher, const Tensor& center,
                        const Tensor& offset_student, const Tensor& offset_teacher,
                        const Tensor& u, const Tensor& z, int64_t ncrops, double student_temp,
                        double teacher_temp) {
  const int64_t B = check_logits(student, teacher, center, ncrops, student_temp, teacher_temp);
  const int64_t rows = ncrops * B;
  check_stat(offset_student, "offset_student", {2, rows}, student);
  check_stat(offset_teacher, "offset_teacher", {2, 2 * B}, student);
  check_stat(u, "u", {2, rows}, student);
  check_stat(z, "z", {rows}, student);
  Tensor grad = at::empty_like(student);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "dvr_loss_bwd",
                                  [&] {
    const auto pb = make_problem<scalar_t>(student, teacher, center, B, ncrops, student_temp,
                                           teacher_temp);
    dvr_bwd_kernel(pb, student_temp, teacher_temp, offset_student.data_ptr<float>(),
                   offset_teacher.data_ptr<float>(), u.data_ptr<float>(), z.data_ptr<float>(),
                   grad.data_ptr<scalar_t>());
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(clever_kernels, CPU, m) {
  m.impl("dir_loss_fwd", &dir_loss_fwd_cpu);
  m.impl("dir_loss_bwd", &dir_loss_bwd_cpu);
  m.impl("dvr_loss_fwd", &dvr_loss_fwd_cpu);
  m.impl("dvr_loss_bwd", &dvr_loss_bwd_cpu);
}

}  // namespace clever_kernels
