"""The C++ CPU kernels of the loss ops (csrc/cpu/loss.cpp) against the formulas their schemas
state in csrc/ops.cpp, computed here in float64 with plain PyTorch from the same input values."""
import platform

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("clever_kernels._C", reason="the C++ extension is not built")
ops = torch.ops.clever_kernels

from conftest import OP_TOLERANCES as TOLERANCES
from conftest import assert_inf_exactly_at, minus_inf_against_positive_teacher, softmax_offsets, torch_threads

TS, TT = 0.1, 0.04  # DINO's student and teacher temperatures


def assert_close(actual, expected, tol, what):
    rtol, atol = tol
    expected = expected.double()
    scale = expected[torch.isfinite(expected)].abs().max().item() if expected.numel() else 1.0
    # below the smallest normal, a dtype's values are spaced evenly: float16 keeps ~6e-8 absolute
    finfo = torch.finfo(actual.dtype)
    floor = finfo.smallest_normal * finfo.eps
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=max(atol * scale, floor),
                               msg=lambda m: f"{what}: {m}")


def make_inputs(rng, dtype, batch, ncrops, k, s_scale=1.0, t_scale=0.2):
    """Logits rounded to dtype; scales give peaked but not one-hot softmaxes at TS, TT."""
    student = (torch.randn(ncrops * batch, k, generator=rng) * s_scale).to(dtype)
    teacher = (torch.randn(2 * batch, k, generator=rng) * t_scale).to(dtype)
    center = torch.randn(k, generator=rng) * 0.05
    return student, teacher, center


def reference(student, teacher, center, ncrops, ts=TS, tt=TT):
    """Every forward statistic in float64, with the probabilities the backward needs."""
    s, t, c = student.double(), teacher.double(), center.double()
    batch, k = t.shape[0] // 2, t.shape[1]
    y, x = s / ts, (t - c) / tt
    q, r = F.softmax(x, dim=-1), F.softmax(y, dim=-1)
    # q[iq, b] broadcast to every student row v*B+b: (2, V*B, K)
    q_rows = q.view(2, 1, batch, k).expand(2, ncrops, batch, k).reshape(2, ncrops * batch, k)
    ce = -(q_rows * F.log_softmax(y, dim=-1)).sum(-1)
    norm_s, norm_t = r.norm(dim=-1), q.norm(dim=-1)
    norm_t_rows = norm_t.view(2, 1, batch).expand(2, ncrops, batch).reshape(2, -1)
    cos = (q_rows * r).sum(-1) / (norm_t_rows * norm_s)
    return dict(lse_student=torch.logsumexp(y, -1), lse_teacher=torch.logsumexp(x, -1), ce=ce,
                max_student=softmax_offsets(student, ts)[0].float(),
                max_teacher=softmax_offsets(centred(teacher, center), tt)[0].float(),
                teacher_sum=t.sum(0), center_used=center.reshape(-1), norm_student=norm_s, norm_teacher=norm_t,
                cos=cos,
                r=r, q_rows=q_rows)


def centred(teacher, center):
    """teacher - center as the kernels compute it: in float32, in float64 for float64 logits."""
    acc = torch.float64 if teacher.dtype == torch.float64 else torch.float32
    return teacher.to(acc) - center.to(acc)


def with_lse(out, ts, tt):
    """The ops' outputs, plus each row's logsumexp(x / temp) = max / temp + log_sum rebuilt from
    its stored offset in float64 (what the offset stands for), and the offsets' maxima."""
    for who, temp in (("student", ts), ("teacher", tt)):
        offset = out[f"offset_{who}"]
        out[f"lse_{who}"] = offset[0].double() / temp + offset[1].double()
        out[f"max_{who}"] = offset[0]
    return out


DERIVED = ("lse_student", "lse_teacher")


def ref_dir_grad(ref, alpha, beta):
    return alpha.double()[:, None] * ref["r"] - (beta.double()[..., None] * ref["q_rows"]).sum(0)


