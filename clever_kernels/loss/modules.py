"""CLeVERLoss and DINOLoss: drop-in replacements for the authors' CLeVER_DINOLoss and DINO's
DINOLoss (same constructor arguments, forward arguments, results and buffer names), on the
fused kernels."""
import operator

import torch
import torch.distributed as dist

from ..reference.loss import teacher_temp_schedule
from ._function import BACKEND_CHOICES, as_finite_float, check_temperature
from .functional import clever_loss, dino_loss


def _sync_centers_first(module, *hook_args):
    # state_dict() sees the EMA in flight applied; load_state_dict() lands it first, so that the
    # loaded centres are the ones kept
    module.sync_centers()


def _as_int(name: str, value) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def _as_width(name: str, value) -> int:
    if hasattr(value, "sep_lambd"):
        raise TypeError(f"{name} must be an int, got {value!r}: the authors' args goes by keyword, "
                        "CLeVERLoss(..., center_momentum, args=args)")
    width = _as_int(name, value)
    if width < 1:
        raise ValueError(f"{name} must be >= 1, got {width}")
    return width


def _check_width(name: str, logits, center, dim_name: str):
    # named after the constructor argument: the centre the functional check would name is the
    # module's own
    if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[1] != center.shape[-1]:
        raise ValueError(f"{name} has K = {logits.shape[1]} columns, but this loss was built with "
                         f"{dim_name}={center.shape[-1]}")


class _CenteredLoss(torch.nn.Module):
    """Holds the centre buffers and their EMA.

    Not distributed, the buffers hold the updated centres when forward returns. Distributed,
    every centre's batch sum and the row count travel in one all_reduce issued asynchronously
    after the loss; it is waited for before the next forward and before state_dict(), so the
    reduction overlaps the backward pass (DINOv2 does the same).
    """

    _centers = ()

    def __init__(self, ncrops, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs,
                 student_temp, center_momentum, backend):
        super().__init__()
        center_momentum = as_finite_float("center_momentum", center_momentum)
        student_temp = check_temperature("student_temp", student_temp)
        ncrops = _as_int("ncrops", ncrops)
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        if ncrops < 2:
            raise ValueError(f"ncrops must be an int >= 2, got {ncrops!r}")
        if backend not in BACKEND_CHOICES:
            raise ValueError(f"backend must be one of {BACKEND_CHOICES}, got {backend!r}")
        warmup_teacher_temp_epochs = _as_int("warmup_teacher_temp_epochs", warmup_teacher_temp_epochs)
        nepochs = _as_int("nepochs", nepochs)
        # the warm-up start is used only with warm-up epochs, as in DINO's schedule
        if warmup_teacher_temp_epochs > 0:
            warmup_teacher_temp = check_temperature("warmup_teacher_temp", warmup_teacher_temp)
        teacher_temp = check_temperature("teacher_temp", teacher_temp)
        self.ncrops = ncrops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.backend = backend
        # a list, not an array: indexing it under torch.compile is a constant, not a tensor read
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs).tolist()
        self._warmup_epochs = warmup_teacher_temp_epochs
        self._pending = None
        self.register_state_dict_pre_hook(_sync_centers_first)
        self.register_load_state_dict_pre_hook(_sync_centers_first)

    def __getstate__(self):
        # a copy or a pickle holds the centres with their EMA applied, never the collective's handle
        self.sync_centers()
        return super().__getstate__()

    def teacher_temp(self, epoch: int) -> float:
        # A compiled step that takes the epoch sees it as a symbolic int once it has changed:
        # only the warm-up's temperatures, constants of the ops, specialise on its value, so past
        # the warm-up every epoch runs one graph, guarded by the comparisons below, instead of
        # recompiling each epoch until torch._dynamo's recompile limit. operator.index would
        # specialise on a plain int too, so that one is not converted while compiling.
        if not torch.compiler.is_compiling() or isinstance(epoch, bool) or not isinstance(epoch, int):
            epoch = _as_int("epoch", epoch)
        nepochs = len(self.teacher_temp_schedule)
        if not 0 <= epoch < nepochs:
            raise ValueError(f"epoch must be in [0, nepochs={nepochs}), got {epoch}")
        # a module pickled before _warmup_epochs existed looks every epoch up
        if epoch >= getattr(self, "_warmup_epochs", nepochs):
            return self.teacher_temp_schedule[-1]
        return self.teacher_temp_schedule[epoch]

    @torch.no_grad()
    def _start_center_update(self, batch_means, rows: int):
        if not (dist.is_available() and dist.is_initialized()):
            for name, mean in zip(self._centers, batch_means):
                self._ema(name, mean.reshape(1, -1))
            return
        sums = [mean.reshape(-1) * rows for mean in batch_means]
        packed = torch.cat(sums + [sums[0].new_full((1,), float(rows))])
        self._pending = (packed, dist.all_reduce(packed, async_op=True))

    def _ema(self, name, mean):
        center = getattr(self, name)
        center.mul_(self.center_momentum).add_(mean.to(center.dtype), alpha=1 - self.center_momentum)

    @torch.no_grad()
    def sync_centers(self):
        """Waits for the centres' all_reduce, if one is in flight, and applies the EMA."""
        if self._pending is None:
            return
        packed, work = self._pending
        self._pending = None
        work.wait()
        total_rows = packed[-1]
        offset = 0
        for name in self._centers:
            width = getattr(self, name).shape[-1]
            self._ema(name, (packed[offset:offset + width] / total_rows).reshape(1, -1))
            offset += width


