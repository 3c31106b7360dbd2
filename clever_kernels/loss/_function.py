"""The autograd Functions of the fused loss, the choice of kernel backend, and the fake
(meta) implementations that let torch.compile trace the ops without running them.

Each head is one Function returning per-pair statistics, (2, V*B) float32: the
cross-entropies of the DIR head or the cosines of the DVR head. The few ops that turn those
into the scalar loss run as ordinary autograd on O(rows) data, so the kernels' backward only
needs the per-pair upstream gradient and never sees how the pairs were combined.
"""
import functools
import math
import numbers
import warnings

import torch
from torch.autograd import forward_ad

from .. import _backend

_warned = set()

#: Logit dtypes the Triton kernels take (the C++ ones take float64 too).
TRITON_LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Temperatures the kernels take, student's and teacher's: they run in float32, which holds 1/T
#: and T times a log-sum across this range (tested at both ends) but not at, say, 1e-40 or 1e38.
#: Recipes use 0.01 to 0.1.
TEMPERATURE_RANGE = (1e-4, 1e4)


def check_temperature(name: str, value) -> float:
    """value as a float, or an error naming `name` and the range the kernels take."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)  # compared as the ops will see it (np.float32(1e-4) is below 1e-4)
    lo, hi = TEMPERATURE_RANGE
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be finite and > 0, in [{lo:g}, {hi:g}], got {value!r}")
    return value


def as_finite_float(name: str, value) -> float:
    """value as a float, or a TypeError naming `name` (bools, strings, NaN and inf are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def _warn_once(message: str):
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


BACKEND_CHOICES = ("auto", "cpp", "triton", "reference")
_resolved = {}


def resolve_backend(backend: str, device: torch.device) -> str:
    """Memoised `_resolve_backend`: backends do not change within a process. Under
    torch.compile the choice is made outside the trace and enters it as a constant, also on the
    first call in a process, whose probing (imports, device queries) Dynamo could not trace."""
    return _memoised_backend(backend, device.type)


# (imports torch._dynamo, as a training loop's first optimizer step does anyway)
@torch.compiler.assume_constant_result
def _memoised_backend(backend: str, device_type: str) -> str:
    key = (backend, device_type)
    if key not in _resolved:
        _resolved[key] = _resolve_backend(backend, torch.device(device_type))
    return _resolved[key]


def _resolve_backend(backend: str, device: torch.device) -> str:
    """Maps a user's backend choice to "ops" (the dispatcher: C++ on CPU, Triton on CUDA),
    "triton" (Triton launchers called directly: CPU tensors under TRITON_INTERPRET=1) or
    "reference" (plain PyTorch). "auto" falls back to the reference only with a warning.
    Triton on CUDA goes through the registered ops, the same launchers, so that torch.compile
    sees one op with its fake instead of tracing into the launchers."""
    status = _backend.backends()
    if backend == "auto":
        key = "triton" if device.type == "cuda" else "cpu-ext"
        if device.type in ("cuda", "cpu") and status[key].available:
            return "ops"
        reason = status[key].reason if device.type in ("cuda", "cpu") else f"no kernels for {device.type}"
        _warn_once(f"clever_kernels.loss: no fused kernel for {device.type} tensors ({reason}); "
                   "using the plain-PyTorch reference loss")
        return "reference"
    if backend == "reference":
        return "reference"
    if backend == "cpp":
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors, got tensors on {device}")
        if not status["cpu-ext"].available:
            raise RuntimeError(f"backend='cpp' unavailable: {status['cpu-ext'].reason}")
        return "ops"
    if backend == "triton":
        if device.type == "cuda":
            if not status["triton"].available:
                raise RuntimeError(f"backend='triton' unavailable: {status['triton'].reason}")
            return "ops"
        if device.type == "cpu":
            if not status["triton-interpreter"].available:
                raise RuntimeError("backend='triton' on CPU tensors needs the Triton interpreter: "
                                   + status["triton-interpreter"].reason)
        else:
            raise ValueError(f"backend='triton' runs on CUDA tensors (or CPU under TRITON_INTERPRET=1), "
                             f"got {device}")
        return "triton"
    raise ValueError(f"backend must be one of {BACKEND_CHOICES}, got {backend!r}")


def _ops(impl: str):
    if impl == "ops":
        return torch.ops.clever_kernels
    from . import _triton
    return _triton


def _register_fakes():
    """Shapes of every loss op's outputs, for torch.compile and meta tensors."""
    if not hasattr(torch.library, "register_fake"):
        return  # torch < 2.4 compiles through graph breaks instead

    def stats(x, *shape):
        return x.new_empty(shape, dtype=torch.float32)

    @torch.library.register_fake("clever_kernels::dir_loss_fwd")
    def _dir_fwd(student, teacher, center, ncrops, student_temp, teacher_temp):
        rows, k = student.shape
        return (stats(student, 2, rows), stats(teacher, 2, teacher.shape[0]), stats(student, 2, rows),
                stats(teacher, k), stats(center, k))

    @torch.library.register_fake("clever_kernels::dvr_loss_fwd")
    def _dvr_fwd(student, teacher, center, ncrops, student_temp, teacher_temp):
        rows, k = student.shape
        trows = teacher.shape[0]
        return (stats(student, 2, rows), stats(teacher, 2, trows), stats(student, rows), stats(teacher, trows),
                stats(student, 2, rows), stats(teacher, k), stats(center, k))

    @torch.library.register_fake("clever_kernels::dir_loss_bwd")
    def _dir_bwd(student, teacher, center, offset_student, offset_teacher, alpha, beta, ncrops,
                 student_temp, teacher_temp):
        return torch.empty_like(student)

    @torch.library.register_fake("clever_kernels::dvr_loss_bwd")
    def _dvr_bwd(student, teacher, center, offset_student, offset_teacher, u, z, ncrops, student_temp,
                 teacher_temp):
        return torch.empty_like(student)


def _register_vmap_rules():
    """torch.func.vmap runs each loss op once per batch entry, outputs stacked: the kernels take
    one problem at a time. With these the Functions vmap by their own forward and backward
    (generate_vmap_rule), so per-sample losses and gradients work, as a loop of fused calls."""
    if not hasattr(torch.library, "register_vmap"):
        return

    def loop(op, teacher_only=()):
        """teacher_only: the outputs that depend on the teacher and centre alone (arguments 1 and
        2), unbatched where those are, as the batch centre of a shared teacher must be for the
        modules' in-place EMA."""
        def rule(info, in_dims, *args):
            def entry(i):
                return [a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)]

            if info.batch_size == 0:
                raise ValueError("clever_kernels.loss: vmap over an empty batch (a mapped dimension of size 0)")
            outputs = [op(*entry(i)) for i in range(info.batch_size)]
            if isinstance(outputs[0], torch.Tensor):
                return torch.stack(outputs), 0
            shared = in_dims[1] is None and in_dims[2] is None
            dims = tuple(None if shared and k in teacher_only else 0 for k in range(len(outputs[0])))
            return tuple(outputs[0][k] if d is None else torch.stack([o[k] for o in outputs])
                         for k, d in enumerate(dims)), dims

        return rule

    # the outputs' order is the schemas' (csrc/ops.cpp)
    for name, teacher_only in (("dir_loss_fwd", (1, 3, 4)), ("dvr_loss_fwd", (1, 3, 5, 6)),
                               ("dir_loss_bwd", ()), ("dvr_loss_bwd", ())):
        torch.library.register_vmap(f"clever_kernels::{name}",
                                    loop(getattr(torch.ops.clever_kernels, name), teacher_only))