def ref_dvr_grad(ref, u, z):
    r = ref["r"]
    return r * ((u.double()[..., None] * ref["q_rows"]).sum(0) - z.double()[:, None] * r)


def named(names, outputs):
    assert len(outputs) == len(names), (len(outputs), names)
    return dict(zip(names, outputs))


def dir_fwd(student, teacher, center, ncrops, ts=TS, tt=TT):
    names = ("offset_student", "offset_teacher", "ce", "teacher_sum", "center_used")
    out = named(names, ops.dir_loss_fwd(student, teacher, center, ncrops, ts, tt))
    return with_lse(out, ts, tt)


def dvr_fwd(student, teacher, center, ncrops, ts=TS, tt=TT):
    names = ("offset_student", "offset_teacher", "norm_student", "norm_teacher", "cos", "teacher_sum",
             "center_used")
    out = named(names, ops.dvr_loss_fwd(student, teacher, center, ncrops, ts, tt))
    return with_lse(out, ts, tt)


def check_stats(out, ref, tol):
    """Every statistic against the formulas: the offsets through the logsumexp they rebuild
    (their maxima exactly), the rest directly."""
    for name, value in out.items():
        if name.startswith("offset_"):
            assert value.dtype == torch.float32 and value.shape[0] == 2, name
        elif name.startswith("max_") or name == "center_used":
            assert torch.equal(value, ref[name]), name
        elif name in ref:
            if name not in DERIVED:
                assert value.dtype == torch.float32, name
            assert_close(value, ref[name], tol, name)


def bwd_coefficients(rng, rows):
    """alpha, beta (dir) and u, z (dvr), float32 as the autograd layer passes them."""
    alpha = torch.rand(rows, generator=rng) + 0.5
    beta = torch.rand(2, rows, generator=rng) + 0.5
    u = torch.randn(2, rows, generator=rng)
    z = torch.randn(rows, generator=rng)
    return alpha, beta, u, z


def check_ops(rng, student, teacher, center, ncrops, ts=TS, tt=TT):
    """All four ops against the formulas; the backward starts from the forward's statistics."""
    dtype = student.dtype
    stat_tol, grad_tol = TOLERANCES[dtype]
    ref = reference(student, teacher, center, ncrops, ts, tt)
    d = dir_fwd(student, teacher, center, ncrops, ts, tt)
    v = dvr_fwd(student, teacher, center, ncrops, ts, tt)
    for out in (d, v):
        check_stats(out, ref, stat_tol)
    alpha, beta, u, z = bwd_coefficients(rng, student.shape[0])
    grad = ops.dir_loss_bwd(student, teacher, center, d["offset_student"], d["offset_teacher"], alpha,
                            beta, ncrops, ts, tt)
    assert grad.dtype == dtype and grad.shape == student.shape
    assert_close(grad, ref_dir_grad(ref, alpha, beta), grad_tol, "dir grad")
    grad = ops.dvr_loss_bwd(student, teacher, center, v["offset_student"], v["offset_teacher"], u, z,
                            ncrops, ts, tt)
    assert grad.dtype == dtype and grad.shape == student.shape
    assert_close(grad, ref_dvr_grad(ref, u, z), grad_tol, "dvr grad")


def check_all(rng, dtype, batch, ncrops, k, ts=TS, tt=TT, **scales):
    student, teacher, center = make_inputs(rng, dtype, batch, ncrops, k, **scales)
    check_ops(rng, student, teacher, center, ncrops, ts, tt)


@pytest.mark.parametrize("k", [1, 7, 1000, 4097])
@pytest.mark.parametrize("ncrops", [2, 4, 10])
@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
def test_ops_match_formulas(rng, dtype, batch, ncrops, k):
    check_all(rng, dtype, batch, ncrops, k)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("ts, tt, s_scale, t_scale",
                         [(1.0, 0.5, 3.0, 3.0), (0.1, 0.04, 0.02, 0.01)])
def test_other_temperatures_and_scales(rng, dtype, ts, tt, s_scale, t_scale):
    check_all(rng, dtype, 3, 4, 1000, ts=ts, tt=tt, s_scale=s_scale, t_scale=t_scale)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("ramp", [3.0, -3.0])
