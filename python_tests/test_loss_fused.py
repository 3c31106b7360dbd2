"""The fused loss (functional forms and modules) against the plain-PyTorch reference: values,
gradients of both student inputs, centres, dtypes, odd widths, errors, NaN and extreme logits,
torch.compile, autocast and the two-rank centre sync. Runs the C++ kernels, and the Triton
kernels through the interpreter (TRITON_INTERPRET=1, set by the test command)."""
import functools
import math
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import clever_kernels
from clever_kernels.loss import CLeVERLoss, DINOLoss, clever_loss, dino_loss
from clever_kernels.reference import loss as ref

from conftest import tolerance
from two_ranks import expected_centers, make_rank_inputs, run_two_ranks

BACKENDS = []
if clever_kernels.backends()["cpu-ext"].available:
    BACKENDS.append("cpp")
if clever_kernels.backends()["triton-interpreter"].available:
    BACKENDS.append("triton")
pytestmark = pytest.mark.skipif(not BACKENDS, reason="neither the C++ extension nor the Triton interpreter is available")

TS = 0.1


def _inputs(rng, batch, ncrops, k1, k2, dtype, scale=3.0, dvr_scale=None):
    """Logits of both heads. The DVR head's are milder by default (scale 0.3): at scale 3 both
    softmaxes are near one-hot on unrelated indices, the cosines ~0 and their gradients as small
    as 1e-50, which no tolerance could check."""
    dvr_scale = min(scale, 0.3) if dvr_scale is None else dvr_scale

    def randn(*shape, s=scale):
        return (torch.randn(*shape, generator=rng, dtype=torch.float64) * s).to(dtype)

    return (randn(ncrops * batch, k1), randn(ncrops * batch, k2, s=dvr_scale), randn(2 * batch, k1),
            randn(2 * batch, k2, s=dvr_scale), randn(1, k1, s=0.5).float(), randn(1, k2, s=0.5).float())


def _run(fn, s1, s2, t1, t2, c1, c2, ncrops, tt, ts=TS, **kw):
    """Loss parts and gradients of both student inputs, each part backpropagated with its own
    weight so the kernels see a general upstream gradient."""
    a, b = s1.detach().clone().requires_grad_(), s2.detach().clone().requires_grad_()
    total, l_dir, l_dvr, bc1, bc2 = fn(a, b, t1, t2, c1, c2, ncrops, ts, tt, 0.7, **kw)
    (total + 0.3 * l_dir - 2.0 * l_dvr).backward()
    return [total, l_dir, l_dvr, bc1, bc2], a.grad, b.grad


def _reference(s1, s2, t1, t2, c1, c2, ncrops, tt, ts=TS):
    # the reference sees exactly the rounded inputs, in float64
    up = [x.double() for x in (s1, s2, t1, t2, c1, c2)]
    return _run(ref.clever_loss, *up, ncrops, tt, ts)


def reference_centred_in_float32(s1, s2, t1, t2, c1, c2, ncrops, tt, ts=TS):
    """The float64 reference on the teacher centred in float32, t - c rounded as the kernels (and
    the authors' float32 module) centre it. At |t| ~ 1e4 that rounding (ulp 1e-3, an exponent
    error of 1e-2 at tt = 0.04) moves near-tied teacher probabilities by ~1%, and the loss, whose
    student log-probabilities differ by ~1e5 between such columns, by up to ~3e-4 relative: the
    conditioning of float32 centring, not an error of the kernels, which this isolates."""
    centred = [(t.float() - c.float()).to(t.dtype) for t, c in ((t1, c1), (t2, c2))]
    return _reference(s1, s2, *centred, torch.zeros_like(c1), torch.zeros_like(c2), ncrops, tt, ts)