def _register_triton_cuda():
    if torch.cuda.is_available() and _backend._triton_import() is None:
        from . import _triton
        _triton.register_cuda_impls()


if _backend.has_extension():
    _register_fakes()
    _register_vmap_rules()
    _register_triton_cuda()


class _NotDifferentiable(torch.autograd.Function):
    """The first-order gradient `grad`, attached to the tensors it was computed from
    (`depends_on`); differentiating it raises."""

    generate_vmap_rule = True  # its forward is one clone

    @staticmethod
    def forward(grad, *depends_on):
        # a copy, not detach(): the caller may modify the gradient in place, and
        # autograd.functional's forward-mode jacobian batches this op, which detach cannot be
        return grad.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass  # nothing to keep: the backward raises

    @staticmethod
    def backward(ctx, *_):
        _refuse_second_derivative()

    @staticmethod
    def jvp(ctx, *_):
        _refuse_second_derivative()


def _refuse_second_derivative():
    raise RuntimeError("clever_kernels.loss: the fused loss's gradient and tangent have no derivative of their own "
                       "(a gradient penalty or Hessian through the loss); use backend='reference' "
                       "for higher-order gradients")


def first_order_only(backward):
    """For a backward computed by kernels without a graph. Under create_graph=True a gradient
    that depends on the student (always) or on the upstream gradient must not come back as a
    constant, which autograd's once_differentiable allows when the upstream gradient is one (a
    loss's mean): differentiating it raises instead. backward(ctx, saved, *grad_outputs) gets
    the saved tensors, unpacked once here: activation checkpointing refuses a second unpack."""

    @functools.wraps(backward)
    def wrapper(ctx, *grad_outputs):
        if not ctx.needs_input_grad[0]:
            return (None,) * len(ctx.needs_input_grad)
        saved = ctx.saved_tensors
        with torch.no_grad():
            grads = backward(ctx, saved, *grad_outputs)
        # forward mode ignores grad mode: a gradient of a dual student (a Hessian-vector product
        # without create_graph) must raise too, not come back without its tangent
        if not torch.is_grad_enabled() and forward_ad._current_level < 0:
            return grads
        depends_on = [g for g in grad_outputs if isinstance(g, torch.Tensor)]
        depends_on.append(saved[0])
        return tuple(_NotDifferentiable.apply(g, *depends_on) if isinstance(g, torch.Tensor) else g
                     for g in grads)

    return wrapper


