"""The Triton loss kernels (clever_kernels/loss/_triton.py), run on the CPU through the Triton
interpreter, against the op formulas of csrc/ops.cpp evaluated in float64."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # read when triton and the kernels are imported

import pytest
import torch

pytest.importorskip("triton")

from clever_kernels import _backend  # noqa: E402
from clever_kernels.loss import _triton as kt  # noqa: E402
from conftest import (assert_inf_exactly_at, minus_inf_against_positive_teacher, softmax_offsets,  # noqa: E402
                      tolerance)

if type(kt._loss_bwd_kernel).__name__ != "InterpretedFunction":
    pytest.skip("the kernels were compiled for a GPU: triton was imported before TRITON_INTERPRET=1 "
                "was set; run this file on its own", allow_module_level=True)
if not _backend.backends()["triton-interpreter"].available:
    pytest.skip(_backend.backends()["triton-interpreter"].reason, allow_module_level=True)

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
TS, TT = 0.1, 0.04  # CLeVER's student and teacher temperatures

# (dtype, B, ncrops, K, num_splits, block_k, student_temp, teacher_temp). K chunks shorter than
# K (several blocks per program, and num_splits > 1) exercise the online rescaling and the
# merge; None picks the launchers' defaults.
CASES = [
    (F32, 1, 2, 1, 1, None, TS, TT),
    (F32, 3, 4, 100, 1, 16, TS, TT),
    (F32, 3, 4, 100, 3, 16, 0.2, 0.07),
    (F16, 3, 10, 1000, 1, 64, TS, TT),
    (F16, 1, 4, 7, 2, 2, TS, TT),
    (BF16, 1, 10, 1000, 4, 32, TS, TT),
    (BF16, 3, 2, 100, 2, 16, TS, TT),
    (F32, 3, 10, 1000, None, None, TS, TT),
    (F16, 1, 2, 7, None, None, TS, TT),
]


def _case_id(case):
    dtype, b, v, k, splits, block, ts, tt = case
    return f"{str(dtype)[6:]}-B{b}-V{v}-K{k}-s{splits}-bk{block}-ts{ts}-tt{tt}"


def _inputs(case, gen):
    dtype, b, v, k = case[:4]
    student = (torch.randn(v * b, k, generator=gen) * 1.5).to(dtype)
    teacher = (torch.randn(2 * b, k, generator=gen) * 0.3).to(dtype)
    center = torch.randn(k, generator=gen) * 0.05
    return student, teacher, center


def _reference(student, teacher, center, ncrops, ts, tt):
    """Every quantity of the op schemas in float64, from the formulas."""
    b = teacher.shape[0] // 2
    k = teacher.shape[1]
    xs = student.double() / ts
    xt = (teacher.double() - center.double().reshape(1, -1)) / tt
    r, q = xs.softmax(-1), xt.softmax(-1)
    ce = -(q.view(2, 1, b, k) * xs.log_softmax(-1).view(1, ncrops, b, k)).sum(-1).reshape(2, -1)
    norm_s, norm_t = r.norm(dim=-1), q.norm(dim=-1)
    dots = (q.view(2, 1, b, k) * r.view(1, ncrops, b, k)).sum(-1)
    cos = (dots / (norm_t.view(2, 1, b) * norm_s.view(1, ncrops, b))).reshape(2, -1)
    return dict(lse_s=xs.logsumexp(-1), lse_t=xt.logsumexp(-1), ce=ce, norm_s=norm_s, norm_t=norm_t,
                cos=cos, teacher_sum=teacher.double().sum(0), center_used=center.double().reshape(-1), r=r, q=q,
                off_s=softmax_offsets(student, ts), off_t=softmax_offsets(teacher.float() - center.float(), tt))


def _mix(pair_coef, q, ncrops):
    """sum_iq pair_coef[iq, v*B+b] * q[iq*B+b] as (V*B, K)."""
    b, k = q.shape[0] // 2, q.shape[1]
    return (pair_coef.double().view(2, ncrops, b, 1) * q.view(2, 1, b, k)).sum(0).reshape(ncrops * b, k)


def _ref_dir_grad(ref, alpha, beta, ncrops):
    return alpha.double()[:, None] * ref["r"] - _mix(beta, ref["q"], ncrops)


def _ref_dvr_grad(ref, u, z, ncrops):
    return ref["r"] * (_mix(u, ref["q"], ncrops) - z.double()[:, None] * ref["r"])


def _close(actual, expected, dtype, what):
    atol, rtol = tolerance(dtype)
    torch.testing.assert_close(actual.double(), expected, atol=atol, rtol=rtol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _check_fwd(outs, ref, names):
    assert len(outs) == len(names)
    for out, name in zip(outs, names):
        assert out.dtype == torch.float32 and out.shape == ref[name].shape, name
        _close(out, ref[name], torch.float32, name)


DIR_NAMES = ("off_s", "off_t", "ce", "teacher_sum", "center_used")
DVR_NAMES = ("off_s", "off_t", "norm_s", "norm_t", "cos", "teacher_sum", "center_used")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_dir_forward(case, rng):
    student, teacher, center = _inputs(case, rng)
    _, _, v, _, splits, block, ts, tt = case
    outs = kt.dir_loss_fwd(student, teacher, center, v, ts, tt, num_splits=splits, block_k=block)
    _check_fwd(outs, _reference(student, teacher, center, v, ts, tt), DIR_NAMES)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_dvr_forward(case, rng):
    student, teacher, center = _inputs(case, rng)
    _, _, v, _, splits, block, ts, tt = case
    outs = kt.dvr_loss_fwd(student, teacher, center, v, ts, tt, num_splits=splits, block_k=block)
    _check_fwd(outs, _reference(student, teacher, center, v, ts, tt), DVR_NAMES)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_dir_backward(case, rng):
    student, teacher, center = _inputs(case, rng)
    dtype, _, v, _, _, block, ts, tt = case
    ref = _reference(student, teacher, center, v, ts, tt)
    alpha = torch.randn(student.shape[0], generator=rng)
    beta = torch.randn(2, student.shape[0], generator=rng)
    grad = kt.dir_loss_bwd(student, teacher, center, ref["off_s"].float(), ref["off_t"].float(), alpha, beta,
                           v, ts, tt, block_k=block)
    assert grad.dtype == dtype and grad.shape == student.shape
    _close(grad, _ref_dir_grad(ref, alpha, beta, v), dtype, "grad")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_dvr_backward(case, rng):
    student, teacher, center = _inputs(case, rng)
    dtype, _, v, _, _, block, ts, tt = case
    ref = _reference(student, teacher, center, v, ts, tt)
    u = torch.randn(2, student.shape[0], generator=rng)
    z = torch.randn(student.shape[0], generator=rng)
    grad = kt.dvr_loss_bwd(student, teacher, center, ref["off_s"].float(), ref["off_t"].float(), u, z,
                           v, ts, tt, block_k=block)
    assert grad.dtype == dtype and grad.shape == student.shape
    _close(grad, _ref_dvr_grad(ref, u, z, v), dtype, "grad")


def test_backward_consumes_forward_statistics(rng):
    case = (F32, 3, 4, 100, 3, 16, TS, TT)
    student, teacher, center = _inputs(case, rng)
    ref = _reference(student, teacher, center, 4, TS, TT)
    off_s, off_t, *_ = kt.dir_loss_fwd(student, teacher, center, 4, TS, TT, num_splits=3, block_k=16)
    alpha, beta = torch.randn(12, generator=rng), torch.randn(2, 12, generator=rng)
    grad = kt.dir_loss_bwd(student, teacher, center, off_s, off_t, alpha, beta, 4, TS, TT, block_k=16)
    _close(grad, _ref_dir_grad(ref, alpha, beta, 4), F32, "grad")


# ---------------------------------------------------------------------------------------------
# Non-finite inputs: padding lanes must not create NaN, real NaN / Inf must reach the statistics
# ---------------------------------------------------------------------------------------------
def _poisoned(rng, value):
    case = (F32, 3, 4, 100, 3, 16, TS, TT)
    student, teacher, center = _inputs(case, rng)
    student[5, 40] = value  # view 1 of image 2; falls in the second of three K chunks
    teacher[4, 70] = value  # global view 1 of image 1; third chunk
    return student, teacher, center


@pytest.mark.parametrize("fwd, names", [(kt.dir_loss_fwd, DIR_NAMES), (kt.dvr_loss_fwd, DVR_NAMES)],
                         ids=["dir", "dvr"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_forward_propagates_nonfinite(fwd, names, value, rng):
    student, teacher, center = _poisoned(rng, value)
    ref = _reference(student, teacher, center, 4, TS, TT)
    outs = fwd(student, teacher, center, 4, TS, TT, num_splits=3, block_k=16)
    assert len(outs) == len(names)
    for out, name in zip(outs, names):
        want, got = ref[name], out
        if name == "center_used":
            assert torch.equal(out, center), name
            continue
        if name.startswith("off_"):
            # a poisoned row's log-sum is NaN; its maximum may or may not see the NaN
            assert torch.isnan(out[1][~torch.isfinite(want).all(0)]).all(), name
            want, got = want.T, out.T  # rows first, so that a row is judged as a whole
            bad = ~torch.isfinite(want).all(1, keepdim=True).expand_as(want)
            assert torch.equal(~torch.isfinite(got).all(1, keepdim=True).expand_as(got), bad), name
        else:
            bad = ~torch.isfinite(want)
            if name != "teacher_sum":
                # the reference's logsumexp gives +inf for a +inf logit; our statistics give NaN
                assert torch.isnan(got[bad]).all(), name
            assert torch.equal(~torch.isfinite(got), bad), name
        assert bad.any(), name
        _close(got[~bad], want[~bad], F32, name)


@pytest.mark.parametrize("splits, block", [(1, 16), (3, 16), (1, 128)])
def test_minus_inf_logit_with_positive_teacher_probability_is_inf(rng, splits, block):
    """As the C++ kernel's test of the same name: within a block, across blocks and across
    split programs, the cross-entropy is +inf wherever a -inf student logit meets a positive
    teacher probability, however far that probability is below float32's range."""
    student, teacher, center = _inputs((F32, 2, 3, 100, splits, block, TS, TT), rng)
    pairs, for_reference = minus_inf_against_positive_teacher(student, teacher, 60)
    ref = _reference(for_reference, teacher, center, 3, TS, TT)
    ce = kt.dir_loss_fwd(student, teacher, center, 3, TS, TT, num_splits=splits, block_k=block)[2]
    want_inf = assert_inf_exactly_at(ce, ref["ce"], pairs)
    _close(ce[~want_inf], ref["ce"][~want_inf], F32, "ce")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_backward_propagates_nan(rng):
    student, teacher, center = _poisoned(rng, float("nan"))
    ref = _reference(student, teacher, center, 4, TS, TT)
    off_s, off_t = ref["off_s"].float(), ref["off_t"].float()
    alpha, beta = torch.randn(12, generator=rng), torch.randn(2, 12, generator=rng)
    for grad, expected in (
        (kt.dir_loss_bwd(student, teacher, center, off_s, off_t, alpha, beta, 4, TS, TT, block_k=16),
         _ref_dir_grad(ref, alpha, beta, 4)),
        (kt.dvr_loss_bwd(student, teacher, center, off_s, off_t, beta, alpha, 4, TS, TT, block_k=16),
         _ref_dvr_grad(ref, beta, alpha, 4)),
    ):
        assert torch.isnan(expected).any() and not torch.isnan(expected).all()
        assert torch.equal(torch.isnan(grad), torch.isnan(expected))
        _close(grad, expected, F32, "grad")