def test_row_maxima_move_across_tiles(rng, dtype, ramp):
    """Several tiles per row with a ramp added, so every row's maximum sits in its last tile
    (ramp > 0: each tile's statistics are rescaled when the next arrives) or its first."""
    batch, ncrops, k = 2, 3, 3 * 4096 + 123
    student, teacher, center = make_inputs(rng, torch.float32, batch, ncrops, k)
    slope = torch.linspace(0.0, ramp, k)
    student, teacher = (student + slope).to(dtype), (teacher + 0.2 * slope).to(dtype)
    check_ops(rng, student, teacher, center, ncrops)


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("k", [8193, 20000])
def test_k_split_across_threads(rng, threads, k):
    """One image and more threads than images: the forward splits K and merges the partial
    statistics. Then again with the mass on the first and last column of every tile (splits
    fall on tile boundaries): a column lost or read twice at a boundary is then most of a
    row's softmax, where among random logits it would be under the tolerance."""
    with torch_threads(threads):
        check_all(rng, torch.float32, 1, 4, k)
        student, teacher, center = make_inputs(rng, torch.float32, 1, 4, k)
        edges = torch.cat([torch.arange(0, k, 4096), torch.arange(4095, k, 4096)])
        student[:, edges] += 3.0
        teacher[:, edges] += 1.0
        check_ops(rng, student, teacher, center, 4)


def test_deterministic_across_thread_counts(rng):
    student, teacher, center = make_inputs(rng, torch.float32, 8, 4, 3000)
    runs = []
    for threads in (1, 2, 3):
        with torch_threads(threads):
            runs.append(dir_fwd(student, teacher, center, 4) | dvr_fwd(student, teacher, center, 4))
    for other in runs[1:]:
        for name, value in runs[0].items():
            assert torch.equal(value, other[name]), name


def subnormal_count(x):
    return ((x != 0) & (x.abs() < torch.finfo(x.dtype).smallest_normal)).sum().item()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="the kernels flush subnormals on x86 only")
@pytest.mark.parametrize("threads", [1, 2])
def test_gradients_flush_subnormals_to_zero(rng, threads):
    """Gradient elements below float32's smallest normal come out 0, not subnormal: products of a
    probability near exp(-43) and a small pair coefficient fall there (about a quarter of a cosine
    head's on these logits and coefficients), and on x86 computing them without flush-to-zero
    took the backward 6x longer. They stay within the formulas' tolerance."""
    student, teacher, center = make_inputs(rng, torch.float32, 4, 4, 4097, s_scale=2.0)
    ref = reference(student, teacher, center, 4)
    v = dvr_fwd(student, teacher, center, 4)
    d = dir_fwd(student, teacher, center, 4)
    u = torch.randn(2, 16, generator=rng) * 1e-20
    z = torch.rand(16, generator=rng) * 1e-21
    alpha = torch.rand(16, generator=rng) * 1e-12
    beta = torch.rand(2, 16, generator=rng) * 1e-26
    with torch_threads(threads):
        dvr = ops.dvr_loss_bwd(student, teacher, center, v["offset_student"], v["offset_teacher"], u, z, 4, TS, TT)
        dir_ = ops.dir_loss_bwd(student, teacher, center, d["offset_student"], d["offset_teacher"], alpha, beta, 4,
                                TS, TT)
    dvr_ref, dir_ref = ref_dvr_grad(ref, u, z), ref_dir_grad(ref, alpha, beta)
    # the exact gradients do have elements there, so the check can see a subnormal kept
    assert subnormal_count(dvr_ref.float()) > 0 and subnormal_count(dir_ref.float()) > 0
    assert subnormal_count(dvr) == 0 and subnormal_count(dir_) == 0
    _, grad_tol = TOLERANCES[torch.float32]
    assert_close(dvr, dvr_ref, grad_tol, "dvr grad")
    assert_close(dir_, dir_ref, grad_tol, "dir grad")


