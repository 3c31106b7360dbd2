"""Shared fixtures and the one table of numerical tolerances."""
import contextlib
import os

import pytest
import torch

# Per-dtype (atol, rtol) for fused kernels against the float64 reference. Inputs are rounded
# to the dtype before the reference sees them, so these bound only the kernel's own error:
# float32 accumulates in float32 over K up to ~4k terms; float16 / bfloat16 accumulate in
# float32 too but their gradients are rounded on store (10 and 7 mantissa bits).
TOLERANCES = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


@contextlib.contextmanager
def torch_threads(count):
    """torch's intra-op thread count set to `count` inside the block, restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# Loss ops called directly (per-row statistics and gradients against float64 formulas), by
# dtype of the logits: (rtol, atol) for the float32 statistics, (rtol, atol) for the gradient,
# atol relative to the largest reference value of the tensor.
OP_TOLERANCES = {
    # float32 sums over K terms, stored as float32; the backward rebuilds each softmax from the
    # row's stored float32 offset (maximum and log-sum) in float32 arithmetic.
    torch.float32: ((5e-6, 2e-7), (2e-5, 2e-6)),
    # statistics are float32 by contract and the backward starts from them: float32 bounds.
    torch.float64: ((5e-6, 2e-7), (2e-5, 2e-6)),
    # inputs are exact in float32 and accumulate in it; the gradient is rounded to 11 bits.
    torch.float16: ((5e-6, 2e-7), (2e-3, 1e-5)),
    # as float16, but the gradient keeps 8 significant bits.
    torch.bfloat16: ((5e-6, 2e-7), (1.6e-2, 1e-4)),
}


def tolerance(dtype):
    return TOLERANCES[dtype]


def softmax_offsets(x, temp):
    """The (2, rows) softmax offsets of the loss ops' schemas (csrc/ops.cpp) for rows x as the
    kernels see them: each row's maximum rounded to float32 (0 for a row of -inf), and
    log sum exp((x - max) / temp) relative to that rounded maximum, in float64."""
    m = x.max(dim=-1).values.float()
    m = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    return torch.stack([m.double(), ((x.double() - m.double()[:, None]) / temp).logsumexp(-1)])


@pytest.fixture
def rng():
    """A freshly seeded generator per test; the seed is printed, so a failure shows it
    (CLEVER_TEST_SEED=N reruns with it)."""
    seed = int(os.environ.get("CLEVER_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"CLEVER_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)


def minus_inf_against_positive_teacher(student, teacher, tile):
    """-inf student logits at columns where the teacher's probability is positive but far below
    float32's range: the cross-entropy is +inf there (float64 reference). Image 1, view 0: the
    teacher weight underflows inside its tile; image 0, view 2: it is positive inside its tile,
    and a later tile's far larger teacher maximum rescales the tile by a factor that underflows.
    Image 0, view 1 also meets a teacher probability of exactly 0 (both teacher rows -inf), which
    adds 0 (0 log 0), and so does image 1, view 2 over the whole of columns tile..2 tile (whole
    tiles or blocks of -inf whose offsets must not turn the merge into NaN). Returns the
    (iq, student row) pairs that must be +inf, and a copy of student for the float64 reference,
    whose -q * log r is NaN at 0 * -inf: there the -inf is -1e30, whose probability is 0 all the
    same."""
    batch = teacher.shape[0] // 2
    student[1, 7] = float("-inf")  # view 0 of image 1
    teacher[1, 7] = -5.0  # (-5 - max) / 0.04 < -125
    student[2 * batch, 2] = float("-inf")  # view 2 of image 0
    teacher[0, tile + 3] = 8.0  # rescales earlier tiles by < exp(-170)
    teacher[batch, tile + 3] = 8.0
    for_reference = student.clone()
    student[batch, 11] = float("-inf")  # view 1 of image 0
    for_reference[batch, 11] = -1e30
    teacher[0, 11] = teacher[batch, 11] = float("-inf")
    student[2 * batch + 1, tile:2 * tile] = float("-inf")  # view 2 of image 1
    for_reference[2 * batch + 1, tile:2 * tile] = -1e30
    teacher[1, tile:2 * tile] = teacher[batch + 1, tile:2 * tile] = float("-inf")
    return [(0, 1), (1, 1), (0, 2 * batch), (1, 2 * batch)], for_reference


def assert_inf_exactly_at(ce, ref_ce, pairs):
    """ce and the reference's ref_ce are +inf at the (iq, row) pairs and nowhere else; returns
    the mask of those pairs, for comparing the finite rest."""
    want_inf = torch.zeros_like(ce, dtype=torch.bool)
    for iq, row in pairs:
        want_inf[iq, row] = True
    assert torch.equal(ref_ce == float("inf"), want_inf)
    assert torch.equal(ce == float("inf"), want_inf)
    return want_inf


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory):
    """A tiny ImageFolder of digits (4 classes of 10, a third of them not square), read-only,
    shared by the trainer tests."""
    pytest.importorskip("sklearn")
    from train_helpers import make_image_folder
    return make_image_folder(tmp_path_factory.mktemp("digits") / "tree", per_class=10)