class CLeVERLoss(_CenteredLoss):
    """CLeVER's loss: DINO cross-entropy on the IR head plus sep_lambd times the orthogonality
    term on the EF head; centres `center` (1, out_dim) and `center2` (1, dvr_out_dim).

    forward(student_ir, student_ef, teacher_ir, teacher_ef, epoch) -> (total, loss_dir, loss_dvr)
    with student logits (ncrops*B, K) view-major and teacher logits (2*B, K). The authors' call,
    forward(..., criterion, L1, epoch) with criterion nn.CosineSimilarity(dim=1) and L1
    nn.L1Loss(), is taken as is, and so is their constructor's `args` (sep_lambd is read from
    args.sep_lambd), so that swapping the class in changes nothing else.
    backend: "auto" (C++ on CPU, Triton on CUDA; plain PyTorch with a warning when neither is
    built), "cpp", "triton", "reference".
    """

    _centers = ("center", "center2")

    def __init__(self, out_dim, ncrops, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs,
                 nepochs, student_temp=0.1, center_momentum=0.9, dvr_out_dim=None, sep_lambd=None,
                 backend="auto", args=None):
        super().__init__(ncrops, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs,
                         student_temp, center_momentum, backend)
        if args is not None:
            from_args = getattr(args, "sep_lambd", None)
            if from_args is None:
                raise ValueError("args must have a sep_lambd attribute (the authors' --sep_lambd), "
                                 f"got {args!r}")
            from_args = as_finite_float("args.sep_lambd", from_args)
            if sep_lambd is not None and as_finite_float("sep_lambd", sep_lambd) != from_args:
                raise ValueError(f"sep_lambd={sep_lambd} and args.sep_lambd={from_args} disagree; give one")
            sep_lambd = from_args
        self.sep_lambd = 1.0 if sep_lambd is None else as_finite_float("sep_lambd", sep_lambd)
        out_dim = _as_width("out_dim", out_dim)
        dvr_out_dim = out_dim if dvr_out_dim is None else _as_width("dvr_out_dim", dvr_out_dim)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, dvr_out_dim))

    def forward(self, student_ir, student_ef, teacher_ir, teacher_ef, *criterion_l1_epoch, epoch=None):
        epoch = _authors_epoch(criterion_l1_epoch, epoch, student_ef)
        _check_width("student_ir", student_ir, self.center, "out_dim")
        _check_width("student_ef", student_ef, self.center2, "dvr_out_dim")
        self.sync_centers()
        total, loss_dir, loss_dvr, mean_ir, mean_ef = clever_loss(
            student_ir, student_ef, teacher_ir, teacher_ef, self.center, self.center2, self.ncrops,
            self.student_temp, self.teacher_temp(epoch), self.sep_lambd, backend=self.backend)
        self._start_center_update((mean_ir, mean_ef), teacher_ir.shape[0])
        return total, loss_dir, loss_dvr


def _authors_epoch(rest, epoch, student_ef):
    """The epoch of forward(..., epoch) or of the authors' forward(..., criterion, L1, epoch),
    whose criterion and L1 must be the ones the fused DVR term computes: the cosine with an eps
    that never binds (two softmax rows of width K have norms at least 1 / sqrt(K) each)."""
    given = 4 + len(rest) + (epoch is not None)
    if epoch is not None:
        rest = (*rest, epoch)
    if len(rest) == 1:
        return rest[0]
    if len(rest) != 3:
        how = f" ({4 + len(rest) - 1} positional, epoch by keyword)" if epoch is not None else ""
        raise TypeError("CLeVERLoss.forward takes (student_ir, student_ef, teacher_ir, teacher_ef, epoch) or the "
                        f"authors' (..., criterion, L1, epoch), got {given} arguments{how}")
    criterion, l1, epoch = rest
    width = student_ef.shape[-1] if isinstance(student_ef, torch.Tensor) and student_ef.dim() else 1
    if not (isinstance(criterion, torch.nn.CosineSimilarity) and criterion.dim in (1, -1)
            and criterion.eps <= 1.0 / width):
        raise ValueError("criterion must be nn.CosineSimilarity(dim=1) with eps <= 1/K, the authors' DVR "
                         f"similarity (the fused loss computes that one), got {criterion!r} with "
                         f"dim={getattr(criterion, 'dim', None)}, eps={getattr(criterion, 'eps', None)} "
                         f"for K={width}")
    if not (isinstance(l1, torch.nn.L1Loss) and l1.reduction == "mean"):
        raise ValueError("L1 must be nn.L1Loss() (the absolute value of the DVR term), got "
                         f"{type(l1).__name__} with reduction={getattr(l1, 'reduction', None)!r}")
    return epoch


class DINOLoss(_CenteredLoss):
    """DINO's loss with centre `center` (1, out_dim).

    forward(student_output, teacher_output, epoch) -> loss.
    """

    _centers = ("center",)

    def __init__(self, out_dim, ncrops, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs,
                 nepochs, student_temp=0.1, center_momentum=0.9, backend="auto"):
        super().__init__(ncrops, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs,
                         student_temp, center_momentum, backend)
        self.register_buffer("center", torch.zeros(1, _as_width("out_dim", out_dim)))

    def forward(self, student_output, teacher_output, epoch):
        _check_width("student_output", student_output, self.center, "out_dim")
        self.sync_centers()
        loss, mean = dino_loss(student_output, teacher_output, self.center, self.ncrops, self.student_temp,
                               self.teacher_temp(epoch), backend=self.backend)
        self._start_center_update((mean,), teacher_output.shape[0])
        return loss
