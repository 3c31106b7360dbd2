"""The reference loss against an independent per-image, per-pair computation, its gradients,
the centre EMA and its sync across two gloo ranks."""
import numpy as np
import pytest
import torch

from clever_kernels.reference import loss as ref

from two_ranks import expected_centers, make_rank_inputs, run_two_ranks


def _logits(rng, rows, k, scale=3.0, dtype=torch.float64):
    return (torch.randn(rows, k, generator=rng, dtype=torch.float64) * scale).to(dtype)


def _loop_loss(s1, s2, t1, t2, c1, c2, ncrops, ts, tt, sep_lambd):
    """Per image and per pair with numpy, from the formulas in SPEC.md."""
    s1, s2, t1, t2, c1, c2 = (x.detach().double().numpy() for x in (s1, s2, t1, t2, c1, c2))
    batch = t1.shape[0] // 2

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    dir_terms, dvr_terms = [], []
    for iq in range(2):
        for v in range(ncrops):
            if v == iq:
                continue
            ce, cos = 0.0, 0.0
            for b in range(batch):
                q = softmax((t1[iq * batch + b] - c1.ravel()) / tt)
                logp = np.log(softmax(s1[v * batch + b] / ts))
                ce += -(q * logp).sum()
                p = softmax((t2[iq * batch + b] - c2.ravel()) / tt)
                r = softmax(s2[v * batch + b] / ts)
                cos += (p * r).sum() / (np.linalg.norm(p) * np.linalg.norm(r))
            dir_terms.append(ce / batch)
            dvr_terms.append(abs(cos / batch))
    l_dir, l_dvr = np.mean(dir_terms), np.mean(dvr_terms)
    assert len(dir_terms) == 2 * (ncrops - 1)
    return l_dir + sep_lambd * l_dvr, l_dir, l_dvr