def jvp_through_rows(vjp_rows, ctx, student_tangent, n_outputs):
    """Forward mode (torch.func.jvp, jacfwd, forward_ad's dual tensors) for a head whose first
    output holds per-pair statistics stats[iq, r] of one student row r each: its tangent is
    <d stats[iq, r] / d student[r], student_tangent[r]>, the gradient rows of each teacher view
    taken from the backward kernel (upstream gradient 1 on that view's pairs) and contracted with
    the tangent. Not fused: it writes a gradient-sized tensor per teacher view, as the
    reference's forward mode writes its softmaxes. The teacher and the centre enter detached, so
    their tangents add nothing; the other outputs are not differentiable. Differentiating the
    tangent raises, as the backward does."""
    if student_tangent is None:
        return (None,) * n_outputs
    saved = ctx.saved_tensors
    rows = student_tangent.shape[0]
    tangent = student_tangent.float()
    with torch.no_grad():
        parts = []
        for iq in range(2):
            # no in-place writes: torch.func.linearize traces this rule and drops in-place
            # updates of a tensor it made (the upstream would stay 0)
            one_view = torch.arange(2, device=tangent.device) == iq
            upstream = one_view.float()[:, None].expand(2, rows).contiguous()
            parts.append((vjp_rows(ctx, saved, upstream).float() * tangent).sum(dim=1))
        stats_tangent = torch.stack(parts)
    # also without grad mode: forward AD ignores it, and a jvp of this tangent would be 0
    return (_NotDifferentiable.apply(stats_tangent, saved[0], student_tangent),) + (None,) * (n_outputs - 1)


class DirCrossEntropy(torch.autograd.Function):
    """ce[iq, v*B+b] = -<q[iq,b], log_softmax(student[v*B+b]/ts)> for every (iq, v), and the
    column sum of the teacher rows (non-differentiable). The teacher gets no gradient."""

    generate_vmap_rule = True  # the ops have vmap rules (_register_vmap_rules)

    @staticmethod
    def forward(student, teacher, center, ncrops: int, student_temp: float, teacher_temp: float, impl: str):
        off_s, off_t, ce, teacher_sum, center = _ops(impl).dir_loss_fwd(
            student, teacher, center, ncrops, student_temp, teacher_temp)
        return ce, teacher_sum, center, off_s, off_t

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*DirCrossEntropy.keep(ctx, inputs, output))

    @staticmethod
    def keep(ctx, inputs, output):
        """What the derivatives read: the tensors returned, the rest kept on ctx."""
        student, teacher, _, ncrops, student_temp, teacher_temp, impl = inputs
        ce, teacher_sum, center, off_s, off_t = output
        ctx.args = (ncrops, student_temp, teacher_temp, impl)
        ctx.mark_non_differentiable(teacher_sum, center, off_s, off_t)
        return student, teacher, center, off_s, off_t

    @staticmethod
    @first_order_only  # the backward ops have no derivative: a second one is refused, never 0
    def backward(ctx, saved, grad_ce, *_):
        return DirCrossEntropy.vjp_rows(ctx, saved, grad_ce), None, None, None, None, None, None

    @staticmethod
    def vjp_rows(ctx, saved, grad_ce):
        """The student's gradient for the upstream gradient grad_ce (2, rows) of ce."""
        student, teacher, center, off_s, off_t = saved
        ncrops, ts, tt, impl = ctx.args
        # d ce[iq, r] / d student[r] = (softmax(student[r]/ts) - q[iq]) / ts
        beta = (grad_ce.float() / ts).contiguous()
        alpha = beta.sum(dim=0).contiguous()
        return _ops(impl).dir_loss_bwd(student, teacher, center, off_s, off_t, alpha, beta, ncrops, ts, tt)


