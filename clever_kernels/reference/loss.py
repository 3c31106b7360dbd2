"""The CLeVER and DINO losses in plain PyTorch, written in the authors' per-pair form.

Notation follows SPEC.md: B images, V = ncrops student views stacked view-major (row v*B + b),
2 teacher (global) views, head 1 (IR) of width K1 and head 2 (EF) of width K2, student
temperature ts, teacher temperature tt, centres c1 (1, K1) and c2 (1, K2).
"""
import math
from typing import Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

Tensor = torch.Tensor


def teacher_temp_schedule(warmup_teacher_temp: float, teacher_temp: float,
                          warmup_teacher_temp_epochs: int, nepochs: int) -> np.ndarray:
    """Per-epoch teacher temperature: linear warm-up, then constant (DINO's schedule)."""
    if warmup_teacher_temp_epochs < 0 or nepochs < 1:
        raise ValueError(f"warmup_teacher_temp_epochs must be >= 0 and nepochs >= 1, got "
                         f"{warmup_teacher_temp_epochs} and {nepochs}")
    if warmup_teacher_temp_epochs > nepochs:
        raise ValueError(f"warmup_teacher_temp_epochs ({warmup_teacher_temp_epochs}) must not exceed "
                         f"nepochs ({nepochs})")
    # the warm-up start is unused without warm-up epochs (DINO's schedule takes any value then)
    used = (("warmup_teacher_temp", warmup_teacher_temp),) if warmup_teacher_temp_epochs > 0 else ()
    for name, value in used + (("teacher_temp", teacher_temp),):
        if not 0 < value < math.inf:
            raise ValueError(f"{name} must be finite and > 0, got {value}")
    return np.concatenate((
        np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
        np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp,
    ))


def view_pairs(ncrops: int):
    """The (teacher view iq, student view v) pairs of the loss: every student view against
    both teacher views except the same global view. 2 * (ncrops - 1) pairs."""
    return [(iq, v) for iq in range(2) for v in range(ncrops) if v != iq]


def _at_least_float32(*tensors):
    """fp16 / bf16 logits computed in float32, as the kernels accumulate and as the authors' loss
    runs on a GPU under autocast (softmax, log_softmax and cosine_similarity autocast to float32);
    a bf16 softmax over 65536 columns would lose the DVR term's precision. float64 stays float64."""
    return tuple(t.to(torch.promote_types(t.dtype, torch.float32)) for t in tensors)


def dir_loss(student: Tensor, teacher: Tensor, center: Tensor, ncrops: int,
             student_temp: float, teacher_temp: float) -> Tensor:
    """DINO's cross-entropy term (CLeVER's L_DIR), averaged over pairs and images.

    student: (ncrops*B, K) logits; teacher: (2*B, K) logits; center: (1, K) or (K,).
    """
    student, teacher, center = _at_least_float32(student, teacher, center)
    student_out = (student / student_temp).chunk(ncrops)
    q = F.softmax((teacher - center.reshape(1, -1)) / teacher_temp, dim=-1).detach().chunk(2)
    total, n_terms = 0.0, 0
    for iq, v in view_pairs(ncrops):
        loss = torch.sum(-q[iq] * F.log_softmax(student_out[v], dim=-1), dim=-1)
        total = total + loss.mean()
        n_terms += 1
    return total / n_terms


def dvr_loss(student: Tensor, teacher: Tensor, center: Tensor, ncrops: int,
             student_temp: float, teacher_temp: float) -> Tensor:
    """CLeVER's orthogonality term L_DVR: per pair, |batch mean of cos(p, r)|, averaged over
    pairs. The absolute value sits outside the batch mean, as in the authors' code."""
    student, teacher, center = _at_least_float32(student, teacher, center)
    r = F.softmax(student / student_temp, dim=-1).chunk(ncrops)
    p = F.softmax((teacher - center.reshape(1, -1)) / teacher_temp, dim=-1).detach().chunk(2)
    total, n_terms = 0.0, 0
    for iq, v in view_pairs(ncrops):
        total = total + F.cosine_similarity(p[iq], r[v], dim=-1).mean().abs()
        n_terms += 1
    return total / n_terms