def test_caller_keeps_subnormals_after_the_ops(rng):
    """The ops flush subnormals only while they run: the calling thread, which runs one chunk of
    their parallel loops, still computes subnormals afterwards."""
    tiny = torch.tensor([1e-39, -3e-40], dtype=torch.float32)
    student, teacher, center = make_inputs(rng, torch.float32, 1, 2, 7)
    v = dvr_fwd(student, teacher, center, 2)
    ops.dvr_loss_bwd(student, teacher, center, v["offset_student"], v["offset_teacher"], torch.ones(2, 2),
                     torch.ones(2), 2, TS, TT)
    assert subnormal_count(tiny * 1.5) == 2 and subnormal_count(tiny + tiny) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_large_offset_small_spread(rng, dtype):
    """Logits near 1e4 that differ by O(1) after the temperature, the centre tracking the teacher
    as DINO's does. The kernel subtracts the centre and then the row maxima in raw units, exact
    here, where scaling first would lose 0.016 (ulp(2.5e5)) in every exponent. A float32 lse
    (~1e5) would be too coarse to rebuild the softmax from: the forward keeps each row's maximum
    and log-sum apart. float64 logits here are not float32 values: their maxima are rounded to
    float32, and the rounding must move into the log-sum (else 4e-3 relative errors)."""
    student, teacher, center = make_inputs(rng, dtype, 3, 4, 1000, s_scale=0.1, t_scale=0.04)
    student, teacher, center = student + 1e4, teacher + 1e4, center + 1e4
    ref = reference(student, teacher, center, 4)
    d = dir_fwd(student, teacher, center, 4)
    v = dvr_fwd(student, teacher, center, 4)
    for out in (d, v):
        check_stats(out, ref, (1e-5, 1e-6))
    alpha, beta, u, z = bwd_coefficients(rng, 12)
    grad = ops.dir_loss_bwd(student, teacher, center, d["offset_student"], d["offset_teacher"], alpha,
                            beta, 4, TS, TT)
    assert_close(grad, ref_dir_grad(ref, alpha, beta), TOLERANCES[torch.float32][1], "dir grad")
    grad = ops.dvr_loss_bwd(student, teacher, center, v["offset_student"], v["offset_teacher"], u, z, 4,
                            TS, TT)
    assert_close(grad, ref_dvr_grad(ref, u, z), TOLERANCES[torch.float32][1], "dvr grad")


def test_extreme_logits_finite_and_accurate(rng):
    """|logits| up to ~4e4 with tt = 0.04: exponent arguments reach 1e6, every softmax is
    one-hot; all results finite and equal to the float64 reference."""
    batch, ncrops, k = 4, 6, 1000
    student = torch.randn(ncrops * batch, k, generator=rng) * 1e4
    teacher = torch.randn(2 * batch, k, generator=rng) * 1e4
    center = torch.randn(k, generator=rng) * 1e4
    ref = reference(student, teacher, center, ncrops)
    d = dir_fwd(student, teacher, center, ncrops)
    v = dvr_fwd(student, teacher, center, ncrops)
    for out in (d, v):
        for name, value in out.items():
            assert torch.isfinite(value).all(), name
        check_stats(out, ref, (1e-6, 1e-7))
    alpha, beta, u, z = bwd_coefficients(rng, ncrops * batch)
    grad = ops.dir_loss_bwd(student, teacher, center, d["offset_student"], d["offset_teacher"], alpha,
                            beta, ncrops, TS, TT)
    assert torch.isfinite(grad).all()
    assert_close(grad, ref_dir_grad(ref, alpha, beta), (1e-6, 1e-7), "dir grad")
    grad = ops.dvr_loss_bwd(student, teacher, center, v["offset_student"], v["offset_teacher"], u, z,
                            ncrops, TS, TT)
    assert torch.isfinite(grad).all()
    assert_close(grad, ref_dvr_grad(ref, u, z), (1e-6, 1e-7), "dvr grad")


# ------------------------------------------------------------------------------------------------
# Non-finite logits. B = 2, ncrops = 3, K = 4097: one whole tile and a tail of 1.