class DvrCosine(torch.autograd.Function):
    """cos[iq, v*B+b] = cos(p[iq,b], r[v*B+b]) for every (iq, v), and the column sum of the
    teacher rows (non-differentiable). The teacher gets no gradient."""

    generate_vmap_rule = True  # the ops have vmap rules (_register_vmap_rules)

    @staticmethod
    def forward(student, teacher, center, ncrops: int, student_temp: float, teacher_temp: float, impl: str):
        off_s, off_t, norm_s, norm_t, cos, teacher_sum, center = _ops(impl).dvr_loss_fwd(
            student, teacher, center, ncrops, student_temp, teacher_temp)
        return cos, teacher_sum, center, off_s, off_t, norm_s, norm_t

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*DvrCosine.keep(ctx, inputs, output))

    @staticmethod
    def keep(ctx, inputs, output):
        """What the derivatives read: the tensors returned, the rest kept on ctx."""
        student, teacher, _, ncrops, student_temp, teacher_temp, impl = inputs
        cos, teacher_sum, center, off_s, off_t, norm_s, norm_t = output
        ctx.args = (ncrops, student_temp, teacher_temp, impl)
        ctx.mark_non_differentiable(teacher_sum, center, off_s, off_t, norm_s, norm_t)
        return student, teacher, center, off_s, off_t, norm_s, norm_t, cos

    @staticmethod
    @first_order_only
    def backward(ctx, saved, grad_cos, *_):
        return DvrCosine.vjp_rows(ctx, saved, grad_cos), None, None, None, None, None, None

    @staticmethod
    def vjp_rows(ctx, saved, grad_cos):
        """The student's gradient for the upstream gradient grad_cos (2, rows) of cos."""
        student, teacher, center, off_s, off_t, norm_s, norm_t, cos = saved
        ncrops, ts, tt, impl = ctx.args
        batch = teacher.shape[0] // 2
        # With g_iq = d cos_iq / d r = p_iq/(|p_iq||r|) - cos_iq r/|r|^2 we have <r, g_iq> = 0, so
        # the softmax Jacobian reduces to r * g_iq / ts: grad = r * (sum_iq u_iq p_iq - z r).
        norm_p = norm_t.view(2, 1, batch).expand(2, ncrops, batch).reshape(2, -1)
        g = grad_cos.float()
        # A global view and its own teacher row form no pair of the loss (upstream gradient 0):
        # its terms are exactly 0, also where that teacher row has no probabilities (NaN norm
        # and cosine), as in the reference; the kernels skip that teacher likewise.
        own_view = torch.eye(2, ncrops, dtype=torch.bool, device=g.device)[:, :, None]
        absent = (own_view & (g.view(2, ncrops, batch) == 0)).view(2, -1)
        u = torch.where(absent, 0.0, g / (ts * norm_p * norm_s)).contiguous()
        z = (torch.where(absent, 0.0, g * cos).sum(dim=0) / (ts * norm_s * norm_s)).contiguous()
        return _ops(impl).dvr_loss_bwd(student, teacher, center, off_s, off_t, u, z, ncrops, ts, tt)


def _with_forward_mode(function, n_outputs: int):
    """`function` with a jvp. A separate class because Dynamo cannot trace a Function that
    defines one (a graph break in every compiled step); `head_function` picks it only while a
    forward-mode level is open."""

    class WithForwardMode(function):
        @staticmethod
        def setup_context(ctx, inputs, output):
            kept = function.keep(ctx, inputs, output)
            ctx.save_for_backward(*kept)
            ctx.save_for_forward(*kept)

        @staticmethod
        def jvp(ctx, student_tangent, *_):
            return jvp_through_rows(function.vjp_rows, ctx, student_tangent, n_outputs)

    WithForwardMode.__name__ = WithForwardMode.__qualname__ = f"{function.__name__}WithForwardMode"
    return WithForwardMode


_FORWARD_MODE = {DirCrossEntropy: _with_forward_mode(DirCrossEntropy, 5),
                 DvrCosine: _with_forward_mode(DvrCosine, 7)}


def head_function(function):
    """The Function a head runs: `function`, or its forward-mode twin while a dual level is open
    (torch.func.jvp and jacfwd open one too), where compiling the loss is refused."""
    if forward_ad._current_level >= 0:
        if torch.compiler.is_compiling():
            # A compiled Function drops its inputs' tangents without a word, and a trace cannot
            # tell dual inputs from plain ones (it reads every tangent as None): refused while a
            # level is open, so a non-fullgraph compile falls back to eager here
            raise RuntimeError("clever_kernels.loss: while a forward-mode level is open (forward_ad.dual_level, "
                               "torch.func.jvp) the loss runs eagerly, so it cannot be compiled with "
                               "fullgraph=True there")
        return _FORWARD_MODE[function]
    return function