# ---------------------------------------------------------------------------------------------
# Extreme logits
# ---------------------------------------------------------------------------------------------
def _extreme_inputs(rng, grid=True, b=3, v=4, k=1000):
    """Logits up to 2e4 in magnitude: rows shifted by 1100 to 9000 either way, 10% of entries near -1e4,
    and for image 0 the first 45% of K near -1e4 too, so the first K chunk's maxima sit 1e4
    below the others' and every partial sum must be rescaled on merging. Teacher rows follow
    their image's student rows, so some cross-entropies are small differences of ~1e5 terms.
    Student logits use the full float32 mantissa, so x / ts is not representable in float32.
    With grid, teacher logits and centre sit on a 1/64 grid, where float32 holds t - c
    exactly; without, the teacher is like the student and the centre is 0."""
    pattern = torch.randn(b, k, generator=rng) * 0.5
    holes = torch.rand(b, k, generator=rng) < 0.1
    holes[0, : int(0.45 * k)] = True
    pattern = torch.where(holes, pattern - 1e4, pattern)

    def rows(n, scale):
        # 1100 to 9000 either way: every row's |lse| is then above 1e4 (up to 2e5), which one
        # float32 pins only to 4e-3 - 8e-3 (from 1000, a row shifted down by about that much
        # has lse just under 1e4, since its logsumexp adds a few units to its maximum)
        sign = torch.where(torch.rand(n, 1, generator=rng) < 0.5, -1.0, 1.0)
        offsets = sign * (1100 + torch.rand(n, 1, generator=rng) * 7900)
        noise = torch.randn(n, k, generator=rng) * 0.3
        return offsets + scale * pattern.repeat(n // b, 1) + noise

    student = rows(v * b, 1.0)
    teacher = rows(2 * b, 0.4)
    center = torch.zeros(k)
    if grid:
        teacher = torch.round(teacher * 64) / 64
        center = torch.round(torch.randn(k, generator=rng) * 64) / 64
    assert student.abs().max() < 2e4 and student.dtype == torch.float32
    return student, teacher, center


# Tighter than the table allows at these magnitudes: what is compared is the kernels' float32
# arithmetic relative to values of up to 2e5 (logits / temperature).
EXTREME_TOL = dict(atol=1e-4, rtol=2e-6)


def test_extreme_logits_forward(rng):
    student, teacher, center = _extreme_inputs(rng)
    ref = _reference(student, teacher, center, 4, TS, TT)
    assert ref["lse_s"].abs().max() > 5e4
    outs = kt.dir_loss_fwd(student, teacher, center, 4, TS, TT, num_splits=3, block_k=64)
    outs += kt.dvr_loss_fwd(student, teacher, center, 4, TS, TT, num_splits=3, block_k=64)
    for out, name in zip(outs, DIR_NAMES + DVR_NAMES):
        assert torch.isfinite(out).all(), name
        torch.testing.assert_close(out.double(), ref[name], **EXTREME_TOL, msg=lambda m: f"{name}: {m}")


def test_extreme_logits_backward(rng):
    """Rows whose logsumexp is ~1e5, too large for one float32 to pin an exponent: from the
    offsets the forward stored (maximum and log-sum apart) the backward must still rebuild the
    float64 softmaxes, and x / T - lse must not lose the ~1e-2 that rounding x / T to float32
    would."""
    student, teacher, center = _extreme_inputs(rng, grid=False)
    off_s, off_t, *_ = kt.dir_loss_fwd(student, teacher, center, 4, TS, TT, num_splits=2, block_k=64)
    for off, temp in ((off_s, TS), (off_t, TT)):
        assert (off[0].double() / temp + off[1]).abs().min() > 1e4
    r = torch.softmax(student.double() / TS, dim=-1)
    q = torch.softmax((teacher.double() - center.double()) / TT, dim=-1)
    ref = dict(r=r, q=q)
    alpha, beta = torch.randn(12, generator=rng), torch.randn(2, 12, generator=rng)
    grad = kt.dir_loss_bwd(student, teacher, center, off_s, off_t, alpha, beta, 4, TS, TT, block_k=64)
    torch.testing.assert_close(grad.double(), _ref_dir_grad(ref, alpha, beta, 4), atol=1e-6, rtol=1e-5)
    grad = kt.dvr_loss_bwd(student, teacher, center, off_s, off_t, beta, alpha, 4, TS, TT, block_k=64)
    torch.testing.assert_close(grad.double(), _ref_dvr_grad(ref, beta, alpha, 4), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Launch configuration and argument checks
# ---------------------------------------------------------------------------------------------
def test_split_heuristic(monkeypatch):
    monkeypatch.setattr(kt, "_processors", lambda device: 132)
    cuda = torch.device("cuda")
    # the paper's shape: B = 128 alone is under one program per SM, so K is split
    assert 2 <= kt._split_count(128, 65536, 256, 16, cuda, None) <= 16
    # few images: many splits, but every chunk keeps several blocks
    assert kt._split_count(1, 65536, 256, 16, cuda, None) == 64
    # a batch that fills the device, or a K of a few blocks, is not split
    assert kt._split_count(4096, 65536, 256, 16, cuda, None) == 1
    assert kt._split_count(8, 512, 256, 16, cuda, None) == 1
    assert kt._split_count(8, 512, 256, 16, cuda, 5) == 2
    # many views: the merge's (views x splits) tile stays within 4096 elements
    assert kt._split_count(1, 2 ** 20, 64, 64, cuda, None) == 64
    assert kt._split_count(1, 2 ** 20, 32, 128, cuda, None) == 32
    assert kt._split_count(1, 2 ** 20, 64, 64, cuda, 64) == 64
    with pytest.raises(ValueError, match=r"num_splits must be an int in \[1, 64\] \(ncrops padded to 64 views\)"):
        kt._split_count(1, 2 ** 20, 64, 64, cuda, 65)
    assert kt._split_count(1, 2 ** 20, 64, 64, torch.device("cpu"), 128) == 128  # a GPU limit only


def test_block_k_choice_and_gpu_tile_limit():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    # defaults: a power of two covering K when K is small, never a tile above the default
    assert kt._block_k(1000, 16, cpu, None, kt._FWD_TILE) == kt._INTERPRETER_BLOCK_K
    assert kt._block_k(100, 16, cuda, None, kt._FWD_TILE) == 128
    assert kt._block_k(65536, 16, cuda, None, kt._FWD_TILE) * 16 <= kt._FWD_TILE
    # an explicit block_k: any power of two under the interpreter, a register-sized tile on a GPU
    assert kt._block_k(65536, 16, cpu, 4096, kt._FWD_TILE) == 4096
    assert kt._block_k(65536, 16, cuda, 512, kt._FWD_TILE) == 512
    with pytest.raises(ValueError, match="block_k = 2048 with ncrops padded to 16 views"):
        kt._block_k(65536, 16, cuda, 2048, kt._FWD_TILE)
    # with two views the block itself stays within twice the default's largest (the teacher rows
    # take registers too)
    with pytest.raises(ValueError, match="block_k = 8192 with ncrops padded to 2 views"):
        kt._block_k(65536, 2, cuda, 8192, kt._BWD_TILE)
    # up to 16 views a caller may double the default tile, beyond only keep it
    assert kt._block_k(65536, 32, cuda, 128, kt._FWD_TILE) == 128
    with pytest.raises(ValueError, match="block_k = 256 with ncrops padded to 32 views"):
        kt._block_k(65536, 32, cuda, 256, kt._FWD_TILE)
    # past 32 views the default block shrinks with them, keeping the default tile
    assert kt._block_k(65536, 64, cuda, None, kt._FWD_TILE) == 64
    assert kt._block_k(65536, 128, cuda, None, kt._FWD_TILE) == 32
    with pytest.raises(ValueError, match="power of two"):
        kt._block_k(65536, 16, cpu, 96, kt._FWD_TILE)


def _good(rng):
    return _inputs((F32, 2, 3, 10), rng)


FWD_ERRORS = {
    "student-3d": (lambda s, t, c: (s[None], t, c, 3, TS, TT), ValueError, "student must be 2-D"),
    "student-strided": (lambda s, t, c: (s.t().contiguous().t(), t, c, 3, TS, TT), ValueError,
                        "student must be contiguous"),
    "teacher-odd-rows": (lambda s, t, c: (s, t[:3], c, 3, TS, TT), ValueError, "teacher must have 2\\*B rows"),
    "student-rows": (lambda s, t, c: (s[:5], t, c, 3, TS, TT), ValueError, "student must have ncrops\\*B"),
    "width": (lambda s, t, c: (s[:, :9].contiguous(), t, c, 3, TS, TT), ValueError, "same width"),
    "student-int": (lambda s, t, c: (s.int(), t, c, 3, TS, TT), TypeError, "student must be float32"),
    "teacher-f64": (lambda s, t, c: (s, t.double(), c, 3, TS, TT), TypeError, "teacher must be float32"),
    "center-f64": (lambda s, t, c: (s, t, c.double(), 3, TS, TT), TypeError, "center must be a float32"),
    "center-numel": (lambda s, t, c: (s, t, c[:9], 3, TS, TT), ValueError, "center must be contiguous with K"),
    "center-strided": (lambda s, t, c: (s, t, torch.stack([c, c], 1).view(-1)[::2], 3, TS, TT), ValueError,
                       "center must be contiguous with K"),
    "ncrops": (lambda s, t, c: (s[:4], t[:2], c, 1, TS, TT), ValueError, "ncrops must be"),
    "student_temp": (lambda s, t, c: (s, t, c, 3, 0.0, TT), ValueError, "student_temp must be finite and > 0"),
    "teacher_temp": (lambda s, t, c: (s, t, c, 3, TS, -1.0), ValueError, "teacher_temp must be finite and > 0"),
    "teacher_temp inf": (lambda s, t, c: (s, t, c, 3, TS, float("inf")), ValueError,
                         "teacher_temp must be finite and > 0"),
    "teacher_temp tiny": (lambda s, t, c: (s, t, c, 3, TS, 1e-40), ValueError,
                          r"teacher_temp must be finite and > 0, in \[0.0001, 10000\]"),
    "student_temp huge": (lambda s, t, c: (s, t, c, 3, 1e38, TT), ValueError,
                          r"student_temp must be finite and > 0, in \[0.0001, 10000\]"),
}


@pytest.mark.parametrize("fwd", [kt.dir_loss_fwd, kt.dvr_loss_fwd], ids=["dir", "dvr"])
@pytest.mark.parametrize("make, exc, match", FWD_ERRORS.values(), ids=FWD_ERRORS.keys())
def test_forward_argument_errors(fwd, make, exc, match, rng):
    with pytest.raises(exc, match=match):
        fwd(*make(*_good(rng)))


@pytest.mark.parametrize("kwargs, match", [(dict(num_splits=0), "num_splits"), (dict(num_splits=129), "num_splits"),
                                           (dict(block_k=24), "block_k"), (dict(block_k=1), "block_k")],
                         ids=["splits0", "splits129", "block24", "block1"])
def test_forward_keyword_errors(kwargs, match, rng):
    with pytest.raises(ValueError, match=match):
        kt.dir_loss_fwd(*_good(rng), 3, TS, TT, **kwargs)


def test_backward_argument_errors(rng):
    s, t, c = _good(rng)
    off_s, off_t = torch.zeros(2, 6), torch.zeros(2, 4)
    pair, row = torch.zeros(2, 6), torch.zeros(6)
    with pytest.raises(ValueError, match=r"offset_student must have shape \(2, 6\)"):
        kt.dir_loss_bwd(s, t, c, off_s[0], off_t, row, pair, 3, TS, TT)
    with pytest.raises(TypeError, match="offset_teacher must be a float32"):
        kt.dir_loss_bwd(s, t, c, off_s, off_t.double(), row, pair, 3, TS, TT)
    with pytest.raises(ValueError, match="offset_teacher must be contiguous"):
        kt.dir_loss_bwd(s, t, c, off_s, torch.zeros(4, 2).t(), row, pair, 3, TS, TT)
    with pytest.raises(ValueError, match="beta must have shape"):
        kt.dir_loss_bwd(s, t, c, off_s, off_t, row, row, 3, TS, TT)
    with pytest.raises(ValueError, match="alpha must have shape"):
        kt.dir_loss_bwd(s, t, c, off_s, off_t, pair, pair, 3, TS, TT)
    with pytest.raises(ValueError, match="u must be contiguous"):
        kt.dvr_loss_bwd(s, t, c, off_s, off_t, torch.zeros(6, 2).t(), row, 3, TS, TT)
    with pytest.raises(TypeError, match="z must be a float32"):
        kt.dvr_loss_bwd(s, t, c, off_s, off_t, pair, row.half(), 3, TS, TT)
    with pytest.raises(ValueError, match="student must have ncrops"):
        kt.dvr_loss_bwd(s[:5], t, c, off_s, off_t, pair, row, 3, TS, TT)


def test_backward_refuses_a_k_grid_beyond_cuda_limit():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert kt._k_blocks(2 * 65535, 2, 2, cpu) == 65535  # the limit itself is allowed
    # the message names the largest block a GPU allows, or says there is none
    with pytest.raises(ValueError, match=r"use a larger block_k \(at most 4096 with ncrops padded to 2 views\)"):
        kt._k_blocks(2 * 65535 + 1, 2, 2, cuda)
    with pytest.raises(ValueError, match="no block_k a GPU allows with ncrops padded to 128 views is larger"):
        kt._k_blocks(64 * 65535 + 1, 64, 128, cuda)
    K = 2 * 65535 + 1  # 65536 blocks of 2
    s, t, c = torch.zeros(2, K), torch.zeros(2, K), torch.zeros(K)
    rows, offsets = torch.zeros(2), torch.zeros(2, 2)
    with pytest.raises(ValueError, match="block_k"):
        kt.dir_loss_bwd(s, t, c, offsets, offsets, rows, torch.zeros(2, 2), 2, TS, TT, block_k=2)
    launches, _ = kt.backward_launches(s, t, c, offsets, offsets, torch.zeros(2, 2), rows, 2, TS, TT, False,
                                       block_k=4)
    assert launches[-1].grid == (1, 65536 // 2)


def test_cpu_tensors_need_the_interpreter(monkeypatch, rng):
    monkeypatch.setattr(kt, "triton_interpreting", lambda: False)
    with pytest.raises(ValueError, match="CUDA tensors"):
        kt.dvr_loss_fwd(*_good(rng), 3, TS, TT)


@pytest.mark.skipif(not _backend.has_extension(), reason="clever_kernels._C is not built")
def test_register_cuda_impls_is_idempotent():
    kt.register_cuda_impls()
    kt.register_cuda_impls()
    assert kt._cuda_library is not None


def test_teacher_sum_adds_every_block_of_rows(rng):
    """2B = 18 teacher rows: the column sum adds two full blocks of _SUM_ROWS rows and a partial
    one (the other cases have 2B <= 6, a single block, where losing all but one block of rows
    would go unseen)."""
    case = (F32, 9, 2, 37, 1, 16, TS, TT)
    student, teacher, center = _inputs(case, rng)
    assert teacher.shape[0] > 2 * kt._SUM_ROWS
    want = teacher.double().sum(0)
    for fwd in (kt.dir_loss_fwd, kt.dvr_loss_fwd):
        teacher_sum = fwd(student, teacher, center, 2, TS, TT, num_splits=1, block_k=16)[-2]
        _close(teacher_sum, want, F32, f"{fwd.__name__} teacher_sum")