@pytest.mark.parametrize("batch,ncrops,k1,k2", [(1, 2, 5, 5), (3, 4, 17, 9), (2, 10, 33, 64)])
def test_clever_loss_equals_per_pair_loop(rng, batch, ncrops, k1, k2):
    s1, s2 = _logits(rng, ncrops * batch, k1), _logits(rng, ncrops * batch, k2)
    t1, t2 = _logits(rng, 2 * batch, k1), _logits(rng, 2 * batch, k2)
    c1, c2 = _logits(rng, 1, k1, 0.5), _logits(rng, 1, k2, 0.5)
    total, l_dir, l_dvr, bc1, bc2 = ref.clever_loss(s1, s2, t1, t2, c1, c2, ncrops, 0.1, 0.07, 0.7)
    want = _loop_loss(s1, s2, t1, t2, c1, c2, ncrops, 0.1, 0.07, 0.7)
    # atol: where student and teacher are both near one-hot on one index (likely with B = 1 and
    # K = 5) the cross-entropy is a remnant of cancellation, ~1e-8, which both float64 forms
    # hold to only ~1e-9 relative (the exact value differs from each by ~1e-17)
    np.testing.assert_allclose([total.item(), l_dir.item(), l_dvr.item()], want, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(bc1, t1.float().mean(0, keepdim=True))
    torch.testing.assert_close(bc2, t2.float().mean(0, keepdim=True))


def test_dvr_term_with_nearly_uniform_softmaxes_at_full_width(rng):
    """At the authors' default DVR width (K2 = 16384) and mild logits every softmax row is nearly
    uniform, its norm about 1/sqrt(K2) = 0.008: the cosine must still be the plain ratio of
    SPEC.md, with no epsilon in its denominator that binds at such norms (the authors'
    nn.CosineSimilarity has eps = 1e-8)."""
    batch, ncrops, k1, k2 = 1, 3, 5, 16384
    s1, t1, c1 = _logits(rng, ncrops * batch, k1), _logits(rng, 2 * batch, k1), _logits(rng, 1, k1, 0.5)
    s2, t2, c2 = _logits(rng, ncrops * batch, k2, 0.03), _logits(rng, 2 * batch, k2, 0.01), _logits(rng, 1, k2, 0.01)
    assert (s2 / 0.1).softmax(-1).norm(dim=-1).max() < 0.01
    total, l_dir, l_dvr, _, _ = ref.clever_loss(s1, s2, t1, t2, c1, c2, ncrops, 0.1, 0.04, 1.0)
    want = _loop_loss(s1, s2, t1, t2, c1, c2, ncrops, 0.1, 0.04, 1.0)
    np.testing.assert_allclose([total.item(), l_dir.item(), l_dvr.item()], want, rtol=1e-10,
                               err_msg="(total, loss_dir, loss_dvr) against the per-pair formulas")


def test_dino_loss_is_the_dir_term(rng):
    s, t, c = _logits(rng, 12, 21), _logits(rng, 6, 21), _logits(rng, 1, 21)
    loss, _ = ref.dino_loss(s, t, c, 4, 0.1, 0.04)
    _, want, _ = _loop_loss(s, s, t, t, c, c, 4, 0.1, 0.04, 1.0)
    assert loss.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("batch,ncrops,k1,k2", [(1, 2, 6, 4), (2, 3, 7, 11)])
def test_gradcheck_float64(rng, batch, ncrops, k1, k2):
    s1 = _logits(rng, ncrops * batch, k1, 1.0).requires_grad_()
    s2 = _logits(rng, ncrops * batch, k2, 1.0).requires_grad_()
    t1, t2 = _logits(rng, 2 * batch, k1, 1.0), _logits(rng, 2 * batch, k2, 1.0)
    c1, c2 = _logits(rng, 1, k1, 0.3), _logits(rng, 1, k2, 0.3)

    def parts(a, b):
        total, l_dir, l_dvr, _, _ = ref.clever_loss(a, b, t1, t2, c1, c2, ncrops, 0.1, 0.2, 0.5)
        return total, l_dir, l_dvr

    assert torch.autograd.gradcheck(parts, (s1, s2), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_computed_in_float32(rng, dtype):
    """The reference is also the fallback backend: bf16 / fp16 logits give the float32 result of
    the rounded inputs (a bf16 softmax over a wide row would put the DVR term off by tens of %)."""
    s1, s2 = _logits(rng, 6, 4000, 1.0, dtype).requires_grad_(), _logits(rng, 6, 4000, 0.3, dtype).requires_grad_()
    t1, t2 = _logits(rng, 4, 4000, 1.0, dtype), _logits(rng, 4, 4000, 0.3, dtype)
    c1, c2 = torch.zeros(1, 4000), torch.zeros(1, 4000)
    got = ref.clever_loss(s1, s2, t1, t2, c1, c2, 3, 0.1, 0.04, 0.5)
    want = ref.clever_loss(*(x.detach().double() for x in (s1, s2, t1, t2, c1, c2)), 3, 0.1, 0.04, 0.5)
    for g, w in zip(got[:3], want[:3]):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-6)
    got[0].backward()
    assert s1.grad.dtype == dtype and torch.isfinite(s2.grad).all()


def test_teacher_gets_no_gradient(rng):
    s1 = _logits(rng, 6, 5).requires_grad_()
    t1 = _logits(rng, 4, 5).requires_grad_()
    loss, _ = ref.dino_loss(s1, t1, torch.zeros(1, 5, dtype=torch.float64), 3, 0.1, 0.04)
    loss.backward()
    assert t1.grad is None and s1.grad is not None


def test_teacher_temp_schedule():
    sched = ref.teacher_temp_schedule(0.04, 0.07, 30, 100)
    assert len(sched) == 100
    np.testing.assert_allclose(sched[:30], np.linspace(0.04, 0.07, 30))
    assert (sched[30:] == 0.07).all()
    with pytest.raises(ValueError, match="warmup_teacher_temp_epochs"):
        ref.teacher_temp_schedule(0.04, 0.07, 200, 100)
    with pytest.raises(ValueError, match="warmup_teacher_temp must be finite and > 0"):
        ref.teacher_temp_schedule(0.0, 0.07, 5, 100)
    with pytest.raises(ValueError, match="teacher_temp must be finite and > 0"):
        ref.teacher_temp_schedule(0.04, float("inf"), 5, 100)
    # a warm-up over every epoch (DINO allows it): the last epoch reaches teacher_temp
    whole = ref.teacher_temp_schedule(0.04, 0.07, 10, 10)
    assert len(whole) == 10 and whole[0] == 0.04 and whole[-1] == pytest.approx(0.07)
    # without warm-up epochs the warm-up start is unused, as in DINO's schedule
    assert (ref.teacher_temp_schedule(0.0, 0.07, 0, 10) == 0.07).all()


def test_module_center_ema_and_distinct_widths(rng):
    module = ref.CLeVERLossReference(out_dim=9, ncrops=3, warmup_teacher_temp=0.04, teacher_temp=0.04,
                                     warmup_teacher_temp_epochs=0, nepochs=5, dvr_out_dim=4)
    assert module.center.shape == (1, 9) and module.center2.shape == (1, 4)
    t1, t2 = _logits(rng, 4, 9, dtype=torch.float32), _logits(rng, 4, 4, dtype=torch.float32)
    for step in range(2):
        before1, before2 = module.center.clone(), module.center2.clone()
        module(_logits(rng, 6, 9, dtype=torch.float32), _logits(rng, 6, 4, dtype=torch.float32), t1, t2, step)
        torch.testing.assert_close(module.center, 0.9 * before1 + 0.1 * t1.mean(0, keepdim=True))
        torch.testing.assert_close(module.center2, 0.9 * before2 + 0.1 * t2.mean(0, keepdim=True))


@pytest.mark.parametrize("bad,match", [
    (dict(ncrops=1), "ncrops"),
    (dict(student=torch.zeros(7, 5)), "student must have ncrops"),
    (dict(teacher=torch.zeros(3, 5)), "teacher must have 2"),
    (dict(teacher=torch.zeros(4, 6)), "same width"),
    (dict(student=torch.zeros(6, 5, dtype=torch.int64)), "student must be a floating"),
    (dict(center=torch.zeros(1, 4)), r"center must have shape \(1, K\) or \(K,\)"),
    (dict(student=torch.zeros(6)), "student must be 2-D"),
])
def test_bad_inputs_name_the_argument(bad, match):
    args = dict(student=torch.zeros(6, 5), teacher=torch.zeros(4, 5), center=torch.zeros(1, 5), ncrops=3)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        ref.dino_loss(args["student"], args["teacher"], args["center"], args["ncrops"], 0.1, 0.04)


class ReferenceFactory:
    def __call__(self):
        return ref.CLeVERLossReference(11, 3, 0.04, 0.04, 0, 5, dvr_out_dim=6)


def test_center_sync_two_gloo_ranks():
    # unequal per-rank batches: the centre is the mean over all rows, not the mean of rank means
    inputs = make_rank_inputs(3, 2, 2, batch=[2, 1], ncrops=3, k1=11, k2=6)
    got = run_two_ranks(ReferenceFactory(), inputs)
    want1, want2 = expected_centers(inputs, 11, 6)
    for c1, c2, kept in got:
        torch.testing.assert_close(c1, want1)
        torch.testing.assert_close(c2, want2)
        assert kept