TILE = 4096  # kTile in csrc/cpu/loss.cpp
BATCH, NCROPS, K = 2, 3, TILE + 1


def rows_of_image(b):
    return [v * BATCH + b for v in range(NCROPS)]


def run_all(student, teacher, center, rng):
    """Both forwards and backwards; the backward coefficients are returned with the results."""
    d = dir_fwd(student, teacher, center, NCROPS)
    v = dvr_fwd(student, teacher, center, NCROPS)
    alpha, beta, u, z = bwd_coefficients(rng, NCROPS * BATCH)
    d.update(alpha=alpha, beta=beta, grad=ops.dir_loss_bwd(
        student, teacher, center, d["offset_student"], d["offset_teacher"], alpha, beta, NCROPS, TS, TT))
    v.update(u=u, z=z, grad=ops.dvr_loss_bwd(
        student, teacher, center, v["offset_student"], v["offset_teacher"], u, z, NCROPS, TS, TT))
    return d, v


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("col", [0, 1500, K - 1])
def test_nonfinite_student_logit(rng, value, col):
    """NaN or +inf in one student logit: that row's statistics, pair terms and gradient are NaN
    (or inf), never finite; every other row is untouched."""
    student, teacher, center = make_inputs(rng, torch.float32, BATCH, NCROPS, K)
    row = 1 * BATCH + 1
    student[row, col] = value
    d, v = run_all(student, teacher, center, rng)
    others = [i for i in range(NCROPS * BATCH) if i != row]
    for out, names in ((d, ("lse_student", "ce", "grad")),
                       (v, ("lse_student", "norm_student", "cos", "grad"))):
        for name in names:
            x = out[name]
            # pair terms are (2, V*B): rows are columns there
            bad, good = (x[:, row], x[:, others]) if name in ("ce", "cos") else (x[row], x[others])
            assert not torch.isfinite(bad).any(), name
            if value != value:
                assert torch.isnan(bad).all(), name
            assert torch.isfinite(good).all(), name
        assert torch.isfinite(out["lse_teacher"]).all() and torch.isfinite(out["teacher_sum"]).all()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("col", [0, 2048, K - 1])
def test_nonfinite_teacher_logit(rng, value, col):
    """NaN or +inf in teacher row (iq = 1, b = 0): its lse and every pair term and gradient of
    image 0 are not finite; teacher_sum is not finite in that column only."""
    student, teacher, center = make_inputs(rng, torch.float32, BATCH, NCROPS, K)
    iq, b = 1, 0
    teacher[iq * BATCH + b, col] = value
    d, v = run_all(student, teacher, center, rng)
    image0, image1 = rows_of_image(0), rows_of_image(1)
    for out, pair in ((d, "ce"), (v, "cos")):
        assert not torch.isfinite(out["lse_teacher"][iq * BATCH + b])
        assert torch.isfinite(out["lse_teacher"][[0, 1, 3]]).all()
        assert not torch.isfinite(out[pair][iq, image0]).any()
        assert torch.isfinite(out[pair][:, image1]).all()
        assert torch.isfinite(out[pair][1 - iq]).all()
        assert not torch.isfinite(out["grad"][image0]).any()
        assert torch.isfinite(out["grad"][image1]).all()
        assert torch.isfinite(out["lse_student"]).all()
        ts = out["teacher_sum"]
        assert not torch.isfinite(ts[col]) and torch.isfinite(ts[torch.arange(K) != col]).all()
    if value != value:
        assert torch.isnan(d["ce"][iq, image0]).all() and torch.isnan(v["cos"][iq, image0]).all()
        assert torch.isnan(v["norm_teacher"][iq * BATCH + b])


def test_nan_center_poisons_every_teacher_row(rng):
    student, teacher, center = make_inputs(rng, torch.float32, BATCH, NCROPS, K)
    center[17] = float("nan")
    d, v = run_all(student, teacher, center, rng)
    assert torch.isnan(d["lse_teacher"]).all() and torch.isnan(d["ce"]).all()
    assert torch.isnan(v["norm_teacher"]).all() and torch.isnan(v["cos"]).all()
    assert torch.isfinite(d["teacher_sum"]).all() and torch.isfinite(d["lse_student"]).all()


