// Online-softmax maths for the loss kernels, written once for the CPU and CUDA implementations.
//
// A row segment is summarised by statistics kept in the row's raw units (before dividing by the
// temperature): its maximum m and sums of exp((x_k - m) * inv_temp). Keeping m raw makes the
// maximum exact and x_k - m exact for nearby values, so the exponent arguments stay accurate when
// the logits are large; statistics of neighbouring segments merge associatively, which is what a
// tile loop and a split of K across threads (or CUDA blocks) both need.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include <c10/macros/Macros.h>
#include <c10/util/bit_cast.h>

namespace clever_kernels {

// Helpers called per element are C10_ALWAYS_INLINE: a call left in an `omp simd` loop keeps it
// scalar, and GCC's inliner gives up on them once softmax_exp is inlined into them.

// max that returns NaN when either argument is NaN (std::max and fmaxf drop one of them).
template <typename T>
C10_HOST_DEVICE inline T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// c ? a : b through bit masks. GCC does not if-convert a float comparison feeding ?: under its
// default -ftrapping-math, which would keep every loop calling softmax_exp scalar; a mask is plain
// integer arithmetic and vectorises.
C10_HOST_DEVICE C10_ALWAYS_INLINE float bit_select(bool c, float a, float b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  return c10::bit_cast<float>((c10::bit_cast<uint32_t>(a) & mask) |
                              (c10::bit_cast<uint32_t>(b) & ~mask));
}

// Arguments below this give softmax_exp = 0. exp(-43) = 2.1e-19: such a term is far below the
// float ulp of any sum it joins (every row sum includes exp(0) = 1), while keeping it would let
// its square, or its product with another such term, underflow into denormals, which cost on the
// order of a hundred cycles each on x86 without flush-to-zero.
constexpr float kSoftmaxExpFloor = -43.0f;

// exp for the softmax inner loops, whose arguments are a logit minus its row maximum (x <= 0).
// A libm call stops loops from vectorising without -ffast-math, so this is the usual range
// reduction x = n ln2 + r, |r| <= ln2/2, with a degree-6 polynomial for exp(r) (coefficients
// fitted for minimax relative error, 2e-9 before rounding) and 2^n built in the exponent bits:
// at most 1.4 ulp from exp on [kSoftmaxExpFloor, 0] (checked on every float there). Below the
// floor the result is 0 (-inf included); NaN stays NaN (comparisons with NaN are false, so the
// bit_selects pass it through to the polynomial); x > 88 saturates to inf.
C10_HOST_DEVICE C10_ALWAYS_INLINE float softmax_exp(float x) {
  constexpr float kLog2e = 1.44269504089f;
  // ln2 split so that n * kLn2Hi is exact for |n| < 2^15 (kLn2Hi has 9 significant bits).
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194442e-4f;
  constexpr float kHi = 88.0f;
  // 1.5 * 2^23: adding it rounds to an integer, and that integer sits in the low mantissa bits.
  constexpr float kRound = 12582912.0f;
  constexpr uint32_t kRoundBits = 0x4B400000u;

  // Clamped so that 2^n below stays a normal float whatever x is.
  float xc = bit_select(x < kSoftmaxExpFloor, kSoftmaxExpFloor, x);
  xc = bit_select(xc > kHi, kHi, xc);
  const float shifted = xc * kLog2e + kRound;
  const float n = shifted - kRound;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.384365372e-3f;
  p = p * r + 8.374155499e-3f;
  p = p * r + 4.166800156e-2f;
  p = p * r + 1.666643173e-1f;
  p = p * r + 4.999999404e-1f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // Unsigned arithmetic: the NaN path produces arbitrary bits here without undefined behaviour,
  // and p is already NaN then.
  const uint32_t biased = c10::bit_cast<uint32_t>(shifted) - kRoundBits + 127u;
  const float scale = c10::bit_cast<float>(biased << 23);
  float y = p * scale;
  y = bit_select(x < kSoftmaxExpFloor, 0.0f, y);
  y = bit_select(x > kHi, std::numeric_limits<float>::infinity(), y);
  return y;
}

// float64 inputs are for accuracy checks, where speed does not matter.
C10_HOST_DEVICE inline double softmax_exp(double x) {
  return ::exp(x);
}

// exp((m_old - m_new) * inv_temp): moves a sum kept relative to m_old to m_new >= m_old. Equal
// maxima give exactly 1, including both -inf (a segment of -inf logits), where the subtraction
// would give NaN.
template <typename T>
C10_HOST_DEVICE inline T rescale(T m_old, T m_new, T inv_temp) {
  return m_old == m_new ? T(1) : softmax_exp((m_old - m_new) * inv_temp);
}

// m_new - m_old in raw units, 0 for equal maxima (both -inf included) and for m_old = -inf: a
// segment whose student row is all -inf has a cross term of 0 or -inf whatever its reference,
// and +inf here would make NaN of it with a teacher sum of 0.
template <typename T>
C10_HOST_DEVICE inline T max_shift(T m_old, T m_new) {
  return (m_old == m_new || m_old == -std::numeric_limits<T>::infinity()) ? T(0) : m_new - m_old;
}

// What to subtract from a segment's logits before exp: its maximum, or 0 when the maximum is -inf
// (every term is exp(-inf) = 0 then, instead of exp(-inf - -inf) = NaN).
template <typename T>
C10_HOST_DEVICE inline T exp_offset(T m) {
  return m == -std::numeric_limits<T>::infinity() ? T(0) : m;
}

// Merging two segments a, b of one row: the common maximum and the factors that move each
// segment's sums to it. A sum of squares moves by the factor squared.
template <typename T>
struct MaxMerge {
  T m;
  T alpha_a;
  T alpha_b;
};

template <typename T>
C10_HOST_DEVICE inline MaxMerge<T> merge_max(T m_a, T m_b, T inv_temp) {
  const T m = nan_max(m_a, m_b);
  return {m, rescale(m_a, m, inv_temp), rescale(m_b, m, inv_temp)};
}

// Cross-entropy cross term of a (teacher row, student row) pair over a segment:
//   d = sum_k exp((a_k - m_t) * inv_tt) * (s_k - m_s)
// with a = teacher - center. Every term is <= 0, so nothing cancels. Merging segments moves the
// teacher weights by their factor alpha_t and the student offset by shift = m_s(merged) - m_s:
//   d = alpha_t_a * (d_a - shift_a * l_t_a) + alpha_t_b * (d_b - shift_b * l_t_b)
// where l_t is the segment's teacher sum before the merge. d = -inf (a -inf student logit where
// the teacher's probability is positive: the cross-entropy is +inf) stays -inf even where alpha_t
// underflows to 0, rather than 0 * -inf = NaN.
template <typename T>
C10_HOST_DEVICE inline T scale_ce_cross(T alpha_t, T d) {
  return d == -std::numeric_limits<T>::infinity() ? d : alpha_t * d;
}

template <typename T>
C10_HOST_DEVICE inline T merge_ce_cross(T d_a, T l_t_a, T alpha_t_a, T shift_a, T d_b, T l_t_b,
                                        T alpha_t_b, T shift_b) {
  return scale_ce_cross(alpha_t_a, d_a - shift_a * l_t_a) + scale_ce_cross(alpha_t_b, d_b - shift_b * l_t_b);
}

// Cosine cross term over a segment: sum_k exp((a_k - m_t) * inv_tt) * exp((s_k - m_s) * inv_ts).
template <typename T>
C10_HOST_DEVICE inline T merge_dot_cross(T p_a, T alpha_t_a, T alpha_s_a, T p_b, T alpha_t_b,
                                         T alpha_s_b) {
  return alpha_t_a * alpha_s_a * p_a + alpha_t_b * alpha_s_b * p_b;
}

// What the forward stores of a row for the backward: its softmax offset in two float32 parts,
// softmax(x / temp) = exp(((x - max) - temp * log_sum) / temp), with max = exp_offset(m) in raw
// units and log_sum = log(l) in [0, log K]. For float32, float16 and bfloat16 logits max is one
// of the row's values, so x - max is exact for the elements that matter; for float64 logits max
// is rounded to float32 and the rounding, (m - max) / temp, moves into log_sum, which is small
// enough to hold it. Folded into one float32 lse = max / temp + log_sum, the offset would be
// rounded to |lse| 2^-24: for a peaked row (|lse| ~ 30) that is a relative error of 2e-6 in every
// probability, which the cancelling terms of the cosine gradient can turn into an error far above
// the gradient itself.
template <typename T>
C10_HOST_DEVICE inline void row_offset(T m, T l, double temp, float* max_out,
                                       float* log_sum_out) {
  const double exact = static_cast<double>(exp_offset(m));
  const float rounded = static_cast<float>(exact);
  *max_out = rounded;
  // (exact - rounded) is 0 unless the logits are float64; NaN m stays NaN through it
  *log_sum_out = static_cast<float>(::log(static_cast<double>(l)) +
                                    (exact - static_cast<double>(rounded)) / temp);
}

// ce = logsumexp(s / ts) - <q, s> / ts with q = softmax of the teacher row. Writing <q, s>
// relative to the student maximum makes the maximum cancel: ce = log(l_s) - d / (l_t * ts), a
// sum of two non-negative terms, accurate however large the logits are.
template <typename T>
C10_HOST_DEVICE inline double cross_entropy(T l_s, T d, T l_t, double student_temp) {
  return ::log(static_cast<double>(l_s)) -
         static_cast<double>(d) / (static_cast<double>(l_t) * student_temp);
}

// ||softmax||_2 = sqrt(sum e^2) / sum e.
template <typename T>
C10_HOST_DEVICE inline double softmax_norm(T l, T sq) {
  return ::sqrt(static_cast<double>(sq)) / static_cast<double>(l);
}

// cos(p, r) = <e_t, e_s> / (||e_t|| ||e_s||): the softmax normalisers cancel.
template <typename T>
C10_HOST_DEVICE inline double cosine(T dot, T sq_t, T sq_s) {
  return static_cast<double>(dot) /
         (::sqrt(static_cast<double>(sq_t)) * ::sqrt(static_cast<double>(sq_s)));
}

// The backward's softmax from a stored offset (row_offset): m = max, c = temp * log_sum.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T softmax_from_offset(T x, T m, T c, T inv_temp) {
  return softmax_exp(((x - m) - c) * inv_temp);
}

// dir_loss_bwd: alpha * r - (beta_0 * q_0 + beta_1 * q_1).
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T dir_grad(T alpha, T r, T beta0, T q0, T beta1, T q1) {
  return alpha * r - (beta0 * q0 + beta1 * q1);
}

// dvr_loss_bwd: r * (u_0 * p_0 + u_1 * p_1 - z * r).
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T dvr_grad(T r, T u0, T p0, T u1, T p1, T z) {
  return r * ((u0 * p0 + u1 * p1) - z * r);
}

}  // namespace clever_kernels