def batch_center(teacher: Tensor) -> Tensor:
    """Mean of this rank's teacher rows, (1, K), in float32."""
    with torch.no_grad():
        return teacher.float().mean(dim=0, keepdim=True)


def all_reduce_center(local_mean: Tensor, rows: int) -> Tensor:
    """The batch centre over every rank: the sum of all teacher rows (all_reduce) over the
    number of rows on all ranks. The authors divide by their own rank's rows times the world
    size instead; the two agree when every rank has the same batch, and with uneven batches
    this one is the mean over all rows, the same on every rank. Identity when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return local_mean
    with torch.no_grad():
        packed = torch.cat([local_mean.flatten() * rows,
                            torch.tensor([float(rows)], device=local_mean.device)])
        dist.all_reduce(packed)
        return (packed[:-1] / packed[-1]).reshape(local_mean.shape)


def update_center(center: Tensor, batch_mean: Tensor, momentum: float) -> Tensor:
    """EMA of the centre: momentum * center + (1 - momentum) * batch_mean."""
    return center * momentum + batch_mean * (1 - momentum)


def check_loss_inputs(ncrops: int, student: Tensor, teacher: Tensor, center: Tensor,
                      names: Tuple[str, str, str]) -> int:
    """Validates one head's logits; returns B. Raises ValueError/TypeError naming the argument."""
    s_name, t_name, c_name = names
    if isinstance(ncrops, bool) or not hasattr(ncrops, "__index__"):
        raise TypeError(f"ncrops must be an int, got {ncrops!r}")
    if ncrops < 2:
        raise ValueError(f"ncrops must be >= 2 (two global views at least), got {ncrops}")
    for name, x in ((s_name, student), (t_name, teacher)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D (rows, K), got shape {tuple(x.shape)}")
    if teacher.shape[0] == 0 or teacher.shape[0] % 2:
        raise ValueError(f"{t_name} must have 2*B rows (two global views of B >= 1 images), "
                         f"got {teacher.shape[0]}")
    batch = teacher.shape[0] // 2
    if student.shape[0] != ncrops * batch:
        raise ValueError(f"{s_name} must have ncrops*B = {ncrops}*{batch} = {ncrops * batch} rows "
                         f"(B from {t_name}), got {student.shape[0]}")
    if student.shape[1] != teacher.shape[1]:
        raise ValueError(f"{s_name} and {t_name} must have the same width K, got "
                         f"{student.shape[1]} and {teacher.shape[1]}")
    if student.shape[1] == 0:
        raise ValueError(f"{s_name} and {t_name} must have K >= 1 columns, got 0")
    if student.device != teacher.device:
        raise ValueError(f"{s_name} and {t_name} must be on one device, got {student.device} and "
                         f"{teacher.device}")
    if not isinstance(center, torch.Tensor):
        raise TypeError(f"{c_name} must be a torch.Tensor, got {type(center).__name__}")
    if not center.is_floating_point():
        raise TypeError(f"{c_name} must be a floating-point tensor, got {center.dtype}")
    if tuple(center.shape) not in ((teacher.shape[1],), (1, teacher.shape[1])):
        raise ValueError(f"{c_name} must have shape (1, K) or (K,) with K = {teacher.shape[1]}, got "
                         f"{tuple(center.shape)}")
    if center.device != teacher.device:
        raise ValueError(f"{c_name} must be on {teacher.device}, got {center.device}")
    return batch


def dino_loss(student: Tensor, teacher: Tensor, center: Tensor, ncrops: int,
              student_temp: float, teacher_temp: float) -> Tuple[Tensor, Tensor]:
    """DINO's loss. Returns (loss, this rank's batch centre (1, K)); syncing and updating the
    centre is the caller's."""
    check_loss_inputs(ncrops, student, teacher, center, ("student", "teacher", "center"))
    return (dir_loss(student, teacher, center, ncrops, student_temp, teacher_temp),
            batch_center(teacher))


def clever_loss(student_ir: Tensor, student_ef: Tensor, teacher_ir: Tensor, teacher_ef: Tensor,
                center_ir: Tensor, center_ef: Tensor, ncrops: int, student_temp: float,
                teacher_temp: float, sep_lambd: float = 1.0):
    """CLeVER's loss L = L_DIR + sep_lambd * L_DVR (SPEC.md), the head-norm regulariser excluded.

    student_ir (ncrops*B, K1), student_ef (ncrops*B, K2), teacher_ir (2B, K1),
    teacher_ef (2B, K2), center_ir (1, K1), center_ef (1, K2); K1 and K2 may differ.
    Returns (total, loss_dir, loss_dvr, batch_center_ir, batch_center_ef), the batch centres
    being this rank's teacher means (1, K).
    """
    b_ir = check_loss_inputs(ncrops, student_ir, teacher_ir, center_ir,
                             ("student_ir", "teacher_ir", "center_ir"))
    b_ef = check_loss_inputs(ncrops, student_ef, teacher_ef, center_ef,
                             ("student_ef", "teacher_ef", "center_ef"))
    if b_ir != b_ef:
        raise ValueError(f"teacher_ir and teacher_ef must describe the same batch, got B={b_ir} and B={b_ef}")
    loss_dir = dir_loss(student_ir, teacher_ir, center_ir, ncrops, student_temp, teacher_temp)
    loss_dvr = dvr_loss(student_ef, teacher_ef, center_ef, ncrops, student_temp, teacher_temp)
    return (loss_dir + sep_lambd * loss_dvr, loss_dir, loss_dvr,
            batch_center(teacher_ir), batch_center(teacher_ef))


class CLeVERLossReference(torch.nn.Module):
    """The authors' CLeVER_DINOLoss module, in plain PyTorch, with both centres as buffers
    (`center` (1, out_dim), `center2` (1, dvr_out_dim)); dvr_out_dim may differ from out_dim."""

    def __init__(self, out_dim, ncrops, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs,
                 nepochs, student_temp=0.1, center_momentum=0.9, dvr_out_dim=None, sep_lambd=1.0):
        super().__init__()
        self.ncrops = ncrops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.sep_lambd = sep_lambd
        dvr_out_dim = out_dim if dvr_out_dim is None else dvr_out_dim
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, dvr_out_dim))
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs)

    def forward(self, student_ir, student_ef, teacher_ir, teacher_ef, epoch):
        temp = float(self.teacher_temp_schedule[epoch])
        total, loss_dir, loss_dvr, bc1, bc2 = clever_loss(
            student_ir, student_ef, teacher_ir, teacher_ef, self.center, self.center2,
            self.ncrops, self.student_temp, temp, self.sep_lambd)
        rows = teacher_ir.shape[0]
        with torch.no_grad():
            self.center.copy_(update_center(self.center, all_reduce_center(bc1, rows), self.center_momentum))
            self.center2.copy_(update_center(self.center2, all_reduce_center(bc2, rows), self.center_momentum))
        return total, loss_dir, loss_dvr


class DINOLossReference(torch.nn.Module):
    """DINO's DINOLoss in plain PyTorch; one centre buffer `center` (1, out_dim)."""

    def __init__(self, out_dim, ncrops, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs,
                 nepochs, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.ncrops = ncrops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs)

    def forward(self, student_output, teacher_output, epoch):
        temp = float(self.teacher_temp_schedule[epoch])
        loss, bc = dino_loss(student_output, teacher_output, self.center, self.ncrops,
                             self.student_temp, temp)
        with torch.no_grad():
            bc = all_reduce_center(bc, teacher_output.shape[0])
            self.center.copy_(update_center(self.center, bc, self.center_momentum))
        return loss