def test_minus_inf_logits_are_zero_probabilities(rng):
    """-inf logits have probability 0; whole tiles of -inf (whose maximum is -inf) must not turn
    the row's statistics into NaN, nor must merging two of them."""
    k = 2 * TILE + 5
    student, teacher, center = make_inputs(rng, torch.float32, BATCH, NCROPS, k)
    teacher[0, :2 * TILE] = float("-inf")
    teacher[3, TILE + 3] = float("-inf")
    student[5, :TILE] = float("-inf")
    student[1, 7] = float("-inf")
    ref = reference(student, teacher, center, NCROPS)
    d, v = run_all(student, teacher, center, rng)
    tol = TOLERANCES[torch.float32][0]
    for name in ("lse_student", "lse_teacher", "teacher_sum"):
        assert_close(d[name], ref[name], tol, name)
    for name in ("norm_student", "norm_teacher", "cos"):
        assert_close(v[name], ref[name], tol, name)
    # A -inf student logit where the teacher probability is > 0 makes the cross-entropy +inf.
    finite_rows = [0, 2, 3, 4]
    assert_close(d["ce"][:, finite_rows], ref["ce"][:, finite_rows], tol, "ce")
    assert (d["ce"][:, [1, 5]] == float("inf")).all()
    grad_tol = TOLERANCES[torch.float32][1]
    assert_close(d["grad"], ref_dir_grad(ref, d["alpha"], d["beta"]), grad_tol, "dir grad")
    assert_close(v["grad"], ref_dvr_grad(ref, v["u"], v["z"]), grad_tol, "dvr grad")


def test_minus_inf_logit_with_positive_teacher_probability_is_inf(rng):
    student, teacher, center = make_inputs(rng, torch.float32, BATCH, NCROPS, 2 * TILE + 5)
    pairs, for_reference = minus_inf_against_positive_teacher(student, teacher, TILE)
    ref = reference(for_reference, teacher, center, NCROPS)
    d = dir_fwd(student, teacher, center, NCROPS)
    want_inf = assert_inf_exactly_at(d["ce"], ref["ce"], pairs)
    tol = TOLERANCES[torch.float32][0]
    assert_close(d["ce"][~want_inf], ref["ce"][~want_inf], tol, "ce")


def test_minus_inf_logit_where_both_teachers_are_zero(rng):
    """One tile, so no later rescaling hides a wrong redo: a -inf student logit at a column
    where both teachers' probabilities are exactly 0 (their logits -inf too) adds 0 to every
    pair's cross-entropy, each teacher's terms taken from its own row."""
    student, teacher, center = make_inputs(rng, torch.float32, 2, 3, 37)
    student[0, 5] = float("-inf")  # view 0 of image 0
    teacher[0, 5] = teacher[2, 5] = float("-inf")  # both teacher rows of image 0
    for_reference = student.clone()
    for_reference[0, 5] = -1e30  # 0 * finite where the reference would give 0 * inf = NaN
    d = dir_fwd(student, teacher, center, 3)
    assert_close(d["ce"], reference(for_reference, teacher, center, 3)["ce"], TOLERANCES[torch.float32][0], "ce")


def test_all_nan_row(rng):
    student, teacher, center = make_inputs(rng, torch.float32, BATCH, NCROPS, 7)
    student[2] = float("nan")
    d = dir_fwd(student, teacher, center, NCROPS)
    assert torch.isnan(d["lse_student"][2]) and torch.isnan(d["ce"][:, 2]).all()


# ------------------------------------------------------------------------------------------------
# Argument checks: each names the argument and what was expected.

def good_args(batch=2, ncrops=4, k=7):
    student = torch.randn(ncrops * batch, k)
    teacher = torch.randn(2 * batch, k)
    center = torch.randn(k)
    return dict(student=student, teacher=teacher, center=center, ncrops=ncrops)