def _assert_close(got, want, dtype, what, unit=1.0):
    """atol scales with the largest reference value, or with `unit` when that is larger: 1 for
    losses and centres (values of order 1), for a gradient the natural size of the terms it is a
    difference of, so that a gradient far below 1 is still held to its own size."""
    atol, rtol = tolerance(dtype)
    want = want.double()
    scale = max(unit, want.abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(got.double(), want, atol=atol * scale, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _check_against_reference(backend, batch, ncrops, k1, k2, dtype, rng, tt=0.04, scale=3.0, device="cpu"):
    """The loss on `device` against the float64 reference (evaluated on the same device)."""
    inputs = [x.to(device) for x in _inputs(rng, batch, ncrops, k1, k2, dtype, scale)]
    parts, g1, g2 = _run(clever_loss, *inputs, ncrops, tt, backend=backend)
    _assert_matches(parts, g1, g2, _reference(*inputs, ncrops, tt), batch, ncrops, inputs[1],
                    torch.float32 if dtype == torch.float64 else dtype, dtype)


def _assert_matches(parts, g1, g2, want, batch, ncrops, student_ef, value_dtype, grad_dtype):
    """Loss parts and batch centres held to value_dtype's tolerance, the gradients of both
    student inputs (which must come back in grad_dtype) to grad_dtype's, against the reference's
    (parts, grad student_ir, grad student_ef) `want`."""
    want_parts, w1, w2 = want
    for name, got, exp in zip(("total", "loss_dir", "loss_dvr", "center_ir", "center_ef"), parts, want_parts):
        _assert_close(got, exp, value_dtype, name)
    assert g1.dtype == grad_dtype and g2.dtype == grad_dtype
    # A gradient row is a difference of softmax terms of size 1 / (n_terms * B * ts) each (SPEC.md),
    # which cancel where student and teacher are both near one-hot on one index (likely with
    # B = 1 and tt = 0.04): there the reference is ~0 and the kernels' float32 arithmetic
    # leaves a few ulps of that size, so the tolerance is relative to it.
    # The DVR gradient's terms carry one more student softmax factor (SPEC.md: r * (mix - coef
    # * r)), so their size is unit times the largest student probability: about unit / K for
    # spread rows, unit where K = 1 (there the gradient is exactly 0 and the kernels leave the
    # rounding of terms of that size).
    unit = 1.0 / (2 * (ncrops - 1) * batch * TS)
    _assert_close(g1, w1, grad_dtype, "grad student_ir", unit)
    _assert_close(g2, w2, grad_dtype, "grad student_ef", unit * _largest_probability(student_ef))


def _largest_probability(student, ts=TS):
    return (student.double() / ts).softmax(-1).max().item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ts, tt", [(1e-4, 1e-4), (1e4, 1e4), (0.1, 1e-4), (1e4, 0.04)])
def test_temperatures_at_the_ends_of_their_range(rng, backend, ts, tt):
    """The kernels take temperatures in [1e-4, 1e4] (one-hot to uniform softmaxes): float32 holds
    1/T and T times a log-sum across it, and both ends match the float64 reference. At tt = 1e-4
    the float32 rounding of t - c (about 2e-7 of t ~ 3) is an exponent error of 2e-3, which moves
    near-tied teacher probabilities past the float32 tolerance on rare seeds (about 1 in 500):
    the losses and gradients are held to the reference on the teacher centred in float32, the
    batch centres (the plain teacher's mean) to the plain one."""
    batch, ncrops = 3, 4
    inputs = _inputs(rng, batch, ncrops, 300, 200, torch.float32)
    parts, g1, g2 = _run(clever_loss, *inputs, ncrops, tt, ts, backend=backend)
    want_parts, w1, w2 = reference_centred_in_float32(*inputs, ncrops, tt, ts)
    plain_parts = _reference(*inputs, ncrops, tt, ts)[0]
    for name, got, exp in zip(("total", "loss_dir", "loss_dvr", "center_ir", "center_ef"), parts,
                              want_parts[:3] + plain_parts[3:]):
        _assert_close(got, exp, torch.float32, name)
    unit = 1.0 / (2 * (ncrops - 1) * batch * ts)
    _assert_close(g1, w1, torch.float32, "grad student_ir", unit)
    _assert_close(g2, w2, torch.float32, "grad student_ef", unit * _largest_probability(inputs[1], ts))


CPP_CASES = [(b, v, k1, k2, dt)
             for (b, v, k1, k2) in [(1, 2, 1000, 4097), (3, 4, 4097, 1000), (8, 10, 1000, 333), (3, 10, 7, 1)]
             for dt in (torch.float32, torch.float16, torch.bfloat16)]
TRITON_CASES = [(1, 2, 100, 37, torch.float32), (3, 4, 1000, 129, torch.float16), (2, 10, 33, 64, torch.bfloat16),
                (1, 10, 7, 1, torch.float32)]


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("batch,ncrops,k1,k2,dtype", CPP_CASES)
def test_cpp_matches_reference(rng, batch, ncrops, k1, k2, dtype):
    _check_against_reference("cpp", batch, ncrops, k1, k2, dtype, rng)


@pytest.mark.skipif("triton" not in BACKENDS,
                    reason="Triton interpreter off: " + clever_kernels.backends()["triton-interpreter"].reason)
@pytest.mark.parametrize("batch,ncrops,k1,k2,dtype", TRITON_CASES)
def test_triton_matches_reference(rng, batch, ncrops, k1, k2, dtype):
    _check_against_reference("triton", batch, ncrops, k1, k2, dtype, rng)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits_match_float64(rng, backend):
    # |x| up to ~1e4 with tt = 0.04: exponents of 2.5e5 only survive max subtraction everywhere
    inputs = _inputs(rng, 2, 4, 300, 200, torch.float32, scale=3e3, dvr_scale=3e3)
    parts, g1, g2 = _run(clever_loss, *inputs, 4, 0.04, backend=backend)
    want, w1, w2 = reference_centred_in_float32(*inputs, 4, 0.04)
    assert all(torch.isfinite(p).all() for p in parts) and torch.isfinite(g1).all() and torch.isfinite(g2).all()
    for got, exp, name in zip(parts[:3], want[:3], ("total", "loss_dir", "loss_dvr")):
        torch.testing.assert_close(got.double(), exp, rtol=1e-4, atol=1e-3, msg=lambda m: f"{name}: {m}")
    # At |x| ~ 1e4 the softmaxes are (near) one-hot and the gradient lives on near-ties, where
    # float32 is the limit: t - c rounds to ulp(1e4) ~ 1e-3, an exponent error of ~2e-2 at
    # tt = 0.04. So gradients are held to 3e-2 of their natural unit 1 / (n_terms * B * ts), not
    # to the (possibly ~0) largest value.
    unit = 1.0 / (2 * (4 - 1) * 2 * TS)
    for got, exp, name in ((g1, w1, "grad student_ir"), (g2, w2, "grad student_ef")):
        torch.testing.assert_close(got.double(), exp, atol=3e-2 * unit, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_saturated_cosine_gradient_matches_float64(rng, backend, dtype):
    """Both softmaxes of the DVR head near one-hot (student logits / ts and teacher logits / tt
    around 30, the first teacher on the students' peak): the cosine's gradient is a difference
    of nearly equal terms and tiny (~1e-13 here). Rebuilt from one float32 logsumexp per row
    (rounded to |lse| 2^-24), every probability carried a 2e-6 relative error and the gradient
    came out at ~1e-6, some fifteen float32 ulps of its natural unit; from each row's maximum and
    log-sum kept apart it is held here to 2 ulps of that unit."""
    batch, ncrops, k = 3, 4, 1000
    s1, s2, t1, t2, c1, c2 = _inputs(rng, batch, ncrops, k, k, torch.float32, scale=0.1, dvr_scale=0.1)
    hot = torch.randint(0, k, (batch,), generator=rng)
    images = torch.arange(batch)
    for v in range(ncrops):
        s2[v * batch + images, hot] += 3.0
    for iq in range(2):
        t2[iq * batch + images, (hot + iq) % k] += 1.2
    c1, c2 = torch.zeros_like(c1), torch.zeros_like(c2)  # a centre would move the teacher's peak
    inputs = [x.to(dtype) for x in (s1, s2, t1, t2)] + [c1, c2]
    _, _, g2 = _run(clever_loss, *inputs, ncrops, 0.04, backend=backend)
    _, _, w2 = _reference(*inputs, ncrops, 0.04)
    assert w2.abs().max() < 1e-9  # the regime this test is about
    unit = 1.0 / (2 * (ncrops - 1) * batch * TS)
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(g2.double(), w2, atol=2 * eps * unit, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["student_ir", "student_ef", "teacher_ir", "teacher_ef"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_inf_propagate(rng, backend, where, value):
    s1, s2, t1, t2, c1, c2 = _inputs(rng, 2, 3, 50, 40, torch.float32)
    target = dict(student_ir=s1, student_ef=s2, teacher_ir=t1, teacher_ef=t2)[where]
    target[1, 7] = value
    total = clever_loss(s1, s2, t1, t2, c1, c2, 3, TS, 0.04, backend=backend)[0]
    assert torch.isnan(total), f"{value} in {where} gave a finite loss {total.item()}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", ["teacher_ir", "teacher_ef"])
@pytest.mark.parametrize("iq", [0, 1])
@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_nonfinite_teacher_row_gradients_match_reference(rng, backend, head, iq, value):
    """A teacher row with no probabilities (all NaN or all -inf) makes the loss NaN, and the
    gradient NaN exactly where the reference's is: a student's own global view is paired with
    the other teacher only, so its gradient stays finite."""
    batch, ncrops = 3, 4
    s1, s2, t1, t2, c1, c2 = _inputs(rng, batch, ncrops, 50, 40, torch.float32)
    dict(teacher_ir=t1, teacher_ef=t2)[head][iq * batch + 1] = value
    parts, g1, g2 = _run(clever_loss, s1, s2, t1, t2, c1, c2, ncrops, 0.04, backend=backend)
    want, w1, w2 = _reference(s1, s2, t1, t2, c1, c2, ncrops, 0.04)
    assert torch.isnan(parts[0]) and torch.isnan(want[0])
    for got, expected, name in ((g1, w1, "grad student_ir"), (g2, w2, "grad student_ef")):
        assert torch.equal(got.isnan(), expected.isnan()), f"{name}: NaN pattern differs from the reference's"
        assert torch.isfinite(expected[iq * batch + 1]).all(), "the case this test is about"
        ok = expected.isfinite()
        _assert_close(got[ok], expected[ok], torch.float32, name, 1.0 / (2 * (ncrops - 1) * batch * TS))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("modified", ["teacher_ir", "teacher_ef", "student_ir"])
def test_logits_modified_before_backward_raise(rng, backend, modified):
    """The backward reads the logits again: one changed in place after the forward must raise,
    never give the gradient of the changed targets."""
    s1, s2, t1, t2, c1, c2 = _inputs(rng, 2, 3, 50, 40, torch.float32)
    a, b = s1.clone().requires_grad_(), s2.clone().requires_grad_()
    total = clever_loss(a, b, t1, t2, c1, c2, 3, TS, 0.04, backend=backend)[0]
    with torch.no_grad():
        dict(teacher_ir=t1, teacher_ef=t2, student_ir=a)[modified].mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        total.backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dino_loss_matches_reference(rng, backend):
    s, _, t, _, c, _ = _inputs(rng, 3, 5, 257, 1, torch.float32)
    a = s.clone().requires_grad_()
    loss, bc = dino_loss(a, t, c, 5, TS, 0.05, backend=backend)
    loss.backward()
    b = s.double().requires_grad_()
    want, want_bc = ref.dino_loss(b, t.double(), c.double(), 5, TS, 0.05)
    want.backward()
    _assert_close(loss, want, torch.float32, "loss")
    _assert_close(bc, want_bc, torch.float32, "batch centre")
    _assert_close(a.grad, b.grad, torch.float32, "grad", 1.0 / (2 * 4 * 3 * TS))


@pytest.mark.parametrize("backend", BACKENDS)
def test_modules_match_reference_modules_over_steps(rng, backend):
    fused = CLeVERLoss(64, 4, 0.02, 0.05, 2, 5, dvr_out_dim=24, backend=backend)
    plain = ref.CLeVERLossReference(64, 4, 0.02, 0.05, 2, 5, dvr_out_dim=24)
    dino_fused = DINOLoss(64, 4, 0.02, 0.05, 2, 5, backend=backend)
    dino_plain = ref.DINOLossReference(64, 4, 0.02, 0.05, 2, 5)
    for epoch in range(3):
        s1, s2, t1, t2, _, _ = _inputs(rng, 2, 4, 64, 24, torch.float32)
        a, b = s1.clone().requires_grad_(), s2.clone().requires_grad_()
        got = fused(a, b, t1, t2, epoch)
        a64, b64 = s1.double().requires_grad_(), s2.double().requires_grad_()
        want = plain(a64, b64, t1.double(), t2.double(), epoch)
        for g, w in zip(got, want):
            _assert_close(g, w, torch.float32, f"epoch {epoch}")
        # backward after the module has updated its centres in place
        got[0].backward()
        want[0].backward()
        unit = 1.0 / (2 * 3 * 2 * TS)
        _assert_close(a.grad, a64.grad, torch.float32, f"epoch {epoch} grad student_ir", unit)
        _assert_close(b.grad, b64.grad, torch.float32, f"epoch {epoch} grad student_ef",
                      unit * _largest_probability(s2))
        _assert_close(dino_fused(s1, t1, epoch), dino_plain(s1.double(), t1.double(), epoch), torch.float32, "dino")
    for name in ("center", "center2"):
        _assert_close(fused.state_dict()[name], plain.state_dict()[name], torch.float32, name)
    _assert_close(dino_fused.center, dino_plain.center, torch.float32, "dino center")
    assert set(fused.state_dict()) == {"center", "center2"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_teacher_receives_no_gradient(rng, backend):
    s1, s2, t1, t2, c1, c2 = _inputs(rng, 1, 2, 30, 20, torch.float32)
    s1.requires_grad_()
    t1.requires_grad_()
    t2.requires_grad_()
    clever_loss(s1, s2, t1, t2, c1, c2, 2, TS, 0.04, backend=backend)[0].backward()
    assert t1.grad is None and t2.grad is None and s1.grad is not None


@pytest.mark.parametrize("bad,match", [
    (dict(ncrops=1), "ncrops"),
    (dict(s1=torch.zeros(7, 8)), "student_ir must have ncrops"),
    (dict(t2=torch.zeros(3, 5)), "teacher_ef must have 2"),
    (dict(t1=torch.zeros(4, 9)), "same width"),
    (dict(s2=torch.zeros(6, 5, dtype=torch.int32)), "student_ef must be a floating"),
    (dict(c2=torch.zeros(1, 6)), r"center_ef must have shape \(1, K\) or \(K,\) with K = 5"),
    (dict(c1=torch.zeros(2, 4)), r"center_ir must have shape .* got \(2, 4\)"),
    (dict(c1=None), "center_ir must be a torch.Tensor"),
    (dict(ncrops=3.0), "ncrops must be an int"),
    (dict(s1=torch.zeros(6, 0), t1=torch.zeros(4, 0), c1=torch.zeros(1, 0)), "K >= 1"),
    (dict(ts=float("inf")), "student_temp must be finite"),
    (dict(t2=torch.zeros(6, 5), s2=torch.zeros(9, 5)), "same batch"),
    (dict(ts=0.0), "student_temp"),
    (dict(tt=0.0), "teacher_temp"),
    (dict(tt=float("nan")), "teacher_temp"),
    (dict(backend="cuda-magic"), "backend"),
    # temperatures the float32 kernels cannot take (1/T overflows, T x log-sum overflows)
    (dict(tt=1e-40), r"teacher_temp must be finite and > 0, in \[0.0001, 10000\]"),
    (dict(tt=1e38), "teacher_temp must be finite and > 0, in"),
    (dict(ts=2e4), "student_temp must be finite and > 0, in"),
    (dict(ts="0.1"), "student_temp must be a real number"),
    (dict(tt=None), "teacher_temp must be a real number"),
    (dict(c1=torch.zeros(1, 8, dtype=torch.int64)), "center_ir must be a floating-point tensor"),
    (dict(c1=torch.zeros(1, 8, dtype=torch.bool)), "center_ir must be a floating-point tensor"),
    (dict(sep_lambd=float("nan")), "sep_lambd must be a finite real number"),
    (dict(s1="logits"), "student_ir must be a torch.Tensor, got str"),
    # devices mixed (the meta device stands in for a second device on a CPU machine)
    (dict(t1=torch.zeros(4, 8, device="meta")), "student_ir and teacher_ir must be on one device, got cpu and meta"),
    (dict(c1=torch.zeros(1, 8, device="meta")), "center_ir must be on cpu, got meta"),
    (dict(s2=torch.zeros(6, 5, device="meta"), t2=torch.zeros(4, 5, device="meta"),
          c2=torch.zeros(1, 5, device="meta")), "student_ir and student_ef must be on one device, got cpu and meta"),
])
@pytest.mark.parametrize("form", ["clever", "dino"])
def test_bad_inputs_name_the_argument(bad, match, form):
    args = dict(s1=torch.zeros(6, 8), s2=torch.zeros(6, 5), t1=torch.zeros(4, 8), t2=torch.zeros(4, 5),
                c1=torch.zeros(1, 8), c2=torch.zeros(1, 5), ncrops=3, ts=0.1, tt=0.04, sep_lambd=1.0,
                backend=BACKENDS[0])
    args.update(bad)
    if form == "dino":
        if any(key in bad for key in ("s2", "t2", "c2", "sep_lambd")) or "same batch" in match:
            pytest.skip("the second head is CLeVER's")
        match = match.replace("_ir", "")
        with pytest.raises((ValueError, TypeError), match=match):
            dino_loss(args["s1"], args["t1"], args["c1"], args["ncrops"], args["ts"], args["tt"],
                      backend=args["backend"])
        return
    with pytest.raises((ValueError, TypeError), match=match):
        clever_loss(args["s1"], args["s2"], args["t1"], args["t2"], args["c1"], args["c2"], args["ncrops"],
                    args["ts"], args["tt"], args["sep_lambd"], backend=args["backend"])


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton interpreter not available")
def test_triton_refuses_float64_naming_the_argument():
    s1, s2, t1, t2, c1, c2 = _inputs(torch.Generator().manual_seed(0), 2, 3, 8, 5, torch.float32)
    with pytest.raises(TypeError, match="student_ef must be float32, float16 or bfloat16 for the Triton kernels"):
        clever_loss(s1, s2.double(), t1, t2.double(), c1, c2, 3, TS, 0.04, backend="triton")
    with pytest.raises(TypeError, match="teacher must be float32, float16 or bfloat16 for the Triton kernels"):
        dino_loss(s1, t1.double(), c1, 3, TS, 0.04, backend="triton")


def test_module_takes_the_authors_calls(rng):
    """CLeVER_DINOLoss(..., args=args) and loss(s1, s2, t1, t2, criterion, L1, epoch) work
    unchanged, and give what the plain form gives."""
    args = types.SimpleNamespace(sep_lambd=0.25, reg_lambd=0.001)
    authors = CLeVERLoss(30, 3, 0.02, 0.05, 2, 4, 0.1, 0.9, args=args, backend=BACKENDS[0])
    plain = CLeVERLoss(30, 3, 0.02, 0.05, 2, 4, sep_lambd=0.25, backend=BACKENDS[0])
    criterion, l1 = torch.nn.CosineSimilarity(dim=1), torch.nn.L1Loss()
    for epoch in range(3):
        s1, s2, t1, t2, _, _ = _inputs(rng, 2, 3, 30, 30, torch.float32)
        got = authors(s1, s2, t1, t2, criterion, l1, epoch)
        want = plain(s1, s2, t1, t2, epoch=np.int64(epoch))
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    torch.testing.assert_close(authors.center2, plain.center2, rtol=0, atol=0)
    assert authors.sep_lambd == 0.25 and CLeVERLoss(30, np.int64(3), 0.04, 0.04, 0, 2).sep_lambd == 1.0


@pytest.mark.parametrize("call, exc, match", [
    (lambda m, x: m(*x, torch.nn.CosineSimilarity(dim=0), torch.nn.L1Loss(), 0), ValueError, "criterion.*dim=0"),
    (lambda m, x: m(*x, 2, epoch=2), TypeError, r"got 6 arguments \(5 positional, epoch by keyword\)"),
    (lambda m, x: m(*x, torch.nn.CosineSimilarity(dim=1), torch.nn.MSELoss(), 0), ValueError, "L1"),
    (lambda m, x: m(*x, torch.nn.CosineSimilarity(dim=1), torch.nn.L1Loss(reduction="sum"), 0), ValueError, "L1"),
    (lambda m, x: m(*x, torch.nn.L1Loss(), 0), TypeError, "epoch"),
    (lambda m, x: m(*x), TypeError, "epoch"),
    (lambda m, x: m(*x, 1.5), TypeError, "epoch"),
    (lambda m, x: m(*x, True), TypeError, "epoch"),
    (lambda m, x: m(*x, torch.nn.CosineSimilarity(dim=1, eps=0.5), torch.nn.L1Loss(), 0), ValueError, "eps"),
    (lambda m, x: CLeVERLoss(8, 2, 0.04, 0.04, 0, 3, sep_lambd=float("nan")), TypeError, "sep_lambd"),
    (lambda m, x: CLeVERLoss(8, 2, 0.04, 0.04, 0, 3, args=types.SimpleNamespace()), ValueError, "args"),
    (lambda m, x: CLeVERLoss(8, 2, 0.04, 0.04, 0, 3, sep_lambd=2.0, args=types.SimpleNamespace(sep_lambd=1.0)),
     ValueError, "disagree"),
    (lambda m, x: CLeVERLoss(8, 2, 0.04, 0.04, 0, 3, sep_lambd="1.0"), TypeError, "sep_lambd"),
    (lambda m, x: CLeVERLoss(8, 2, 0.04, 0.04, 0, 3, center_momentum="0.9"), TypeError, "center_momentum"),
    (lambda m, x: CLeVERLoss(8, 2, 0.04, 0.04, 0, 3, center_momentum=1.5), ValueError, "center_momentum"),
    (lambda m, x: DINOLoss(8, 2, 0.04, 0.04, 0, 3, center_momentum=-0.1), ValueError, "center_momentum"),
    (lambda m, x: CLeVERLoss(8, 2.0, 0.04, 0.04, 0, 3), TypeError, "ncrops"),
    (lambda m, x: CLeVERLoss(8, 2, 0.04, 0.04, 0, 3, 0.1, 0.9, types.SimpleNamespace(sep_lambd=1.0)),
     TypeError, "dvr_out_dim must be an int.*args=args"),
    (lambda m, x: CLeVERLoss(0, 2, 0.04, 0.04, 0, 3), ValueError, "out_dim must be >= 1"),
    # refused when built, not at the first forward
    (lambda m, x: CLeVERLoss(8, 2, 0.04, "0.07", 0, 3), TypeError, "teacher_temp must be a real number"),
    (lambda m, x: DINOLoss(8, 2, 1e-5, 0.04, 2, 3), ValueError, "warmup_teacher_temp must be finite and > 0, in"),
    (lambda m, x: CLeVERLoss(8, 2, 0.04, 0.04, 0, 3, student_temp=0.0), ValueError, "student_temp"),
    (lambda m, x: CLeVERLoss(8, 2, 0.04, 0.04, 0, 3.0), TypeError, "nepochs must be an integer"),
    (lambda m, x: DINOLoss(8, 2, 0.04, 0.04, 1.5, 3), TypeError, "warmup_teacher_temp_epochs must be an integer"),
    (lambda m, x: CLeVERLoss(8, 2, 0.04, 0.04, 0, 3, backend="bogus"), ValueError, "backend must be one of"),
    (lambda m, x: DINOLoss(8, 2, 0.04, 0.04, -1, 3), ValueError, "warmup_teacher_temp_epochs must be >= 0"),
    (lambda m, x: CLeVERLoss(8, 2, 0.04, 0.04, 0, 0), ValueError, "nepochs >= 1, got .* and 0"),
    # compared as the ops see it: float(np.float32(1e-4)) = 9.9999997e-05
    (lambda m, x: DINOLoss(8, 2, 0.04, np.float32(1e-4), 0, 3), ValueError, "teacher_temp must be finite"),
    (lambda m, x: m(torch.zeros(4, 9), *x[1:], 0), ValueError, "student_ir has K = 9 columns.*out_dim=8"),
    (lambda m, x: m(x[0], torch.zeros(4, 9), *x[2:], 0), ValueError, "student_ef has K = 9.*dvr_out_dim=8"),
    (lambda m, x: DINOLoss(8, 2, 0.04, 0.04, 0, 3)(torch.zeros(4, 6), torch.zeros(4, 6), 0), ValueError,
     "student_output has K = 6 columns.*out_dim=8"),
])
def test_module_arguments_errors_name_the_argument(call, exc, match):
    module = CLeVERLoss(8, 2, 0.04, 0.04, 0, 3, backend=BACKENDS[0])
    x = (torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(4, 8))
    with pytest.raises(exc, match=match):
        call(module, x)


def test_module_rejects_epoch_outside_schedule():
    module = DINOLoss(8, 2, 0.04, 0.04, 0, 3, backend=BACKENDS[0])
    with pytest.raises(ValueError, match="epoch"):
        module(torch.zeros(4, 8), torch.zeros(4, 8), 3)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
def test_mixed_precision_inputs_under_autocast(rng):
    s1, s2, t1, t2, c1, c2 = _inputs(rng, 2, 3, 70, 50, torch.float32)
    student = torch.nn.Linear(70, 70).to(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = student(s1)  # bfloat16 under autocast, teacher logits stay float32
        total = clever_loss(hidden, s2, t1, t2, c1, c2, 3, TS, 0.04, backend="cpp")[0]
    total.backward()
    assert hidden.dtype == torch.bfloat16 and torch.isfinite(total)
    assert student.weight.grad is not None and torch.isfinite(student.weight.grad).all()
    want = ref.clever_loss(hidden.double(), s2.double(), t1.double(), t2.double(), c1.double(), c2.double(), 3, TS,
                           0.04)[0]
    torch.testing.assert_close(total.double(), want.detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
def test_torch_compile_without_graph_breaks(rng):
    head = torch.nn.Linear(16, 40)
    loss_fn = CLeVERLoss(40, 3, 0.04, 0.04, 0, 2, dvr_out_dim=40, backend="cpp")

    def step(x, t):
        out = head(x)
        return loss_fn(out, out * 0.5, t, t * 0.5, 0)[0]

    x, t = torch.randn(9, 16, generator=rng), torch.randn(6, 40, generator=rng)
    step(x, t)  # the backend is chosen (and memoised) on the first call, outside the trace
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(step)(x, t)
    assert explanation.graph_break_count == 0, explanation.break_reasons


FIRST_CALL_COMPILED = """
import torch
from clever_kernels.loss import CLeVERLoss
loss_fn = CLeVERLoss(40, 3, 0.04, 0.04, 0, 2, dvr_out_dim=40, backend={backend!r})
head = torch.nn.Linear(16, 40)
step = torch.compile(lambda x, t: loss_fn(head(x), head(x) * 0.5, t, t * 0.5, 0)[0], backend="eager",
                     fullgraph=True)
print("loss", step(torch.randn(9, 16), torch.randn(6, 40)).item())
"""


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("backend", ["auto", "cpp"])
def test_torch_compile_on_the_first_call_in_a_process(backend):
    """The backend is chosen on the first call, which probes the machine (imports, device
    queries) in ways Dynamo cannot trace: it must be made outside the trace, so that a fresh
    process compiles a step with fullgraph=True before the loss has ever run eagerly."""
    from train_helpers import REPO, cli_env
    done = subprocess.run([sys.executable, "-c", FIRST_CALL_COMPILED.format(backend=backend)], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert math.isfinite(float(done.stdout.split("loss")[-1]))


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
def test_compiled_step_does_not_recompile_every_epoch(rng):
    """A compiled step taking the epoch: the teacher temperature is a constant of the ops, so each
    warm-up epoch compiles its own graph, and every epoch after the warm-up shares one, instead of
    one graph an epoch until torch._dynamo's recompile limit (8) stops a fullgraph step."""
    nepochs, warmup = 12, 2
    fused = CLeVERLoss(24, 3, 0.02, 0.06, warmup, nepochs, dvr_out_dim=16, backend="cpp")
    plain = ref.CLeVERLossReference(24, 3, 0.02, 0.06, warmup, nepochs, dvr_out_dim=16)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps the graphs other tests compiled counted
    compiled = torch.compile(lambda *args: fused(*args), backend="eager", fullgraph=True)
    for epoch in range(nepochs):
        s1, s2, t1, t2, _, _ = _inputs(rng, 2, 3, 24, 16, torch.float32)
        got = compiled(s1, s2, t1, t2, epoch)
        want = plain(s1.double(), s2.double(), t1.double(), t2.double(), epoch)
        for name, g, w in zip(("total", "loss_dir", "loss_dvr"), got, want):
            _assert_close(g, w, torch.float32, f"{name} at epoch {epoch}")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= warmup + 2


def check_compiled_matches_eager(rng, compiler, backend, device=torch.device("cpu")):
    """A compiled step whose loss updates its centres in place: the same losses, centres and
    gradients as eager over two steps, to the rounding of a compiler's own reduction order. The
    backward must read the centre the forward used; a copy of it taken outside the op, inductor
    folded back into the buffer it updates (gradients then differed by O(1))."""
    heads = [torch.nn.Linear(16, 40).to(device) for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    losses = [CLeVERLoss(40, 3, 0.04, 0.04, 0, 2, dvr_out_dim=40, backend=backend).to(device) for _ in range(2)]
    with torch.no_grad():
        losses[0].center.copy_(torch.randn(1, 40, generator=rng))
        losses[0].center2.copy_(torch.randn(1, 40, generator=rng))
    losses[1].load_state_dict(losses[0].state_dict())

    def step(head, loss_fn, x, t):
        out = head(x)
        return loss_fn(out, out * 0.5, t, t * 0.5, 0)

    torch._dynamo.reset()
    compiled = torch.compile(lambda x, t: step(heads[1], losses[1], x, t), backend=compiler, fullgraph=True)
    for _ in range(2):
        x = torch.randn(9, 16, generator=rng).to(device)
        t = (torch.randn(6, 40, generator=rng) * 3).to(device)
        want = step(heads[0], losses[0], x, t)
        got = compiled(x, t)
        want[0].backward()
        got[0].backward()
        for a, b in zip(got, want):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-4, atol=1e-5)
        for name in ("center", "center2"):
            torch.testing.assert_close(getattr(losses[1], name), getattr(losses[0], name), rtol=1e-5, atol=1e-6)
        for a, b in zip(heads[1].parameters(), heads[0].parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
            a.grad = b.grad = None


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_matches_eager(rng, compiler):
    check_compiled_matches_eager(rng, compiler, "cpp")


class FusedFactory:
    def __init__(self, backend):
        self.backend = backend

    def __call__(self):
        return CLeVERLoss(11, 3, 0.04, 0.04, 0, 5, dvr_out_dim=6, backend=self.backend)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
def test_center_sync_two_gloo_ranks():
    # unequal per-rank batches: the centre is the mean over all rows; the async all_reduce of
    # step 1 must be applied before step 2's loss and before state_dict()
    inputs = make_rank_inputs(5, 2, 3, batch=[1, 3], ncrops=3, k1=11, k2=6)
    got = run_two_ranks(FusedFactory("cpp"), inputs)
    want1, want2 = expected_centers(inputs, 11, 6)
    for c1, c2, kept in got:
        torch.testing.assert_close(c1, want1)
        torch.testing.assert_close(c2, want2)
        assert kept


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_is_refused(rng, backend):
    """The fused backward has no derivative of its own: a gradient penalty or a Hessian through
    it must raise, not come back zero or detached. The cross-entropy head alone is the case to
    watch: the upstream gradient of a mean is a constant, so autograd's once_differentiable
    would let the gradient through as a constant of the student."""
    s1, s2, t1, t2, c1, c2 = _inputs(rng, 2, 3, 20, 12, torch.float32)
    a, b = s1.clone().requires_grad_(), s2.clone().requires_grad_()
    total, l_dir, l_dvr = clever_loss(a, b, t1, t2, c1, c2, 3, TS, 0.04, backend=backend)[:3]
    g_ir, g_ef = torch.autograd.grad(total, (a, b), create_graph=True, retain_graph=True)
    with pytest.raises(RuntimeError, match="no derivative of their own"):
        (g_ir.square().sum() + g_ef.square().sum()).backward()
    for part, x in ((l_dir, a), (l_dvr, b)):
        g, = torch.autograd.grad(part, x, create_graph=True, retain_graph=True)
        assert g.requires_grad
        with pytest.raises(RuntimeError, match="no derivative of their own"):
            g.square().sum().backward()
    with pytest.raises(RuntimeError, match="no derivative of their own"):
        torch.autograd.functional.hessian(lambda x: dino_loss(x, t1, c1, 3, TS, 0.04, backend=backend)[0], s1)
    # an upstream gradient that itself requires grad (a learnt loss weight)
    w = torch.tensor(0.5, requires_grad=True)
    x = s1.clone().requires_grad_()
    gx, = torch.autograd.grad(w * dino_loss(x, t1, c1, 3, TS, 0.04, backend=backend)[0], x, create_graph=True)
    with pytest.raises(RuntimeError, match="no derivative of their own"):
        torch.autograd.grad(gx.sum(), w)


def _forward_mode_tangents(backend, s1, s2, t1, t2, c1, c2, tangents, ncrops, tt=0.04):
    """Loss parts and the tangents of (total, loss_dir, loss_dvr) along `tangents` (one per
    logit input, the teachers' included) through forward_ad's dual tensors. The fused loss's
    batch centres, like their gradients, must come back without a tangent (the reference's
    no_grad block, which stops their gradient, does not stop forward mode)."""
    with fwAD.dual_level():
        duals = [fwAD.make_dual(x, u) for x, u in zip((s1, s2, t1, t2), tangents)]
        out = clever_loss(*duals, c1, c2, ncrops, TS, tt, 0.7, backend=backend)
        unpacked = [fwAD.unpack_dual(x) for x in out]
    if backend != "reference":
        assert unpacked[3].tangent is None and unpacked[4].tangent is None
    return [u.primal for u in unpacked[:3]], [u.tangent for u in unpacked[:3]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,ncrops,k1,k2", [(1, 2, 33, 9), (3, 4, 1000, 257)])
def test_forward_mode_matches_the_reference(rng, backend, dtype, batch, ncrops, k1, k2):
    check_forward_mode_matches_reference(rng, backend, batch, ncrops, k1, k2, dtype)


def check_forward_mode_matches_reference(rng, backend, batch, ncrops, k1, k2, dtype, device="cpu"):
    """Dual tensors through the fused loss (its Functions' jvp: the backward kernel's gradient
    rows contracted with the tangent) against the float64 reference's forward mode on the same
    rounded inputs. The teachers' tangents add nothing on either (their targets are detached).
    Tolerance: the dtype's, relative to the sum of |gradient x tangent| over the logits, the
    size of the terms each tangent is a sum of (a half-precision gradient row is rounded before
    it is contracted)."""
    s1, s2, t1, t2, c1, c2 = (x.to(device) for x in _inputs(rng, batch, ncrops, k1, k2, dtype))
    tangents = [torch.randn(x.shape, generator=rng, dtype=torch.float64).to(device, dtype) for x in (s1, s2, t1, t2)]
    parts, got = _forward_mode_tangents(backend, s1, s2, t1, t2, c1, c2, tangents, ncrops)
    up = [x.double() for x in (s1, s2, t1, t2, c1, c2)]
    want_parts, want = _forward_mode_tangents("reference", *up, [u.double() for u in tangents], ncrops)
    _, w1, w2 = _reference(s1, s2, t1, t2, c1, c2, ncrops, 0.04)  # 1.3 d dir / d s1, -1.3 d dvr / d s2
    size_dir, size_dvr = ((w.abs() * u.double().abs()).sum().item() / 1.3 for w, u in ((w1, tangents[0]),
                                                                                          (w2, tangents[1])))
    for name, g, w, size in zip(("total", "loss_dir", "loss_dvr"), got, want,
                                (size_dir + 0.7 * size_dvr, size_dir, size_dvr)):
        assert g.dtype == torch.float32 and g.shape == ()
        _assert_close(g, w, dtype, f"tangent of {name}", size)
    for name, g, w in zip(("total", "loss_dir", "loss_dvr"), parts, want_parts):
        _assert_close(g, w, dtype, name)
    if backend == "cpp" or torch.device(device).type == "cuda":  # torch.func's forward mode runs the same rule
        loss = functools.partial(clever_loss, center_ir=c1, center_ef=c2, ncrops=ncrops, student_temp=TS,
                                 teacher_temp=0.04, sep_lambd=0.7, backend=backend)
        _, func_got = torch.func.jvp(lambda *x: loss(*x)[:3], (s1, s2, t1, t2), tuple(tangents))
        # linearize traces the rule once and replays it (it drops in-place writes to tensors the
        # rule makes, which left an upstream gradient of 0)
        _, linear = torch.func.linearize(lambda *x: loss(*x)[:3], s1, s2, t1, t2)
        # (torch.func's forward mode promotes `loss_dir + sep_lambd * loss_dvr` to float64: a
        # tangent times a Python scalar is float64 there, as for any tensor, and rounds apart)
        for g, lin, w in zip(func_got, linear(*tangents), got):
            torch.testing.assert_close(g.double(), w.double(), rtol=1e-6, atol=0)
            torch.testing.assert_close(lin.double(), w.double(), rtol=1e-6, atol=0)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
def test_forward_mode_jacobians_and_second_derivatives(rng):
    """jacfwd (vmap over forward mode) and autograd.functional's forward-mode jacobian give the
    reference's Jacobian; a second derivative that goes through a tangent or a gradient of the
    fused loss (jacfwd or jacrev of either, also with grad mode off, where forward mode still
    runs, and a Hessian-vector product as the gradient of a dual student) raises rather than
    coming back 0 or without its tangent; a compiled loss refuses dual inputs where it cannot
    fall back to eager (fullgraph), and falls back where it can."""
    s1, _, t1, _, c1, _ = _inputs(rng, 2, 3, 20, 12, torch.float32)
    dino = {b: (lambda x, b=b: dino_loss(x, t1.to(x.dtype), c1, 3, TS, 0.04, backend=b)[0])
            for b in ("cpp", "reference")}
    want = torch.func.jacrev(dino["reference"])(s1.double())
    unit = 1.0 / (4 * 2 * TS)
    _assert_close(torch.func.jacfwd(dino["cpp"])(s1), want, torch.float32, "jacfwd", unit)
    batched = torch.autograd.functional.jacobian(dino["cpp"], s1, strategy="forward-mode", vectorize=True)
    _assert_close(batched, want, torch.float32, "forward-mode jacobian", unit)
    tangent = torch.randn(s1.shape, generator=rng)
    with fwAD.dual_level():
        x = fwAD.make_dual(s1.clone().requires_grad_(), tangent)
        with pytest.raises(RuntimeError, match="no derivative of their own"):
            torch.autograd.grad(dino["cpp"](x), x)  # H @ tangent
        eager = fwAD.unpack_dual(dino["cpp"](x)).tangent
        with pytest.raises(Exception, match="the loss runs eagerly"):
            torch.compile(dino["cpp"], backend="eager", fullgraph=True)(x)
        compiled = fwAD.unpack_dual(torch.compile(dino["cpp"], backend="eager")(x)).tangent
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    second = [torch.func.jacfwd(torch.func.jacfwd(dino["cpp"])), torch.func.jacfwd(torch.func.jacrev(dino["cpp"])),
              torch.func.jacrev(torch.func.jacfwd(dino["cpp"])), torch.func.hessian(dino["cpp"])]
    for transform in second:
        with pytest.raises(RuntimeError, match="no derivative of their own"):
            transform(s1)
    with torch.no_grad(), pytest.raises(RuntimeError, match="no derivative of their own"):
        second[0](s1)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,ncrops,k1,k2", [(1, 2, 17, 9), (3, 4, 1000, 33)])
def test_torch_func_transforms_match_the_reference(rng, dtype, batch, ncrops, k1, k2):
    check_torch_func_matches_reference(rng, "cpp", batch, ncrops, k1, k2, dtype)


def check_torch_func_matches_reference(rng, backend, batch, ncrops, k1, k2, dtype, device="cpu"):
    """torch.func.grad and vmap run the fused ops (vmap as one fused call per entry): per-sample
    losses and per-sample gradients of both heads, over batched students and teachers, against
    the float64 reference under the same transforms; a second derivative raises."""
    from torch.func import grad, vmap

    entries = 3
    draws = [[x.to(device) for x in _inputs(rng, batch, ncrops, k1, k2, dtype)] for _ in range(entries)]
    s1, s2, t1, t2 = (torch.stack([d[i] for d in draws]) for i in range(4))
    c1, c2 = draws[0][4], draws[0][5]

    def parts(backend, up=lambda x: x):
        def loss(a, b, ta, tb):
            total, l_dir, l_dvr = clever_loss(up(a), up(b), up(ta), up(tb), up(c1), up(c2), ncrops, TS, 0.04,
                                              0.7, backend=backend)[:3]
            return total + 0.3 * l_dir - 2.0 * l_dvr, (total, l_dir, l_dvr)

        per_sample = vmap(grad(loss, argnums=(0, 1), has_aux=True))(s1, s2, t1, t2)
        whole = grad(lambda a, b: vmap(loss)(a, b, t1, t2)[0].sum(), argnums=(0, 1))(s1, s2)
        return per_sample, whole

    (got_g, got_parts), got_whole = parts(backend)
    (want_g, want_parts), want_whole = parts("reference", up=torch.Tensor.double)
    for name, got, want in zip(("total", "loss_dir", "loss_dvr"), got_parts, want_parts):
        assert got.shape == (entries,)
        _assert_close(got, want, dtype, name)
    unit = 1.0 / (2 * (ncrops - 1) * batch * TS)
    for grads in ((got_g, want_g), (got_whole, want_whole)):
        (g1, g2), (w1, w2) = grads
        assert g1.shape == s1.shape and g1.dtype == dtype
        _assert_close(g1, w1, dtype, "grad student_ir", unit)
        _assert_close(g2, w2, dtype, "grad student_ef", unit * _largest_probability(s2))
    # the Jacobian of the loss (jacrev) and a vector-Jacobian product (vjp), as grad gives them
    dino = {b: (lambda a, b=b: dino_loss(a, t1[0], c1, ncrops, TS, 0.04, backend=b)[0])
            for b in (backend, "reference")}
    jac = torch.func.jacrev(dino[backend])(s1[0])
    _assert_close(jac, torch.func.jacrev(dino["reference"])(s1[0].double()), dtype, "jacrev", unit)
    out, pull = torch.func.vjp(dino[backend], s1[0])
    _assert_close(pull(torch.ones_like(out))[0], jac, dtype, "vjp", unit)
    with pytest.raises(RuntimeError, match="no derivative of their own"):
        torch.func.jacrev(torch.func.jacrev(dino[backend]))(s1[0])
    with pytest.raises(ValueError, match="vmap over an empty batch"):
        vmap(dino[backend])(s1[:0])


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
def test_modules_under_vmap_update_their_centres_as_the_reference(rng):
    """Students batched under vmap over one shared teacher: the teacher's statistics (the batch
    centres) stay unbatched, so the modules' in-place centre EMA runs, as on the reference."""
    from torch.func import vmap

    s1, s2, t1, t2, _, _ = _inputs(rng, 2, 3, 40, 24, torch.float32)
    students = [torch.stack([x, x.flip(0), 2 * x]) for x in (s1, s2)]
    results = {}
    for backend in ("cpp", "reference"):
        dino = DINOLoss(40, 3, 0.04, 0.04, 0, 2, backend=backend)
        clever = CLeVERLoss(40, 3, 0.04, 0.04, 0, 2, dvr_out_dim=24, backend=backend)
        results[backend] = (vmap(lambda a: dino(a, t1, 0))(students[0]),
                            *vmap(lambda a, b: clever(a, b, t1, t2, 0))(*students),
                            dino.center.clone(), clever.center.clone(), clever.center2.clone())
    for got, want in zip(*results.values()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif("triton" not in BACKENDS, reason="the Triton interpreter does not run here")
def test_interpreted_triton_refuses_torch_func_transforms():
    """The interpreted Triton launchers cannot read functorch's wrapped tensors: under a
    transform they say which backends can, and the backend probe made inside a transform still
    finds the interpreter (the answer is kept for the process)."""
    code = """
import torch
from clever_kernels.loss import dino_loss
s, t, c = torch.randn(6, 40), torch.randn(4, 40), torch.zeros(1, 40)
try:
    torch.func.grad(lambda x: dino_loss(x, t, c, 3, 0.1, 0.04, backend="triton")[0])(s)
except RuntimeError as exc:
    print("refused:", exc)
else:
    print("not refused")
print("plain:", bool(torch.isfinite(dino_loss(s, t, c, 3, 0.1, 0.04, backend="triton")[0])))
"""
    import os
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "refused: torch.func transforms (grad, vmap, ...) run the fused loss on CPU tensors with " \
           "backend='cpp'" in done.stdout, done.stdout
    assert "plain: True" in done.stdout, done.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_graph_first_order_gradient_is_unchanged(rng, backend):
    """create_graph=True alone (with nothing differentiated twice) gives the usual gradient,
    which may be modified in place, also under non-reentrant activation checkpointing (which
    refuses a second unpack of the saved tensors)."""
    from torch.utils.checkpoint import checkpoint

    s1, _, t1, _, c1, _ = _inputs(rng, 3, 4, 33, 1, torch.float32)
    x, y = s1.clone().requires_grad_(), s1.clone().requires_grad_()
    g, = torch.autograd.grad(dino_loss(x, t1, c1, 4, TS, 0.04, backend=backend)[0], x, create_graph=True)
    want, = torch.autograd.grad(dino_loss(y, t1, c1, 4, TS, 0.04, backend=backend)[0], y)
    assert torch.equal(g.detach(), want)
    g.mul_(2.0)
    lin = torch.nn.Linear(33, 33, dtype=torch.float32)
    for create_graph in (False, True):
        loss = checkpoint(lambda a: dino_loss(lin(a), t1, c1, 4, TS, 0.04, backend=backend)[0], s1,
                          use_reentrant=False)
        gw, = torch.autograd.grad(loss, lin.weight, create_graph=create_graph)
        assert torch.isfinite(gw).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_ncrops_is_an_int(rng, backend):
    inputs = _inputs(rng, 2, 3, 20, 12, torch.float32)
    want = clever_loss(*inputs, 3, TS, 0.04, backend=backend)
    got = clever_loss(*inputs, np.int64(3), TS, 0.04, backend=backend)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_centres_carry_no_gradient(rng, backend):
    """The batch centres are statistics of the teacher (SPEC.md: the centre update has no
    gradient): even with both student inputs requiring grad they must be plain tensors, or the
    modules' in-place EMA would chain every step's graph into the centre buffers."""
    s1, s2, t1, t2, c1, c2 = _inputs(rng, 2, 3, 30, 20, torch.float32)
    a, b = s1.requires_grad_(), s2.requires_grad_()
    *losses, bc1, bc2 = clever_loss(a, b, t1, t2, c1, c2, 3, TS, 0.04, backend=backend)
    _, bc = dino_loss(a, t1, c1, 3, TS, 0.04, backend=backend)
    assert all(x.requires_grad for x in losses)
    for name, centre in (("batch_center_ir", bc1), ("batch_center_ef", bc2), ("dino batch_center", bc)):
        assert not centre.requires_grad and centre.grad_fn is None, f"{name} is part of the autograd graph"
    module = CLeVERLoss(30, 3, 0.04, 0.04, 0, 2, dvr_out_dim=20, backend=backend)
    module(a, b, t1, t2, 0)[0].backward()
    for name in ("center", "center2"):
        buffer = getattr(module, name)
        assert not buffer.requires_grad and buffer.grad_fn is None, f"module {name} joined the autograd graph"


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_logits(rng, backend):
    """Logits that are transposes or column slices of other tensors (not contiguous): the
    kernels need contiguous rows, so the loss must copy them rather than read the strides
    wrong or refuse; gradients come back for the caller's tensors."""
    batch, ncrops, k1, k2, tt = 2, 3, 40, 24, 0.04
    s1, s2, t1, t2, c1, c2 = _inputs(rng, batch, ncrops, k1, k2, torch.float32)
    column_major = lambda x: x.t().contiguous().t()
    a, b = column_major(s1).requires_grad_(), column_major(s2).requires_grad_()
    wide = torch.cat([t1, torch.randn(2 * batch, 7, generator=rng)], dim=1)
    views = (a, b, wide[:, :k1], column_major(t2))
    assert not any(v.is_contiguous() for v in views)
    total, l_dir, l_dvr, bc1, bc2 = clever_loss(*views, c1, c2, ncrops, TS, tt, 0.7, backend=backend)
    (total + 0.3 * l_dir - 2.0 * l_dvr).backward()
    _assert_matches((total, l_dir, l_dvr, bc1, bc2), a.grad, b.grad, _reference(s1, s2, t1, t2, c1, c2, ncrops, tt),
                    batch, ncrops, s2, torch.float32, torch.float32)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_fake_implementations_match_the_ops(rng, dtype):
    """torch.compile traces the loss ops through their fake implementations: every output's
    shape and dtype must be the real op's (float32 statistics whatever the logits' dtype, the
    gradient in the logits' dtype), or a compiled half-precision step reads its buffers wrong."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    ops = torch.ops.clever_kernels
    batch, ncrops, k = 2, 3, 10
    student = torch.randn(ncrops * batch, k, generator=rng).to(dtype)
    teacher = torch.randn(2 * batch, k, generator=rng).to(dtype)
    center = torch.randn(k, generator=rng)
    rows = torch.rand(ncrops * batch, generator=rng)
    pairs = torch.rand(2, ncrops * batch, generator=rng)

    def run(s, t, c, r, p):
        d = ops.dir_loss_fwd(s, t, c, ncrops, TS, 0.04)
        v = ops.dvr_loss_fwd(s, t, c, ncrops, TS, 0.04)
        return {"dir_loss_fwd": d, "dvr_loss_fwd": v,
                "dir_loss_bwd": (ops.dir_loss_bwd(s, t, c, d[0], d[1], r, p, ncrops, TS, 0.04),),
                "dvr_loss_bwd": (ops.dvr_loss_bwd(s, t, c, v[0], v[1], p, r, ncrops, TS, 0.04),)}

    real = run(student, teacher, center, rows, pairs)
    with FakeTensorMode() as mode:
        fake = run(*(mode.from_tensor(x) for x in (student, teacher, center, rows, pairs)))
    for op, outputs in real.items():
        assert len(fake[op]) == len(outputs), op
        for i, (f, r) in enumerate(zip(fake[op], outputs)):
            assert (f.shape, f.dtype) == (r.shape, r.dtype), \
                f"{op} output {i}: fake gives {tuple(f.shape)} {f.dtype}, the op {tuple(r.shape)} {r.dtype}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_student_with_float32_teacher(rng, backend, dtype):
    """Autocast hands the student's logits in half precision and the teacher's in float32: the
    pair is promoted to float32, never the teacher rounded to the student's dtype, so the loss
    and the batch centres are the float32 teacher's to float32 accuracy (the students' values
    are exact in float32); the gradients come back in the student's dtype."""
    batch, ncrops, k1, k2, tt = 2, 3, 70, 50, 0.04
    s1, s2, t1, t2, c1, c2 = _inputs(rng, batch, ncrops, k1, k2, torch.float32)
    s1, s2 = s1.to(dtype), s2.to(dtype)
    assert not torch.equal(t1.to(dtype).float(), t1), "the teacher must not be exact in the student's dtype"
    parts, g1, g2 = _run(clever_loss, s1, s2, t1, t2, c1, c2, ncrops, tt, backend=backend)
    _assert_matches(parts, g1, g2, _reference(s1, s2, t1, t2, c1, c2, ncrops, tt), batch, ncrops, s2,
                    torch.float32, dtype)


def _centre_layout(c, layout, rng):
    """The centre c (1, K) as the layout names: (K,), every other column of a wider buffer, or
    one value expanded over K (then not c's values)."""
    if layout == "(K,)":
        return c.reshape(-1)
    if layout == "strided":
        wide = torch.randn(1, 2 * c.shape[1], generator=rng)
        wide[:, ::2] = c
        return wide[:, ::2]
    return torch.full((1, 1), 0.25).expand(1, c.shape[1])


@pytest.mark.parametrize("layout", ["(K,)", "strided", "expanded"])
@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_centre_layouts(rng, backend, layout):
    """Centres are taken as (K,) as well as (1, K) (the docstrings), and strided views of a
    buffer are read as a strided logit is: the same losses, batch centres and gradients as the
    float64 reference given the same values as a contiguous (1, K) centre."""
    batch, ncrops, tt = 2, 3, 0.04
    s1, s2, t1, t2, c1, c2 = _inputs(rng, batch, ncrops, 30, 20, torch.float32)
    c1, c2 = (_centre_layout(c, layout, rng) for c in (c1, c2))
    assert layout == "(K,)" or not (c1.is_contiguous() or c2.is_contiguous())
    dense1, dense2 = (c.reshape(1, -1).contiguous() for c in (c1, c2))
    parts, g1, g2 = _run(clever_loss, s1, s2, t1, t2, c1, c2, ncrops, tt, backend=backend)
    _assert_matches(parts, g1, g2, _reference(s1, s2, t1, t2, dense1, dense2, ncrops, tt), batch, ncrops, s2,
                    torch.float32, torch.float32)
    loss, bc = dino_loss(s1, t1, c1, ncrops, TS, tt, backend=backend)
    want_loss, want_bc = ref.dino_loss(s1.double(), t1.double(), dense1.double(), ncrops, TS, tt)
    _assert_close(loss, want_loss, torch.float32, "dino loss")
    _assert_close(bc, want_bc, torch.float32, "dino batch centre")
