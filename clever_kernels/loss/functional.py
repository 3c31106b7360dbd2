"""Stateless CLeVER and DINO losses on the fused kernels.

Both take centres and temperatures explicitly and return this rank's batch centres (the mean
of the teacher rows, (1, K) float32); syncing them across ranks and the EMA are the modules'.
"""
from typing import Tuple

import torch

from ..reference import loss as reference
from ._function import (TRITON_LOGIT_DTYPES, DirCrossEntropy, DvrCosine, as_finite_float, check_temperature,
                        head_function, resolve_backend)

Tensor = torch.Tensor


def _pairs(stats: Tensor, ncrops: int) -> Tensor:
    """(2, V*B) per-(teacher view, student view, image) statistics -> (2(V-1), B), dropping the
    pairs where the student view is the teacher's own global view."""
    s = stats.view(2, ncrops, -1)
    return torch.cat([s[0, 1:], s[1, :1], s[1, 2:]])


def _check_temperatures(student_temp, teacher_temp):
    check_temperature("student_temp", student_temp)
    check_temperature("teacher_temp", teacher_temp)


def _check_triton_dtypes(impl: str, **logits):
    """Triton kernels (on CUDA, or interpreted) take no float64; said here, where the argument
    has its caller's name, rather than by the per-head op ("student")."""
    if impl != "triton" and next(iter(logits.values())).device.type != "cuda":
        return
    for name, x in logits.items():
        if x.dtype not in TRITON_LOGIT_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16 for the Triton kernels, got {x.dtype}")


def _prepare(student: Tensor, teacher: Tensor, center: Tensor):
    """Kernels take one floating dtype for both logits, contiguous rows and a contiguous float32 (K,)
    centre; autocast may hand the student in half precision and the teacher in float32, so
    promote rather than refuse (the cast is differentiable, gradients return in the caller's
    dtype)."""
    dtype = torch.promote_types(student.dtype, teacher.dtype)
    student = student.to(dtype).contiguous()
    teacher = teacher.detach().to(dtype).contiguous()
    # may be a view of a centre buffer that is updated in place before the backward runs: the
    # forward ops return the copy the backward reads (center_used in csrc/ops.cpp)
    center = center.detach().to(torch.float32).reshape(-1).contiguous()
    return student, teacher, center


def _check_not_transformed(impl: str):
    """torch.func transforms reach the kernels through the registered ops (their vmap rules, the
    dispatcher's unwrapping); the interpreted Triton launchers are called directly, and would
    hand the interpreter wrapped tensors (inputs, or outputs made inside a transform) it cannot
    read."""
    if impl == "triton" and torch._C._functorch.peek_interpreter_stack() is not None:
        raise RuntimeError("torch.func transforms (grad, vmap, ...) run the fused loss on CPU tensors with "
                           "backend='cpp', on CUDA ones with 'triton' or 'auto'; the interpreted Triton "
                           "kernels (backend='triton' on the CPU) do not take them")


def _head(function, student, teacher, center, ncrops, student_temp, teacher_temp, impl):
    _check_not_transformed(impl)
    student, teacher, center = _prepare(student, teacher, center)
    # the Functions also return what their backward keeps (setup_context saves it from there)
    return head_function(function).apply(student, teacher, center, ncrops, float(student_temp),
                                         float(teacher_temp), impl)[:2]


def dino_loss(student: Tensor, teacher: Tensor, center: Tensor, ncrops: int, student_temp: float,
              teacher_temp: float, backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """DINO's loss, fused.

    student: (ncrops*B, K) logits, view-major (row v*B + b); teacher: (2*B, K) logits of the two
    global views; center: (1, K) or (K,). fp32, fp16 or bf16; accumulation in fp32.
    Returns (loss (scalar, float32), batch_center (1, K) float32).
    backend: "auto" (C++ on CPU, Triton on CUDA), "cpp", "triton", or "reference".
    """
    batch = reference.check_loss_inputs(ncrops, student, teacher, center, ("student", "teacher", "center"))
    _check_temperatures(student_temp, teacher_temp)
    impl = resolve_backend(backend, student.device)
    if impl == "reference":
        return reference.dino_loss(student, teacher, center, ncrops, student_temp, teacher_temp)
    _check_triton_dtypes(impl, student=student, teacher=teacher)
    ce, teacher_sum = _head(DirCrossEntropy, student, teacher, center, ncrops, student_temp,
                            teacher_temp, impl)
    return _pairs(ce, ncrops).mean(), (teacher_sum / (2 * batch)).unsqueeze(0)


def clever_loss(student_ir: Tensor, student_ef: Tensor, teacher_ir: Tensor, teacher_ef: Tensor,
                center_ir: Tensor, center_ef: Tensor, ncrops: int, student_temp: float,
                teacher_temp: float, sep_lambd: float = 1.0, backend: str = "auto"):
    """CLeVER's loss L = L_DIR + sep_lambd * L_DVR, fused (SPEC.md; the head-norm regulariser is
    a plain parameter sum left to the trainer).

    student_ir (ncrops*B, K1), student_ef (ncrops*B, K2): student logits of both heads,
    view-major; teacher_ir (2B, K1), teacher_ef (2B, K2); center_ir (1, K1), center_ef (1, K2).
    K1 and K2 may differ. Returns (total, loss_dir, loss_dvr, batch_center_ir, batch_center_ef).
    """
    b_ir = reference.check_loss_inputs(ncrops, student_ir, teacher_ir, center_ir,
                                       ("student_ir", "teacher_ir", "center_ir"))
    b_ef = reference.check_loss_inputs(ncrops, student_ef, teacher_ef, center_ef,
                                       ("student_ef", "teacher_ef", "center_ef"))
    if b_ir != b_ef:
        raise ValueError(f"teacher_ir and teacher_ef must describe the same batch, got B={b_ir} and B={b_ef}")
    if student_ir.device != student_ef.device:
        raise ValueError(f"student_ir and student_ef must be on one device, got {student_ir.device} "
                         f"and {student_ef.device}")
    _check_temperatures(student_temp, teacher_temp)
    as_finite_float("sep_lambd", sep_lambd)
    impl = resolve_backend(backend, student_ir.device)
    if impl == "reference":
        return reference.clever_loss(student_ir, student_ef, teacher_ir, teacher_ef, center_ir, center_ef,
                                     ncrops, student_temp, teacher_temp, sep_lambd)
    _check_triton_dtypes(impl, student_ir=student_ir, student_ef=student_ef, teacher_ir=teacher_ir,
                         teacher_ef=teacher_ef)
    ce, sum_ir = _head(DirCrossEntropy, student_ir, teacher_ir, center_ir, ncrops, student_temp,
                       teacher_temp, impl)
    cos, sum_ef = _head(DvrCosine, student_ef, teacher_ef, center_ef, ncrops, student_temp,
                        teacher_temp, impl)
    loss_dir = _pairs(ce, ncrops).mean()
    loss_dvr = _pairs(cos, ncrops).mean(dim=1).abs().mean()
    rows = 2 * b_ir
    return (loss_dir + sep_lambd * loss_dvr, loss_dir, loss_dvr,
            (sum_ir / rows).unsqueeze(0), (sum_ef / rows).unsqueeze(0))