def call(op, a, ts=TS, tt=TT, **stats):
    rows = a["student"].shape[0] if a["student"].dim() == 2 else 8
    batch = max(a["teacher"].shape[0] // 2, 1) if a["teacher"].dim() >= 1 else 2
    off_s = stats.get("offset_student", torch.zeros(2, rows))
    off_t = stats.get("offset_teacher", torch.zeros(2, 2 * batch))
    common = (a["student"], a["teacher"], a["center"])
    if op == "dir_loss_fwd":
        return ops.dir_loss_fwd(*common, a["ncrops"], ts, tt)
    if op == "dvr_loss_fwd":
        return ops.dvr_loss_fwd(*common, a["ncrops"], ts, tt)
    if op == "dir_loss_bwd":
        return ops.dir_loss_bwd(*common, off_s, off_t, stats.get("alpha", torch.zeros(rows)),
                                stats.get("beta", torch.zeros(2, rows)), a["ncrops"], ts, tt)
    return ops.dvr_loss_bwd(*common, off_s, off_t, stats.get("u", torch.zeros(2, rows)),
                            stats.get("z", torch.zeros(rows)), a["ncrops"], ts, tt)


ALL_OPS = ["dir_loss_fwd", "dvr_loss_fwd", "dir_loss_bwd", "dvr_loss_bwd"]

LOGIT_ERRORS = [
    ("student 1-D", dict(student=torch.randn(56)), r"student must be 2-D \(ncrops\*B, K\)"),
    ("teacher 3-D", dict(teacher=torch.randn(4, 7, 1)), r"teacher must be 2-D \(2\*B, K\)"),
    ("odd teacher rows", dict(teacher=torch.randn(3, 7)), r"teacher must have 2\*B rows"),
    ("no teacher rows", dict(teacher=torch.randn(0, 7), student=torch.randn(0, 7)),
     r"teacher must have 2\*B rows \(two global views of B >= 1 images\), got 0"),
    ("student rows", dict(student=torch.randn(9, 7)),
     r"student must have ncrops\*B = 4\*2 = 8 rows \(B from teacher\), got 9"),
    ("widths", dict(teacher=torch.randn(4, 6)), r"teacher must have student's width K = 7, got 6"),
    ("empty K", dict(student=torch.randn(8, 0), teacher=torch.randn(4, 0), center=torch.randn(0)),
     r"student must have K >= 1 columns"),
    ("center numel", dict(center=torch.randn(6)), r"center must have K = 7 elements"),
    ("integer logits", dict(student=torch.zeros(8, 7, dtype=torch.long),
                            teacher=torch.zeros(4, 7, dtype=torch.long)),
     r"student must be float32, float64, float16 or bfloat16, got Long"),
    ("dtype mismatch", dict(teacher=torch.randn(4, 7, dtype=torch.float64)),
     r"teacher must have student's dtype Float, got Double"),
    ("center dtype", dict(center=torch.randn(7, dtype=torch.float64)),
     r"center must be float32, got Double"),
    ("student strides", dict(student=torch.randn(7, 8).t()), r"student must be contiguous"),
    ("teacher strides", dict(teacher=torch.randn(7, 4).t()), r"teacher must be contiguous"),
    ("center strides", dict(center=torch.randn(14)[::2]), r"center must be contiguous"),
    ("ncrops", dict(ncrops=1, student=torch.randn(2, 7)), r"ncrops must be >= 2"),
]


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("case, change, match", LOGIT_ERRORS, ids=[c[0] for c in LOGIT_ERRORS])
def test_logit_argument_errors(op, case, change, match):
    with pytest.raises(RuntimeError, match=match):
        call(op, good_args() | change)


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("ts, tt, match", [
    (0.0, TT, r"student_temp must be finite and > 0, in \[0.0001, 10000\], got 0"),
    (-0.1, TT, r"student_temp must be finite and > 0"),
    (float("nan"), TT, r"student_temp must be finite and > 0"),
    (TS, 0.0, r"teacher_temp must be finite and > 0, in \[0.0001, 10000\], got 0"),
    (TS, float("inf"), r"teacher_temp must be finite and > 0"),
    # float32 arithmetic: 1/T overflows below the range, T x log-sum above it
    (TS, 1e-40, r"teacher_temp must be finite and > 0, in \[0.0001, 10000\]"),
    (1e38, TT, r"student_temp must be finite and > 0, in \[0.0001, 10000\]"),
])
def test_temperature_errors(op, ts, tt, match):
    with pytest.raises(RuntimeError, match=match):
        call(op, good_args(), ts=ts, tt=tt)


STAT_ERRORS = [
    ("dir_loss_bwd", dict(offset_student=torch.zeros(8)),
     r"offset_student must be a float32 tensor of shape \[2, 8\], got Float \[8\]"),
    ("dvr_loss_bwd", dict(offset_student=torch.zeros(2, 8, dtype=torch.float64)),
     r"offset_student must be a float32 tensor of shape \[2, 8\], got Double \[2, 8\]"),
    ("dir_loss_bwd", dict(offset_teacher=torch.zeros(4, 2)),
     r"offset_teacher must be a float32 tensor of shape \[2, 4\]"),
    ("dvr_loss_bwd", dict(offset_teacher=torch.zeros(2, 5)),
     r"offset_teacher must be a float32 tensor of shape \[2, 4\]"),
    ("dir_loss_bwd", dict(offset_student=torch.zeros(8, 2).t()), r"offset_student must be contiguous"),
    ("dir_loss_bwd", dict(alpha=torch.zeros(2, 8)), r"alpha must be a float32 tensor of shape \[8\]"),
    ("dir_loss_bwd", dict(alpha=torch.zeros(8, dtype=torch.float16)),
     r"alpha must be a float32 tensor"),
    ("dir_loss_bwd", dict(beta=torch.zeros(8)), r"beta must be a float32 tensor of shape \[2, 8\]"),
    ("dir_loss_bwd", dict(beta=torch.zeros(8, 2).t()), r"beta must be contiguous"),
    ("dvr_loss_bwd", dict(u=torch.zeros(2, 4)), r"u must be a float32 tensor of shape \[2, 8\]"),
    ("dvr_loss_bwd", dict(u=torch.zeros(8, 2).t()), r"u must be contiguous"),
    ("dvr_loss_bwd", dict(z=torch.zeros(1, 8)), r"z must be a float32 tensor of shape \[8\]"),
    ("dvr_loss_bwd", dict(z=torch.zeros(16)[::2]), r"z must be contiguous"),
]


@pytest.mark.parametrize("op, stats, match", STAT_ERRORS)
def test_statistic_argument_errors(op, stats, match):
    with pytest.raises(RuntimeError, match=match):
        call(op, good_args(), **stats)


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("name", ["teacher", "center"])
def test_device_mismatch(op, name):
    """The dispatcher routes mixed devices away from the CPU kernel, so call it directly."""
    a = good_args()
    args = [a["student"], a["teacher"], a["center"]]
    index = {"teacher": 1, "center": 2}[name]
    args[index] = args[index].to("meta")
    rows = a["student"].shape[0]
    if op.endswith("bwd"):
        extra = [torch.zeros(2, rows), torch.zeros(rows)]
        if op == "dir_loss_bwd":
            extra.reverse()
        args += [torch.zeros(rows), torch.zeros(4)] + extra
    overload = getattr(ops, op).default
    with pytest.raises(RuntimeError, match=rf"{name} must be on student's device cpu, got meta"):
        overload.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, 4, TS, TT)


def test_stat_device_mismatch():
    a = good_args()
    rows = a["student"].shape[0]
    with pytest.raises(RuntimeError, match=r"alpha must be on student's device cpu, got meta"):
        ops.dir_loss_bwd.default.redispatch(
            torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), a["student"], a["teacher"],
            a["center"], torch.zeros(2, rows), torch.zeros(2, 4), torch.zeros(rows, device="meta"),
            torch.zeros(2, rows), 4, TS, TT)
