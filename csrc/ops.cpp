// Every op's schema, declared once. Implementations register per dispatch key in
// cpu/<op>.cpp (C++), cuda/<op>.cu (CUDA C++) or from Python (Triton kernels, fake tensors).
//
// Loss ops work on one head at a time. Rows are view-major: student row v*B + b is view v of
// image b (V = ncrops views), teacher row iq*B + b is global view iq of image b. All statistics
// are float32; gradients come back in the logits' dtype.
#include <torch/extension.h>

TORCH_LIBRARY(clever_kernels, m) {
  // DINO cross-entropy head (CLeVER's DIR term).
  //   offset_student[:, r] = (m, log sum_k exp((x[r, k] - m) / student_temp))      (2, V*B)
  //                      with x = student, m = max_k x[r, k] (0 for a row of -inf): the
  //                      row's softmax offset in two parts (online_softmax.h, row_offset)
  //   offset_teacher   = the same of x = teacher - center, with teacher_temp       (2, 2*B)
  //   ce[iq, v*B+b]    = -<q[iq,b], log_softmax(student[v*B+b] / student_temp)>      (2, V*B)
  //                      with q = softmax((teacher - center) / teacher_temp), every (iq, v)
  //   teacher_sum[k]   = sum over teacher rows of teacher[:, k]                      (K,)
  //   center_used      = a copy of center, for the backward: callers update their centre
  //                      in place once the forward has run, and a copy taken outside the op
  //                      is one a graph compiler may fold back into the buffer itself   (K,)
  m.def(
      "dir_loss_fwd(Tensor student, Tensor teacher, Tensor center, int ncrops, float student_temp, "
      "float teacher_temp) -> (Tensor offset_student, Tensor offset_teacher, Tensor ce, "
      "Tensor teacher_sum, Tensor center_used)");
  //   grad[v*B+b] = alpha[v*B+b] * softmax(student[v*B+b] / student_temp)
  //                 - sum_iq beta[iq, v*B+b] * q[iq, b]                              (V*B, K)
  //   where the term of a global view's own teacher row (iq = v) is left out when its
  //   coefficient is 0 (the loss has no such pair), so a NaN teacher row stays out of it
  m.def(
      "dir_loss_bwd(Tensor student, Tensor teacher, Tensor center, Tensor offset_student, "
      "Tensor offset_teacher, Tensor alpha, Tensor beta, int ncrops, float student_temp, "
      "float teacher_temp) -> Tensor");
  // Cosine head (CLeVER's DVR term), r = softmax(student / student_temp),
  // p = softmax((teacher - center) / teacher_temp):
  //   offset_student, offset_teacher, teacher_sum, center_used as dir_loss_fwd's,
  //   norm_student[r] = ||r||_2 (V*B,), norm_teacher = ||p||_2 (2*B,),
  //   cos[iq, v*B+b]  = <p[iq,b], r[v*B+b]> / (||p|| ||r||)                         (2, V*B)
  m.def(
      "dvr_loss_fwd(Tensor student, Tensor teacher, Tensor center, int ncrops, float student_temp, "
      "float teacher_temp) -> (Tensor offset_student, Tensor offset_teacher, Tensor norm_student, "
      "Tensor norm_teacher, Tensor cos, Tensor teacher_sum, Tensor center_used)");
  //   grad[v*B+b] = r ⊙ (sum_iq u[iq, v*B+b] * p[iq, b] - z[v*B+b] * r)             (V*B, K)
  //   with the own-view term (iq = v) left out where u is 0, as dir_loss_bwd's
  m.def(
      "dvr_loss_bwd(Tensor student, Tensor teacher, Tensor center, Tensor offset_student, "
      "Tensor offset_teacher, Tensor u, Tensor z, int ncrops, float student_temp, "
      "float teacher_temp) -> Tensor");

  // Augmentation parameters: every draw of V views for B samples (definition: the tensor-op
  // sampler of clever_kernels/augment/sampler.py; per-row maths in sample_draws.h).
  //   sizes      int64 (B, 2): (H_i, W_i) of the source images, each >= 1 (the CPU op checks; on
  //              CUDA a precondition: the sampler checks sizes read from images or given on the
  //              CPU, and takes a CUDA size tensor as given, as reading it would wait for the device)
  //   ids        int64 (B,): the samples' ids
  //   key        int64 0-dim: rng.hash32(seed_lo, seed_hi, step_lo, step_hi), in [0, 2^32)
  //   first_view the key's view number of the first view; view j is first_view + j
  //   constants  float64 (V, sample::kNumViewConstants): each view's probabilities and ranges
  // Returns, field-major so that one field of one view is a contiguous (B,) row:
  //   ints (7, V, B) int64: top, left, height, width, elastic_seed, image_height, image_width
  //   floats (6, V, B) float32: angle, brightness, contrast, saturation, hue, blur_sigma
  //   flags (5, V, B) bool: flip, elastic, jitter, grayscale, solarize
  //   order (V, B, 4) int64: the jitter ops in application order
  //   iparams (V * B, 15) int64, fparams (V * B, 8) float32: the same draws as render_views'
  //              parameter tables, row v * B + b for view v of sample b (image index b)
  m.def(
      "sample_views(Tensor sizes, Tensor ids, Tensor key, int first_view, Tensor constants) -> (Tensor ints, "
      "Tensor floats, Tensor flags, Tensor order, Tensor iparams, Tensor fparams)");

  // Augmentation: every view of one output size for a batch (clever_kernels/augment/_fused.py
  // builds the arguments; pixel semantics: clever_kernels/reference/augment.py::render, in every
  // mode, antialias=False included). All tensors contiguous and on one device.
  //   pixels     uint8 (P,): the B source images packed back to back, each (C, H_i, W_i)
  //   offsets    int64 (B,): where image i starts in pixels
  //   sizes      int64 (B, 2): (H_i, W_i)
  //   channels   1 or 3 (shared by every image; 1 is replicated to RGB)
  //   iparams    int64 (N, 15) per output: image index, top, left, height, width, flip, elastic,
  //              elastic_seed (uint32), jitter, order0..order3, grayscale, solarize
  //   fparams    float32 (N, 8) per output: angle (degrees), brightness, contrast, saturation,
  //              hue, blur_sigma (0: no blur), elastic_alpha, elastic_sigma
  //   size       output side S; mean, std: 3 values each, applied to [0, 1] pixels
  //   interpolation 0 bicubic, 1 bilinear (resize); rotation_interpolation 0 nearest, 1 bilinear
  //   out_dtype  float32, float16 or bfloat16; channels_last: NHWC memory format
  // Returns (N, 3, S, S). Not differentiable: fparams must not require grad. A row that
  // augment::view_table_error refuses (crop box outside its image, order not a permutation,
  // a non-finite value, a sigma outside [0, 1000]) raises on the CPU and is a device-side assert
  // on CUDA.
  m.def(
      "render_views(Tensor pixels, Tensor offsets, Tensor sizes, int channels, Tensor iparams, "
      "Tensor fparams, int size, float[] mean, float[] std, bool antialias, int interpolation, "
      "int rotation_interpolation, ScalarType out_dtype, bool channels_last) -> Tensor");
}

namespace {
bool cuda_built() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "clever_kernels compiled ops; call them through torch.ops.clever_kernels";
  m.def("cuda_built", &cuda_built, "whether the CUDA sources were compiled into this build");
}
