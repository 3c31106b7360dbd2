// Every op's schema, declared once. Implementations register per dispatch key in
// cpu/<op>.cpp (C++), cuda/<op>.cu (CUDA C++) or from Python (Triton kernels, fake tensors).
//
// Loss ops work on one head at a time. Rows are view-major: student row v*B + b is view v of
// image b (V = ncrops views), teacher row iq*B + b is global view iq of image b. All statistics
// are float32; gradients come back in the logits' dtype.
#include <torch/extension.h>

TORCH_LIBRARY(clever_kernels, m) {
  // DINO cross-entropy head (CLeVER's DIR term).
  //   lse_student[r]   = logsumexp(student[r] / student_temp)                       (V*B,)
  //   lse_teacher[r]   = logsumexp((teacher[r] - center) / teacher_temp)            (2*B,)
  //   ce[iq, v*B+b]    = -<q[iq,b], log_softmax(student[v*B+b] / student_temp)>      (2, V*B)
  //                      with q = softmax((teacher - center) / teacher_temp), every (iq, v)
  //   teacher_sum[k]   = sum over teacher rows of teacher[:, k]                      (K,)
  m.def(
      "dir_loss_fwd(Tensor student, Tensor teacher, Tensor center, int ncrops, float student_temp, "
      "float teacher_temp) -> (Tensor lse_student, Tensor lse_teacher, Tensor ce, Tensor teacher_sum)");
  //   grad[v*B+b] = alpha[v*B+b] * softmax(student[v*B+b] / student_temp)
  //                 - sum_iq beta[iq, v*B+b] * q[iq, b]                              (V*B, K)
  m.def(
      "dir_loss_bwd(Tensor student, Tensor teacher, Tensor center, Tensor lse_student, "
      "Tensor lse_teacher, Tensor alpha, Tensor beta, int ncrops, float student_temp, "
      "float teacher_temp) -> Tensor");
  // Cosine head (CLeVER's DVR term), r = softmax(student / student_temp),
  // p = softmax((teacher - center) / teacher_temp):
  //   norm_student[r] = ||r||_2 (V*B,), norm_teacher = ||p||_2 (2*B,),
  //   cos[iq, v*B+b]  = <p[iq,b], r[v*B+b]> / (||p|| ||r||)                         (2, V*B)
  m.def(
      "dvr_loss_fwd(Tensor student, Tensor teacher, Tensor center, int ncrops, float student_temp, "
      "float teacher_temp) -> (Tensor lse_student, Tensor lse_teacher, Tensor norm_student, "
      "Tensor norm_teacher, Tensor cos, Tensor teacher_sum)");
  //   grad[v*B+b] = r ⊙ (sum_iq u[iq, v*B+b] * p[iq, b] - z[v*B+b] * r)             (V*B, K)
  m.def(
      "dvr_loss_bwd(Tensor student, Tensor teacher, Tensor center, Tensor lse_student, "
      "Tensor lse_teacher, Tensor u, Tensor z, int ncrops, float student_temp, "
      "float teacher_temp) -> Tensor");
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
