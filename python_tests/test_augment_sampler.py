"""The counter-based generator, the presets and the vectorised parameter sampler."""
import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from clever_kernels import _backend
from clever_kernels.augment import (COLUMNS, AugConfig, AugParams, MultiCrop, Op, ViewConfig, image_sizes,
                                    make_config, sample_params, sample_view)
from clever_kernels.augment import rng as ck_rng
from clever_kernels.augment import _fused, sampler
from clever_kernels.augment.params import TENSOR_FIELDS
from clever_kernels.augment.sampler import CROP_LEFT_DRAW, CROP_TOP_DRAW, permutation_from_index

N_STAT = 20000
# Critical values at alpha = 1e-4 (the draws are deterministic, so this is about a sound
# threshold, not flakiness): chi-square with 23 dof (scipy.stats.chi2.ppf(0.9999, 23)) and the
# asymptotic one-sample Kolmogorov-Smirnov bound sqrt(-ln(alpha / 2) / (2 n)).
CHI2_23_CRIT = 57.07
KS_CRIT = math.sqrt(-math.log(1e-4 / 2) / (2 * N_STAT))


def np_lowbias32(x):
    x = np.asarray(x, dtype=np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        x = x ^ (x >> np.uint32(16))
    return x


def np_hash32(*words):
    h = np.uint32(0x9E3779B9)
    for w in words:
        h = np_lowbias32(h ^ (np.asarray(w, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32))
    return h


def ks_uniform(samples, lo, hi):
    x = np.sort((np.asarray(samples, dtype=np.float64) - lo) / (hi - lo))
    n = len(x)
    upper = np.arange(1, n + 1) / n - x
    lower = x - np.arange(n) / n
    return max(upper.max(), lower.max())


def stat_params(preset="caug+", n=N_STAT, sizes=(427, 640), **kw):
    return sample_params(torch.tensor([sizes] * n), preset, n_local=1, seed=7, **kw)


# ----------------------------------------------------------------------------- generator
def test_hash_matches_uint32_arithmetic():
    words = np.random.default_rng(0).integers(-2**40, 2**40, size=(6, 1000))
    got = ck_rng.hash32(*(torch.from_numpy(w) for w in words))
    assert np.array_equal(got.numpy(), np_hash32(*words).astype(np.int64))
    assert ck_rng.hash32(1, 2, 3) == int(np_hash32(1, 2, 3))


def test_hash_bits_key_layout():
    """seed, step and ids enter as (lo, hi) 32-bit halves, then view, op, draw."""
    seed, step, view, op, draw = -5, 2**33 + 9, 3, int(Op.JITTER), 4
    ids = torch.tensor([0, 1, 2**40 + 7, -1])
    got = ck_rng.hash_bits(seed, step, ids, view, op, draw)
    lo_hi = lambda v: (np.int64(v) & 0xFFFFFFFF, (np.int64(v) >> 32) & 0xFFFFFFFF)
    want = np_hash32(*lo_hi(seed), *lo_hi(step), ids.numpy() & 0xFFFFFFFF,
                     (ids.numpy() >> 32) & 0xFFFFFFFF, view, op, draw)
    assert np.array_equal(got.numpy(), want.astype(np.int64))


def test_uniform_is_24_bit_and_in_range():
    u = ck_rng.uniform(0, 0, torch.arange(100000), 0, 0, 0)
    assert u.dtype == torch.float32
    assert 0.0 <= u.min() and u.max() < 1.0
    scaled = u.double() * 2**24
    assert torch.equal(scaled, scaled.round())
    bits = ck_rng.hash_bits(0, 0, torch.arange(100000), 0, 0, 0)
    assert torch.equal(scaled.long(), bits >> 8)
    assert ks_uniform(u.numpy()[:N_STAT], 0.0, 1.0) < KS_CRIT


def test_hash_uniform_is_two_word_hash():
    key = torch.tensor([0, 1, 2**32 - 1])[:, None]
    counter = torch.arange(50)[None, :]
    want = (np_hash32(key.numpy(), counter.numpy()) >> 8).astype(np.float64) * 2.0**-24
    assert np.array_equal(ck_rng.hash_uniform(key, counter).double().numpy(), want)


def test_to_index_is_uniform_and_bounded():
    bits = ck_rng.hash_bits(3, 0, torch.arange(N_STAT), 0, 0, 0)
    k = ck_rng.to_index(bits, 24)
    assert k.min() == 0 and k.max() == 23
    counts = torch.bincount(k, minlength=24).double()
    expected = N_STAT / 24
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_23_CRIT


def test_permutation_from_index_is_lexicographic():
    got = permutation_from_index(torch.arange(24))
    assert got.tolist() == [list(p) for p in itertools.permutations(range(4))]


# ----------------------------------------------------------------------------- presets
def test_presets_follow_the_table():
    for name in ("baug", "caug", "caug+"):
        cfg = make_config(name)
        g1, g2, loc = cfg.global1, cfg.global2, cfg.local
        assert (g1.size, g2.size, loc.size) == (224, 224, 96)
        assert g1.scale == g2.scale == (0.4, 1.0) and loc.scale == (0.05, 0.4)
        for v in (g1, g2, loc):
            assert v.ratio == (3 / 4, 4 / 3) and v.flip_p == 0.5 and v.jitter_p == 0.8
            assert v.brightness == (0.6, 1.4) and v.contrast == (0.6, 1.4)
            assert v.saturation == (0.8, 1.2) and v.hue == (-0.1, 0.1)
            assert v.grayscale_p == 0.2 and v.blur_sigma == (0.1, 2.0) and v.degrees == (-90, 90)
            assert v.rotation_p == (0.0 if name == "baug" else 1.0)
            assert v.elastic_p == (0.5 if name == "caug+" else 0.0)
            assert (v.elastic_alpha, v.elastic_sigma) == (100.0, 5.0)
        assert (g1.blur_p, g2.blur_p, loc.blur_p) == (1.0, 0.1, 0.5)
        assert (g1.solarize_p, g2.solarize_p, loc.solarize_p) == (0.0, 0.2, 0.0)
        assert cfg.n_local == 8 and cfg.mean == (0.485, 0.456, 0.406)
        assert cfg.std == (0.229, 0.224, 0.225)
        assert len(cfg.views()) == 10


def test_overrides_and_precedence():
    cfg = make_config("baug", flip_p=0.1, global_flip_p=0.2, global2_flip_p=0.3, local_size=32,
                      brightness=(0.9, 1.1), hue=0.2, n_local=3)
    assert [v.flip_p for v in cfg.views()] == [0.2, 0.3, 0.1, 0.1, 0.1]
    assert cfg.local.size == 32 and cfg.global1.size == 224
    assert cfg.global1.brightness == (0.9, 1.1) and cfg.local.hue == (-0.2, 0.2)
    again = make_config(cfg, solarize_p=0.5)
    assert again.global1.solarize_p == 0.5 and again.global2.flip_p == 0.3


@pytest.mark.parametrize("kwargs, match", [
    (dict(flip_p=1.5), "flip_p"),
    (dict(global2_solarize_p=-0.1), "solarize_p"),
    (dict(blur_p=float("nan")), "blur_p"),
    (dict(local_size=0), "size"),
    (dict(global_scale=(0.8, 0.4)), "scale"),
    (dict(local_scale=(0.0, 0.4)), "scale"),
    (dict(global_scale=(0.4, 1.5)), r"scale must be <= 1.0, got \(0.4, 1.5\)"),
    (dict(ratio=(-1.0, 2.0)), "ratio"),
    (dict(degrees=(90, -90)), "degrees"),
    (dict(brightness=-0.1), "brightness"),
    (dict(hue=0.7), "hue"),
    (dict(blur_sigma=(0.0, 2.0)), "blur_sigma"),
    (dict(blur_sigma=(0.1, 1e4)), "blur_sigma"),
    (dict(elastic_sigma=float("inf")), "elastic_sigma"),
    (dict(elastic_sigma=1e4), "elastic_sigma"),
    (dict(elastic_alpha=-1.0), "elastic_alpha"),
    (dict(n_local=-1), "n_local"),
    (dict(std=(0.2, 0.0, 0.2)), "std"),
    (dict(mean=(0.5, 0.5)), "mean"),
    # ranges that float32 draws would turn into inf, and sizes no renderer takes
    (dict(degrees=(-3e38, 3e38)), "degrees must lie within"),
    (dict(brightness=1e39), "brightness must be a strength"),
    (dict(contrast=(0.0, 3.5e38)), "contrast must lie within"),
    (dict(elastic_alpha=1e39), "elastic_alpha"),
    (dict(global_size=5000), r"size must be an int in \[1, 4080\]"),
])
def test_bad_config_raises_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config("caug", **kwargs)


def test_unknown_preset_and_override():
    with pytest.raises(ValueError, match="preset"):
        make_config("daug")
    with pytest.raises(TypeError, match="flip_prob"):
        make_config("baug", flip_prob=0.5)
    with pytest.raises(ValueError, match="flip_p"):
        ViewConfig(flip_p=2)
    with pytest.raises(TypeError, match="flip_p must be a Python or numpy number"):
        make_config("baug", flip_p=torch.tensor(0.5))
    assert make_config("baug", flip_p=np.float32(0.25), brightness=np.float64(0.3)).global1.flip_p == 0.25


# ----------------------------------------------------------------------------- sampling statistics
def test_flip_rate_and_probabilities():
    params = stat_params("caug+")
    sigma = lambda p: 4 * math.sqrt(p * (1 - p) / N_STAT)
    for view, blur_p, solarize_p in ((0, 1.0, 0.0), (1, 0.1, 0.2), (2, 0.5, 0.0)):
        p = params[view]
        for flag, rate in ((p.flip, 0.5), (p.elastic, 0.5), (p.jitter, 0.8), (p.grayscale, 0.2),
                           (p.blur_sigma > 0, blur_p), (p.solarize, solarize_p)):
            assert abs(flag.double().mean().item() - rate) <= sigma(rate) + 1e-12
    baug = stat_params("baug", n=2000)
    assert all((p.angle == 0).all() and not p.elastic.any() for p in baug)


def test_angles_uniform_by_ks():
    angles = stat_params("caug")[0].angle
    assert angles.min() >= -90 and angles.max() < 90
    assert ks_uniform(angles.numpy(), -90.0, 90.0) < KS_CRIT
    narrow = stat_params("caug", n=2000, degrees=(-10, 30))[2].angle
    assert narrow.min() >= -10 and narrow.max() < 30 and ks_uniform(narrow.numpy(), -10, 30) < 0.05


def test_jitter_factors_and_order():
    p = stat_params("baug")[1]
    on = p.jitter
    for name, (lo, hi) in (("brightness", (0.6, 1.4)), ("contrast", (0.6, 1.4)),
                           ("saturation", (0.8, 1.2)), ("hue", (-0.1, 0.1))):
        values = getattr(p, name)[on]
        assert values.min() >= lo and values.max() < hi
        assert ks_uniform(values.numpy(), lo, hi) < 2 * KS_CRIT
        assert (getattr(p, name)[~on] == (0.0 if name == "hue" else 1.0)).all()
    orders = p.order[on]
    assert torch.equal(orders.sort(1).values, torch.arange(4).expand_as(orders))
    codes = orders[:, 0] * 64 + orders[:, 1] * 16 + orders[:, 2] * 4 + orders[:, 3]
    counts = torch.bincount(codes, minlength=256)
    counts = counts[counts > 0].double()
    assert len(counts) == 24
    expected = on.sum().item() / 24
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_23_CRIT
    assert (p.order[~on] == torch.arange(4)).all()


def test_blur_sigma_range_and_neutral_values():
    params = stat_params("caug+")
    local = params[2]
    sig = local.blur_sigma[local.blur_sigma > 0]
    assert sig.min() >= 0.1 and sig.max() < 2.0 and ks_uniform(sig.numpy(), 0.1, 2.0) < 2 * KS_CRIT
    for p in params:
        assert (p.elastic_seed[~p.elastic] == 0).all()
        assert p.elastic_seed.min() >= 0 and p.elastic_seed.max() < 2**32
        assert (p.elastic_alpha, p.elastic_sigma) == (100.0, 5.0)


@pytest.mark.parametrize("sizes", [(427, 640), (640, 427), (50, 50), (12, 900), (3, 2)])
def test_crop_boxes_inside_and_within_ranges(sizes):
    H, W = sizes
    params = stat_params("baug", n=4000, sizes=sizes)
    for p, (lo, hi) in ((params[0], (0.4, 1.0)), (params[2], (0.05, 0.4))):
        top, left, h, w = p.top, p.left, p.height, p.width
        assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
        assert (top + h <= H).all() and (left + w <= W).all()
        if min(sizes) >= 50:
            # Rounding w and h to pixels moves area and ratio by at most half a pixel per side.
            slack_area = 0.5 * (h + w + 0.5).double() / (h * w).double()
            frac = (h * w).double() / (H * W)
            fallback = (top == (H - h) // 2) & (left == (W - w) // 2) & ((h == H) | (w == W))
            ok = ~fallback
            assert (frac[ok] >= lo * (1 - slack_area[ok]) - 1e-9).all()
            assert (frac[ok] <= hi * (1 + slack_area[ok]) + 1e-9).all()
            ratio = w.double() / h.double()
            slack_ratio = 0.5 / h.double() + 0.5 / w.double() + 1e-3
            assert (ratio[ok] >= 3 / 4 * (1 - slack_ratio[ok])).all()
            assert (ratio[ok] <= 4 / 3 * (1 + slack_ratio[ok])).all()


def torchvision_crop(H, W, scale, ratio, draw):
    """torchvision's RandomResizedCrop.get_params written per sample in Python floats, with the
    random numbers replaced by our draws (draw(i) is the i-th uniform, draw_int(i, n) an int)."""
    u, randint = draw
    area = H * W
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for a in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u(2 * a))
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u(2 * a + 1))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= W and 0 < h <= H:
            return randint(CROP_TOP_DRAW, H - h + 1), randint(CROP_LEFT_DRAW, W - w + 1), h, w
    in_ratio = W / H
    # max(1, ...) is ours: torchvision's fallback can round a thin image's short side to 0
    if in_ratio < min(ratio):
        w, h = W, max(1, int(round(W / min(ratio))))
    elif in_ratio > max(ratio):
        h, w = H, max(1, int(round(H * max(ratio))))
    else:
        w, h = W, H
    return (H - h) // 2, (W - w) // 2, h, w


@pytest.mark.parametrize("sizes, ratio", [((1, 40), (0.3, 0.4)), ((40, 1), (2.5, 3.0)), ((2, 900), (0.2, 0.24))])
def test_fallback_crop_keeps_a_pixel_on_thin_images(sizes, ratio):
    """The centre-crop fallback's short side rounds to 0 on a thin image with an extreme ratio
    (1 x 40 at ratios up to 0.4: round(0.4) = 0); it keeps one pixel, and the views render."""
    H, W = sizes
    params = sample_params(torch.tensor([sizes] * 64), "baug", ratio=ratio, n_local=1, global_size=8,
                           local_size=4)
    for p in params:
        assert (p.height >= 1).all() and (p.width >= 1).all()
        assert (p.top + p.height <= H).all() and (p.left + p.width <= W).all()
    image = [torch.zeros(3, H, W, dtype=torch.uint8)]
    views, _ = MultiCrop("baug", ratio=ratio, n_local=1, global_size=8, local_size=4)(image)
    assert [tuple(v.shape) for v in views] == [(1, 3, 8, 8)] * 2 + [(1, 3, 4, 4)]


def test_crop_matches_scalar_torchvision_algorithm():
    gen = torch.Generator().manual_seed(0)
    n = 600
    heights = torch.randint(1, 400, (n,), generator=gen)
    widths = torch.randint(1, 400, (n,), generator=gen)
    widths[::5] = heights[::5] * 7  # very wide images exercise the centre-crop fallback
    sizes = torch.stack([heights, widths], 1)
    ids = torch.randint(-2**40, 2**40, (n,), generator=gen)
    scale, ratio = (0.3, 0.9), (0.5, 2.0)
    p = sample_view(sizes, ViewConfig(scale=scale, ratio=ratio), view=4, seed=11, step=3, ids=ids)
    fallbacks = 0
    for b in range(n):
        bits = lambda d, b=b: int(ck_rng.hash_bits(11, 3, ids[b:b + 1], 4, int(Op.CROP), d)[0])
        u = lambda d: (bits(d) >> 8) * 2.0**-24
        randint = lambda d, m: ((bits(d) >> 8) * m) >> 24
        H, W = int(heights[b]), int(widths[b])
        want = torchvision_crop(H, W, scale, ratio, (u, randint))
        got = (int(p.top[b]), int(p.left[b]), int(p.height[b]), int(p.width[b]))
        assert got == want, (b, H, W)
        fallbacks += got[0] == (H - got[2]) // 2 and got[2:] in ((H, int(round(H * 2.0))), (H, W))
    assert fallbacks > 0


def _check_layout(p, cfg, view, seed, step, ids, sizes):
    """Every field of `p` recomputed from rng.uniform with the op ids and draw indices of the
    sampler's docstring and the probabilities and ranges of `cfg`; crop boxes by the scalar
    torchvision algorithm for a sample in eight."""
    u = lambda op, draw: ck_rng.uniform(seed, step, ids, view, int(op), draw)
    bits = lambda op, draw: ck_rng.hash_bits(seed, step, ids, view, int(op), draw)
    within = lambda op, draw, lo, hi: lo + (hi - lo) * u(op, draw)
    assert (p.size, p.view, p.elastic_alpha, p.elastic_sigma) == (cfg.size, view, cfg.elastic_alpha,
                                                                  cfg.elastic_sigma)
    assert torch.equal(p.flip, u(Op.FLIP, 0) < cfg.flip_p)
    rotate = u(Op.ROTATE, 0) < cfg.rotation_p
    assert torch.equal(p.angle, torch.where(rotate, within(Op.ROTATE, 1, *cfg.degrees), 0.0))
    assert torch.equal(p.elastic, u(Op.ELASTIC, 0) < cfg.elastic_p)
    assert torch.equal(p.elastic_seed, torch.where(p.elastic, bits(Op.ELASTIC, 1), 0))
    jitter = u(Op.JITTER, 0) < cfg.jitter_p
    assert torch.equal(p.jitter, jitter)
    for draw, name in ((1, "brightness"), (2, "contrast"), (3, "saturation"), (4, "hue")):
        want = torch.where(jitter, within(Op.JITTER, draw, *getattr(cfg, name)), 0.0 if name == "hue" else 1.0)
        assert torch.equal(getattr(p, name), want), name
    k = ((bits(Op.JITTER, 5) >> 8) * 24) >> 24
    perms = torch.tensor(list(itertools.permutations(range(4))))
    assert torch.equal(p.order[jitter], perms[k][jitter])
    assert (p.order[~jitter] == torch.arange(4)).all()
    assert torch.equal(p.grayscale, u(Op.GRAYSCALE, 0) < cfg.grayscale_p)
    blur = u(Op.BLUR, 0) < cfg.blur_p
    assert torch.equal(p.blur_sigma, torch.where(blur, within(Op.BLUR, 1, *cfg.blur_sigma), 0.0))
    assert torch.equal(p.solarize, u(Op.SOLARIZE, 0) < cfg.solarize_p)
    for b in range(0, len(ids), 8):
        crop_bits = lambda d, b=b: int(ck_rng.hash_bits(seed, step, ids[b:b + 1], view, int(Op.CROP), d)[0])
        unit = lambda d: (crop_bits(d) >> 8) * 2.0**-24
        randint = lambda d, m: ((crop_bits(d) >> 8) * m) >> 24
        want = torchvision_crop(int(sizes[b, 0]), int(sizes[b, 1]), cfg.scale, cfg.ratio, (unit, randint))
        assert (int(p.top[b]), int(p.left[b]), int(p.height[b]), int(p.width[b])) == want, b


def test_draw_layout_as_documented():
    """One view: the layout is part of the contract."""
    ids = torch.arange(-3, 997) * 7919
    cfg = ViewConfig(rotation_p=0.7, elastic_p=0.5, solarize_p=0.3, blur_p=0.6, degrees=(-20, 50))
    sizes = torch.tensor([[50, 60]] * len(ids))
    _check_layout(sample_view(sizes, cfg, 3, seed=21, step=5, ids=ids), cfg, 3, 21, 5, ids, sizes)
    assert [int(op) for op in Op] == list(range(8))


def test_draw_layout_of_every_view_drawn_together():
    """sample_params draws all views in one pass over (view, batch, draw) tables with per-view
    probabilities and ranges as tensors; every view must still be its own documented draw."""
    gen = torch.Generator().manual_seed(4)
    sizes = torch.stack([torch.randint(1, 600, (37,), generator=gen), torch.randint(1, 600, (37,), generator=gen)], 1)
    ids = torch.randint(-2**40, 2**40, (37,), generator=gen)
    config = make_config("caug+", n_local=3, rotation_p=0.6, elastic_p=0.4, degrees=(-31.7, 12.9), hue=0.27,
                         local_blur_p=0.33, local_blur_sigma=(0.7, 4.1), global2_solarize_p=0.61, ratio=(0.3, 3.1),
                         global1_flip_p=1 / 3, local_scale=(0.02, 0.3), local_jitter_p=0.55)
    views = sample_params(sizes, config, seed=-5, step=9, ids=ids)
    assert len(views) == 5
    for view, (p, cfg) in enumerate(zip(views, config.views())):
        _check_layout(p, cfg, view, -5, 9, ids, sizes)


# ----------------------------------------------------------------------------- keys and determinism
def test_reproducible_and_keyed():
    sizes = torch.tensor([[300, 400]] * 16)
    table = lambda **kw: torch.stack([p.to_tensor(torch.float64) for p in
                                      sample_params(sizes, "caug+", n_local=2, **kw)])
    base = table(seed=1, step=2)
    assert torch.equal(base, table(seed=1, step=2))
    assert not torch.equal(base, table(seed=2, step=2))
    assert not torch.equal(base, table(seed=1, step=3))
    # Views with the same config still draw differently (locals 2 and 3).
    assert not torch.equal(base[2], base[3])
    # Every random column differs between seeds for most samples.
    other = table(seed=2, step=2)
    for col in ("top", "angle", "elastic_seed", "brightness"):
        i = COLUMNS.index(col)
        assert (base[..., i] != other[..., i]).double().mean() > 0.5


def test_sample_independent_of_batch():
    big = sample_params(torch.tensor([[200, 300]] * 64), "caug+", n_local=2, seed=5, step=9)
    for b in (0, 17, 63):
        alone = sample_params(torch.tensor([[200, 300]]), "caug+", n_local=2, seed=5, step=9,
                              ids=torch.tensor([b]))
        for v in range(4):
            assert torch.equal(alone[v].to_tensor(torch.float64), big[v].index(b).to_tensor(torch.float64))
    shuffled = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    again = sample_params(torch.tensor([[200, 300]] * 64), "caug+", n_local=2, seed=5, step=9,
                          ids=shuffled)
    for v in range(4):
        assert torch.equal(again[v].to_tensor(torch.float64), big[v].index(shuffled).to_tensor(torch.float64))
    listed = sample_params(torch.tensor([[200, 300]] * 3), "caug+", n_local=2, seed=5, step=9,
                           ids=[63, 0, 17])
    assert torch.equal(listed[1].to_tensor(), big[1].index([63, 0, 17]).to_tensor())


def test_per_sample_sizes():
    imgs = [torch.zeros(3, 40, 90, dtype=torch.uint8), torch.zeros(1, 300, 20, dtype=torch.uint8),
            torch.zeros(3, 64, 64, dtype=torch.uint8)]
    sizes = image_sizes(imgs)
    assert sizes.tolist() == [[40, 90], [300, 20], [64, 64]]
    for params in (sample_params(imgs, "caug", seed=s) for s in range(30)):
        for p in params:
            assert ((p.top + p.height) <= sizes[:, 0]).all() and ((p.left + p.width) <= sizes[:, 1]).all()
    from_pairs = sample_params([(40, 90), (300, 20), (64, 64)], "caug", seed=4)
    from_imgs = sample_params(imgs, "caug", seed=4)
    assert all(torch.equal(a.to_tensor(), b.to_tensor()) for a, b in zip(from_pairs, from_imgs))
    batch = sample_params(torch.zeros(5, 3, 64, 64, dtype=torch.uint8), "baug", seed=4)
    as_sizes = sample_params(torch.tensor([[64, 64]] * 5), "baug", seed=4)
    assert all(torch.equal(a.to_tensor(), b.to_tensor()) for a, b in zip(batch, as_sizes))


def test_no_host_sync(monkeypatch):
    """On the meta device nothing can be read back, so any data-dependent step would fail;
    on the CPU, reading a value back to Python is trapped."""
    meta = sample_params(torch.zeros(8, 2, dtype=torch.int64, device="meta"), "caug+", n_local=0, seed=1,
                         ids=torch.zeros(8, dtype=torch.int64, device="meta"))
    assert all(p.device.type == "meta" and p.batch_size == 8 for p in meta)

    def trap(*args, **kwargs):
        raise AssertionError("host sync in sample_params")

    sizes = torch.tensor([[100, 120]] * 8)
    # the one read-back allowed: the values of CPU size tensors (the meta call above shows that
    # sizes elsewhere are not read)
    monkeypatch.setattr(sampler, "_check_size_values", lambda *args: None)
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, trap)
    params = sample_params(sizes, "caug+", seed=torch.tensor(3), step=torch.tensor(4))
    monkeypatch.undo()
    want = sample_params(sizes, "caug+", seed=3, step=4)
    assert all(torch.equal(a.to_tensor(), b.to_tensor()) for a, b in zip(params, want))


class _CountAtenCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _aten_calls(fn):
    with _CountAtenCalls() as count:
        fn()
    return count.calls


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_views_are_drawn_together_in_a_fixed_number_of_ops(backend):
    """A draw's ATen calls (one GPU launch each, but for views and slices) do not grow with the
    batch, and ten views cost less than twice one view: a loop over samples, or over views,
    would show here. With the sample_views op, a draw is that op, the key's fill and one unbind
    per field, whatever the number of views."""
    if backend == "fused" and not _backend.kernel_available("sample_views", torch.device("cpu")):
        pytest.skip("clever_kernels._C is not built")
    views = make_config("caug+", n_local=8).views()
    calls = {}
    for batch in (1, 64):
        sizes = torch.randint(40, 500, (batch, 2), dtype=torch.int64, generator=torch.Generator().manual_seed(batch))
        for drawn in (views, views[:1]):  # the recipe's constants are copied on a first call
            sampler.sample_views(sizes, drawn, backend=backend)
        calls[batch] = _aten_calls(lambda: sampler.sample_views(sizes, views, backend=backend))
        one_view = _aten_calls(lambda: sampler.sample_views(sizes, views[:1], backend=backend))
        view_by_view = _aten_calls(lambda: [sample_view(sizes, v, j, backend=backend) for j, v in enumerate(views)])
        assert calls[batch] < 2 * one_view, (calls[batch], one_view)
        assert view_by_view > 5 * calls[batch], (view_by_view, calls[batch])
        if backend == "fused":
            # the sizes' check (CPU tensors only: lt, any, item), the default ids, the key, the op;
            # one unbind per output table and one per field
            assert calls[batch] <= 3 + 3 + 3 + len(TENSOR_FIELDS), calls[batch]
    assert calls[1] == calls[64], calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_draws_on_cuda():
    sizes = torch.randint(20, 500, (256, 2), generator=torch.Generator().manual_seed(1))
    cpu = sample_params(sizes, "caug+", seed=3, step=8)
    # the copy of the sizes, and the sampler's per-config constants (copied once per config),
    # are blocking host-to-device copies, which sync debug mode counts: made before it is on
    gpu_sizes = sizes.cuda()
    sample_params(gpu_sizes, "caug+", seed=0, step=0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu = sample_params(gpu_sizes, "caug+", seed=3, step=8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        assert torch.equal(a.to_tensor(torch.float64), b.to_tensor(torch.float64).cpu())
    # the op's CUDA kernel against its definition on the same device (CUDA's exp in both)
    gpu_reference = sample_params(gpu_sizes, "caug+", seed=3, step=8, backend="reference")
    assert all(a == b for a, b in zip(gpu, gpu_reference))


# ----------------------------------------------------------------------------- the sample_views op
needs_op = pytest.mark.skipif(not _backend.kernel_available("sample_views", torch.device("cpu")),
                              reason="clever_kernels._C is not built")


def _random_recipe(gen):
    """A CAug+ recipe with every probability and range drawn, so that each draw's arithmetic
    meets values other than the presets'."""
    u = lambda: torch.rand((), generator=gen).item()
    lo_hi = lambda lo, hi: tuple(sorted((lo + (hi - lo) * u(), lo + (hi - lo) * u())))
    return make_config(
        "caug+", n_local=int(torch.randint(0, 6, (), generator=gen)), flip_p=u(), rotation_p=u(), elastic_p=u(),
        jitter_p=u(), grayscale_p=u(), global_blur_p=u(), local_blur_p=u(), global2_solarize_p=u(),
        degrees=lo_hi(-180, 180), brightness=lo_hi(0, 3), contrast=lo_hi(0, 3), saturation=lo_hi(0, 3),
        hue=lo_hi(-0.5, 0.5), blur_sigma=lo_hi(0.01, 9), ratio=lo_hi(0.05, 20), global_scale=lo_hi(0.01, 1),
        local_scale=lo_hi(0.001, 1))


@needs_op
@pytest.mark.parametrize("case", range(12))
def test_sample_views_op_matches_tensor_ops(case):
    """The op draws every field bit for bit as the tensor ops do: random recipes, image sizes
    from 1 pixel wide to 2^20 (the crop's fallback included), ids, seeds and steps over the
    whole int64 range, as ints and as tensors, views from an offset."""
    gen = torch.Generator().manual_seed(1000 + case)
    batch = int(torch.randint(1, 300, (), generator=gen))
    sides = [torch.randint(1, 700, (batch,), generator=gen) for _ in range(2)]
    thin = torch.rand(batch, generator=gen) < 0.15
    sides[case % 2] = torch.where(thin, torch.randint(1, 4, (batch,), generator=gen), sides[case % 2])
    if case == 11:
        sides[0][0], sides[1][0] = 2**20, 2**20 - 1
    sizes = torch.stack(sides, 1)
    ids = torch.randint(ck_rng.INT64_MIN, ck_rng.INT64_MAX, (batch,), generator=gen)
    seed, step = (int(torch.randint(ck_rng.INT64_MIN, ck_rng.INT64_MAX, (), generator=gen)) for _ in range(2))
    if case % 3 == 2:
        seed, step = torch.tensor(seed), torch.tensor(step)
    views = _random_recipe(gen).views()
    first_view = int(torch.randint(0, 5, (), generator=gen))
    k = sampler._view_constants(tuple(views), sizes.device)
    want, no_tables = sampler._draw_with_tensor_ops(sizes, ids, seed, step, first_view, k)
    got, tables = sampler._draw_with_kernel(sizes, ids, seed, step, first_view, k)
    assert no_tables is None
    assert got.keys() == want.keys() == set(TENSOR_FIELDS)
    for name in TENSOR_FIELDS:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert torch.equal(got[name], want[name]), (name, int((got[name] != want[name]).sum()))
    # the renderer's tables written beside them hold what param_tables builds from the records
    records = sampler.sample_views(sizes, views, first_view, seed, step, ids, backend="reference")
    for got_table, want_table in zip(tables, _fused.param_tables(records)):
        assert got_table.dtype == want_table.dtype and torch.equal(got_table, want_table)


@needs_op
@pytest.mark.parametrize("batch, n_local", [(1, 0), (61, 8), (300, 3)])
def test_sample_views_cuda_kernel_emulated(batch, n_local):
    """The CUDA kernel, run on the CPU (python_tests/cuda_emulation.py), writes every element as
    the CPU op does: row counts below, at and above a block, on poisoned outputs."""
    import cuda_emulation
    gen = torch.Generator().manual_seed(batch)
    sizes = torch.randint(1, 500, (batch, 2), generator=gen)
    ids = torch.randint(-2**40, 2**40, (batch,), generator=gen)
    views = make_config("caug+", n_local=n_local, global_blur_p=0.5, elastic_p=0.5).views()
    args = (sizes, ids, torch.tensor(12345), 1, sampler._view_constants(tuple(views), torch.device("cpu")).packed)
    for got, want in zip(cuda_emulation.ops().sample_views(*args), torch.ops.clever_kernels.sample_views(*args)):
        assert got.dtype == want.dtype and torch.equal(got, want)


@needs_op
def test_crop_exp_is_the_same_on_every_backend():
    """A fixed ratio whose exp glibc and PyTorch's CPU exp round apart, where sqrt(area * aspect)
    lies within an ulp of a half-integer (a libm exp drew width 11 where torch.exp drew 10): the
    op and the tensor ops both take portable_exp, and draw the same box."""
    ratio, scale = 2.718724, 0.012672534983323061
    cfg = make_config("baug", n_local=0, global_ratio=(ratio, ratio), global_scale=(scale, scale))
    sizes = torch.tensor([[40, 80]] * 3)
    fused, reference = (sample_params(sizes, cfg, backend=b)[1] for b in ("fused", "reference"))
    assert fused == reference
    assert fused.width.tolist() in ([10] * 3, [11] * 3)


def test_portable_exp_within_an_ulp():
    x = torch.cat([torch.linspace(-700, 700, 20001, dtype=torch.float64),
                   torch.randn(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 3,
                   torch.tensor([0.0, -0.0, math.log(0.75), math.log(4 / 3), 1e-300, -1e-300])])
    got = sampler.portable_exp(x)
    want = [math.exp(v) for v in x.tolist()]
    ulps = [abs(g - w) / math.ulp(w) for g, w in zip(got.tolist(), want)]
    assert max(ulps) <= 1.5, max(ulps)
    tiny = sampler.portable_exp(torch.tensor([-744.4, -740.0, -709.0], dtype=torch.float64))
    assert tiny.tolist() == pytest.approx([math.exp(-744.4), math.exp(-740.0), math.exp(-709.0)], rel=1e-3)


@needs_op
def test_portable_exp_is_the_kernels():
    """The kernels' portable_exp (sample_draws.h, compiled as the CPU op is) gives the tensor
    ops' bits on every input of the crop's range and beyond."""
    import cuda_emulation
    gen = torch.Generator().manual_seed(11)
    x = torch.cat([torch.linspace(-745, 709, 100001, dtype=torch.float64),
                   (torch.rand(100000, generator=gen, dtype=torch.float64) - 0.5) * 30,
                   torch.log(torch.rand(10000, generator=gen, dtype=torch.float64) * 5 + 1e-9)])
    assert torch.equal(cuda_emulation.ops().portable_exp(x), sampler.portable_exp(x))


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_view_numbers_stay_within_the_keys_32_bits(backend):
    """View 2**32 would hash as view 0: refused on every backend, as is a range of views running
    past it."""
    sizes, cfg = torch.tensor([[40, 50]]), ViewConfig()
    assert sample_view(sizes, cfg, 2**32 - 1, backend=backend).view == 2**32 - 1
    for view, configs in ((2**32, [cfg]), (2**32 - 1, [cfg, cfg]), (2**63 - 1, [cfg, cfg]), (-1, [cfg])):
        with pytest.raises(ValueError, match=r"view must be an int in \[0, 2\*\*32 - "):
            sampler.sample_views(sizes, configs, view, backend=backend)


@needs_op
@pytest.mark.parametrize("above", [False, True])
def test_sample_views_op_applies_exactly_when_below_p(above):
    """Each probability set to the very draw of one sample: that sample does not get the op
    (u < p fails at u = p); one float32 step above, it does."""
    ids = torch.tensor([5, 77, 900])
    probabilities = {}
    for name, op in (("flip_p", Op.FLIP), ("rotation_p", Op.ROTATE), ("elastic_p", Op.ELASTIC),
                     ("jitter_p", Op.JITTER), ("grayscale_p", Op.GRAYSCALE), ("blur_p", Op.BLUR),
                     ("solarize_p", Op.SOLARIZE)):
        u = ck_rng.uniform(3, 4, ids[:1], 0, int(op), 0).item()
        probabilities[name] = u + 2**-24 if above else u
    p = sampler.sample_view(torch.tensor([[64, 80]] * 3), ViewConfig(**probabilities), view=0, seed=3, step=4,
                            ids=ids)
    for name in ("flip", "elastic", "jitter", "grayscale", "solarize"):
        assert bool(getattr(p, name)[0]) == above, name
    assert bool(p.angle[0] != 0) == above and bool(p.blur_sigma[0] > 0) == above


def test_sampler_backend_choice(monkeypatch):
    sizes = torch.tensor([[40, 50], [60, 70]])
    with pytest.raises(ValueError, match="backend must be one of"):
        sample_params(sizes, "caug", backend="triton")
    monkeypatch.setattr(sampler._backend, "kernel_available", lambda op, device: False)
    with pytest.raises(RuntimeError, match="backend='fused' unavailable: no sample_views kernel for cpu"):
        sample_params(sizes, "caug", backend="fused")
    fallback = sample_params(sizes, "caug+", seed=4)  # auto: the tensor ops, which draw the same bits
    monkeypatch.undo()
    assert all(a == b for a, b in zip(fallback, sample_params(sizes, "caug+", seed=4)))


@needs_op
def test_sample_views_op_refuses_bad_arguments():
    op = torch.ops.clever_kernels.sample_views
    views = make_config("baug", n_local=1).views()
    constants = sampler._view_constants(tuple(views), torch.device("cpu")).packed
    sizes, ids, key = torch.tensor([[5, 6], [7, 8]]), torch.tensor([0, 1]), torch.tensor(9)
    op(sizes, ids, key, 0, constants)
    for args, match in (((sizes.int(), ids, key, 0, constants), "sizes must be an int64 tensor of shape"),
                        ((sizes[:0], ids[:0], key, 0, constants), r"shape \(B, 2\), B >= 1"),
                        ((sizes, ids[:1], key, 0, constants), r"ids must be an int64 tensor of shape \(B,\)"),
                        ((sizes, ids, key[None], 0, constants), "key must be a 0-dim int64 tensor"),
                        ((sizes, ids, key, 0, constants.float()), "constants must be a float64 tensor"),
                        ((sizes, ids, key, 0, constants[:, :-1]), "constants must be a float64 tensor"),
                        ((sizes, ids, key, -1, constants), "first_view"),
                        ((sizes, ids, key, 2**32 - 2, constants), "first_view"),
                        ((sizes, ids, key, 2**63 - 1, constants), "first_view"),
                        ((sizes.t().contiguous().t(), ids, key, 0, constants), "must be contiguous"),
                        ((torch.tensor([[5, 6], [0, 8]]), ids, key, 0, constants), r"sizes\[1\] must be >= 1")):
        with pytest.raises(RuntimeError, match=match):
            op(*args)


@needs_op
def test_sample_views_op_fake_matches_the_kernel():
    """The registered fake (torch.compile, meta tensors) gives the kernel's shapes and dtypes."""
    views = make_config("caug", n_local=3).views()
    constants = sampler._view_constants(tuple(views), torch.device("cpu")).packed
    args = (torch.tensor([[5, 6], [7, 8], [9, 9]]), torch.tensor([0, 1, 2]), torch.tensor(9), 2, constants)
    torch.library.opcheck(torch.ops.clever_kernels.sample_views.default, args)
    real = torch.ops.clever_kernels.sample_views(*args)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = torch.ops.clever_kernels.sample_views(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                                       for a in args])
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]


# ----------------------------------------------------------------------------- AugParams
def test_aug_params_record():
    params = sample_params(torch.tensor([[120, 160]] * 6), "caug+", n_local=1, seed=2)
    assert [p.view for p in params] == [0, 1, 2] and [p.size for p in params] == [224, 224, 96]
    p = params[1]
    t = p.to_tensor()
    assert t.shape == (6, len(COLUMNS)) and list(p.columns) == list(COLUMNS) and len(COLUMNS) == 22
    assert COLUMNS[-2:] == ("image_height", "image_width")
    assert (t[:, -2:] == torch.tensor([120.0, 160.0])).all()
    assert torch.equal(t[:, COLUMNS.index("angle")], p.angle)
    assert torch.equal(t[:, COLUMNS.index("order0"):COLUMNS.index("order3") + 1], p.order.float())
    back = AugParams.from_tensor(p.to_tensor(torch.float64), size=p.size, view=p.view,
                                 elastic_alpha=p.elastic_alpha, elastic_sigma=p.elastic_sigma)
    assert torch.equal(back.to_tensor(torch.float64), p.to_tensor(torch.float64))
    assert torch.equal(back.elastic_seed, p.elastic_seed)
    sub = p.index(torch.tensor([4, 1]))
    assert sub.batch_size == 2 and torch.equal(sub.to_tensor(), t[[4, 1]])
    assert p.index(3).batch_size == 1 and torch.equal(p.index(-1).to_tensor(), t[-1:])
    assert torch.equal(p.index(slice(1, 3)).to_tensor(), t[1:3])
    assert torch.equal(p.index(np.int64(-6)).to_tensor(), t[:1])
    for past in (6, -7):  # as a list index would, not an empty AugParams
        with pytest.raises(IndexError, match=f"index {past} is out of range for a batch of 6"):
            p.index(past)
    moved = p.to("meta")
    assert moved.device.type == "meta" and moved.size == p.size and moved.view == p.view
    assert len(p) == 6 and p.is_global and not params[2].is_global


def test_params_record_each_samples_image_size():
    """Every draw records the size of the image each sample was drawn for, ragged batches too,
    and keeps it through index, to_tensor and from_tensor."""
    images = [torch.zeros(3, h, w, dtype=torch.uint8) for h, w in ((31, 17), (5, 60), (40, 40))]
    for p in sample_params(images, "caug+", n_local=2, seed=5):
        assert p.image_height.tolist() == [31, 5, 40] and p.image_width.tolist() == [17, 60, 40]
        assert p.index([2, 0]).image_height.tolist() == [40, 31]
        back = AugParams.from_tensor(p.to_tensor(torch.float64), p.size, p.view, p.elastic_alpha, p.elastic_sigma)
        assert back == p
    identity = AugParams.identity([[7, 9], [3, 4]], size=5)
    assert identity.image_height.tolist() == [7, 3] and identity.image_width.tolist() == [9, 4]
    # each record owns its sizes: not the caller's tensor, not another view's or field's
    sizes = torch.tensor([[31, 17], [5, 60]])
    drawn = sample_params(sizes, "caug", n_local=1, seed=5)
    from_sizes = AugParams.identity(sizes, size=5)
    sizes.fill_(1)
    drawn[0].image_height.fill_(2)
    from_sizes.height.fill_(3)
    assert drawn[1].image_height.tolist() == [31, 5] and drawn[0].image_width.tolist() == [17, 60]
    assert from_sizes.image_height.tolist() == [31, 5] and from_sizes.width.tolist() == [17, 60]
    # a table in the layout without the sizes is refused with what to add, not misread
    old_layout = p.to_tensor(torch.float64)[:, :-2]
    with pytest.raises(ValueError, match="append image_height and image_width columns"):
        AugParams.from_tensor(old_layout, p.size, p.view, p.elastic_alpha, p.elastic_sigma)


def test_elastic_constants_are_float32_in_config_and_params():
    """The config records the elastic constants as the params and the kernels hold them."""
    from clever_kernels.augment.params import as_float32
    config = make_config("caug+", elastic_sigma=0.3, elastic_alpha=33.3, n_local=1)
    assert config.global1.elastic_sigma == as_float32(0.3) != 0.3
    assert config.local.elastic_alpha == as_float32(33.3)
    for p in sample_params(torch.tensor([[20, 30]]), config):
        assert (p.elastic_sigma, p.elastic_alpha) == (as_float32(0.3), as_float32(33.3))


def test_aug_params_validation():
    p = AugParams.identity(torch.tensor([[10, 20], [30, 40]]), size=8)
    with pytest.raises(TypeError, match="angle"):
        AugParams(**{**p.__dict__, "angle": p.angle.double()})
    with pytest.raises(ValueError, match="order"):
        AugParams(**{**p.__dict__, "order": p.order[:, :3]})
    with pytest.raises(ValueError, match="flip"):
        AugParams(**{**p.__dict__, "flip": p.flip[:1]})
    with pytest.raises(ValueError, match="size"):
        AugParams(**{**p.__dict__, "size": 0})
    # the kernels' largest output side, refused by every backend alike
    with pytest.raises(ValueError, match=r"size must be an int in \[1, 4080\], got 4081"):
        dataclasses.replace(p, size=4081)
    assert dataclasses.replace(p, size=np.int64(16)).size == 16
    with pytest.raises(ValueError, match="table"):
        AugParams.from_tensor(torch.zeros(2, 5), size=8, view=0)
    with pytest.raises(TypeError, match="AugParams.to takes a device"):
        p.to(torch.float64)
    assert AugParams.identity([[10, 20], [30, 40]], size=8) == p


def test_aug_params_index_forms():
    """Every natural index form selects what a list or a tensor index would; what would be
    truncated or misread (floats, a bare bool, a mask of the wrong length) is refused."""
    p = sample_params(torch.tensor([[120, 160]] * 5), "caug", n_local=0, seed=4)[0]
    t = p.to_tensor(torch.float64)
    for idx, rows in ((np.array([3, 1]), [3, 1]), (torch.tensor([3, 1], dtype=torch.int32), [3, 1]),
                      ((4, 0), [4, 0]), (torch.tensor(2), [2]), (np.where(np.arange(5) > 2)[0], [3, 4]),
                      ([True, False, False, True, False], [0, 3]), (torch.arange(5) < 2, [0, 1]),
                      ([], []), ((), []), (np.array([], dtype=np.int64), [])):
        assert torch.equal(p.index(idx).to_tensor(torch.float64), t[rows]), idx
    for idx, exc in (([0.9, 1.9], TypeError), (True, TypeError), (torch.tensor([1.0]), TypeError),
                     ([True, False], IndexError), (np.zeros((1, 2), dtype=np.int64), TypeError),
                     (np.array(True), TypeError)):
        with pytest.raises(exc, match="index"):
            p.index(idx)


def test_aug_params_equality():
    a = sample_params(torch.tensor([[40, 50]] * 3), "caug+", seed=1)
    b = sample_params(torch.tensor([[40, 50]] * 3), "caug+", seed=1)
    assert a == b and a[0] == b[0] and a[0] != a[1]
    assert a[0] != dataclasses.replace(a[0], angle=a[0].angle + 1)
    assert a[0] != dataclasses.replace(a[0], elastic_alpha=1.0)
    assert a[0] in b and a[0] != "not params"


def test_from_tensor_refuses_what_it_cannot_rebuild():
    """A float32 table has rounded the elastic seeds, and no table holds the view's elastic
    strength: rebuilding either would render other views than the recorded ones."""
    p = sample_params([(40, 50)] * 6, "caug+", seed=3)[0]
    assert p.elastic.any()
    with pytest.raises(ValueError, match="must be float64"):
        AugParams.from_tensor(p.to_tensor(), p.size, p.view, p.elastic_alpha, p.elastic_sigma)
    with pytest.raises(ValueError, match="elastic_alpha and elastic_sigma"):
        AugParams.from_tensor(p.to_tensor(torch.float64), p.size, p.view)
    plain = sample_params([(40, 50)] * 6, "caug", seed=3)[0]
    with pytest.raises(ValueError, match="floating point"):
        AugParams.from_tensor(plain.to_tensor(torch.float64).to(torch.int64), plain.size, plain.view)
    for half in (torch.float16, torch.bfloat16):
        with pytest.raises(ValueError, match="must be float32 or float64"):
            AugParams.from_tensor(plain.to_tensor(half), plain.size, plain.view)
    back = AugParams.from_tensor(plain.to_tensor(), plain.size, plain.view)
    assert torch.equal(back.to_tensor(torch.float64), plain.to_tensor(torch.float64))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: sample_params([]), ValueError, "sizes_or_images"),
    (lambda: sample_params(torch.zeros(0, 3, 8, 8, dtype=torch.uint8)), ValueError, "sizes_or_images"),
    (lambda: sample_params(torch.zeros(3, 8, 8)), ValueError, "sizes_or_images"),
    (lambda: sample_params([(8, 0)]), ValueError, "sizes_or_images"),
    (lambda: sample_params(torch.zeros(2, 3, 8, 8), ids=torch.arange(3)), ValueError, "ids"),
    (lambda: sample_params(torch.zeros(2, 3, 8, 8), ids=torch.arange(2.0)), ValueError, "ids"),
    (lambda: sample_params(torch.zeros(2, 3, 8, 8), seed=1.5), TypeError, "seed"),
    (lambda: sample_params(torch.zeros(2, 3, 8, 8), step=2**64), ValueError, "step"),
    (lambda: sample_params(torch.zeros(2, 3, 8, 8), seed=torch.tensor([1, 2])), ValueError, "seed"),
    (lambda: sample_params(torch.zeros(2, 3, 8, 8), "caug", n_local=-2), ValueError, "n_local"),
    (lambda: sample_params(torch.zeros(2, 3, 8, 8), "caug", local_scale=(0.5, 0.1)), ValueError, "scale"),
    (lambda: sample_params(torch.tensor([[0, 5]])), ValueError, "sizes_or_images: image sizes must be >= 1"),
    (lambda: sample_params(torch.tensor([[-5, 10]])), ValueError, "sizes_or_images"),
    (lambda: sample_params(torch.zeros(2, 3, 0, 8)), ValueError, "sizes_or_images: image sizes must be >= 1"),
    (lambda: sample_params(torch.zeros(2, 3, 8, 8), ids=[5.7, 6.2]), TypeError, "ids must be"),
    (lambda: sample_params(torch.zeros(2, 3, 8, 8), ids=[True, False]), TypeError, "ids must be"),
    (lambda: sample_params(torch.zeros(2, 3, 8, 8), ids=iter([1, 2, 3])), ValueError, "ids must be an integer tensor"),
    (lambda: sample_params(torch.zeros(2, 3, 8, 8), ids=[0, 2**63]), ValueError, "ids must fit in int64"),
    (lambda: sample_params(torch.zeros(0, 2, dtype=torch.int64)), ValueError, "sizes_or_images: empty batch"),
    (lambda: sample_params(torch.ones(2, 2)), ValueError, "sizes_or_images must be a .* integer tensor of sizes"),
    (lambda: sample_params({"h": 8}), ValueError, "sizes_or_images must be a tensor or a list, got dict"),
    (lambda: sample_params([torch.zeros(8, 8)]), ValueError, "every image of a list must be .C, H, W."),
    (lambda: sample_params([(8, 8, 3)]), ValueError, "list of .C, H, W. images or of .height, width. pairs"),
    (lambda: sample_params([torch.zeros(3, 8, 8), (8, 8)]), ValueError, "list of .C, H, W. images"),
    (lambda: sampler.sample_views(torch.ones(2, 2), [ViewConfig()]), ValueError, "sizes must be a .B, 2. int64"),
    (lambda: sampler.sample_views(torch.zeros(0, 2, dtype=torch.int64), [ViewConfig()]), ValueError,
     "sizes: empty batch"),
    (lambda: sample_view(torch.ones(2, 2, dtype=torch.int64), ViewConfig(), 0, ids=torch.arange(3)), ValueError,
     r"ids must be an integer tensor .* of shape \(2,\)"),
    (lambda: sample_params(torch.zeros(2, 3, 8, 8), seed=torch.tensor(1.0)), TypeError,
     "seed must be an int64 tensor, got dtype torch.float32"),
    (lambda: sample_params(torch.zeros(2, 3, 8, 8), "caug", local_scale="ab"), ValueError,
     "local view: scale must be a pair .min, max. of numbers, got 'ab'"),
    (lambda: AugConfig(global1="baug", global2=ViewConfig(), local=ViewConfig()), TypeError,
     "global1 must be a ViewConfig, got str"),
    (lambda: AugParams.identity([[8, 8, 3]], 4), ValueError, r"image_sizes must have shape \(B, 2\)"),
])
def test_sample_params_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("backend", ["reference", pytest.param("fused", marks=needs_op)])
@pytest.mark.parametrize("sizes", [[[0, 5]], [[40, 30], [-3, 7]], [[12, 0]]])
def test_sample_view_refuses_sizes_below_one(backend, sizes):
    """The sizes tensor of sample_view and sample_views is checked as sample_params' is, on
    either backend (the tensor ops drew boxes outside such images, the op raised RuntimeError)."""
    with pytest.raises(ValueError, match=r"sizes: image sizes must be >= 1, got \["):
        sample_view(torch.tensor(sizes), ViewConfig(), 0, backend=backend)
    with pytest.raises(ValueError, match=r"sizes: image sizes must be >= 1"):
        sampler.sample_views(torch.tensor(sizes), [ViewConfig()] * 2, backend=backend)


def test_ids_may_be_any_iterable():
    want = sample_params(torch.zeros(3, 3, 8, 8), ids=[4, 5, 9])
    got = sample_params(torch.zeros(3, 3, 8, 8), ids=(i for i in (4, 5, 9)))
    assert all(torch.equal(a.to_tensor(torch.float64), b.to_tensor(torch.float64)) for a, b in zip(got, want))


def test_numpy_integer_seed_and_step():
    """seed and step take integer scalars of any type with __index__, as MultiCrop's seed does;
    an unsigned value beyond int64 is refused, not wrapped."""
    sizes = torch.tensor([[40, 30]] * 3)
    want = sample_params(sizes, "caug", n_local=1, seed=7, step=2**40)
    got = sample_params(sizes, "caug", n_local=1, seed=np.int32(7), step=np.uint64(2**40))
    assert all(torch.equal(a.to_tensor(torch.float64), b.to_tensor(torch.float64)) for a, b in zip(got, want))
    mc = MultiCrop("caug", n_local=1, seed=np.int64(7))
    got = mc.sample_params(torch.zeros(3, 3, 40, 30, dtype=torch.uint8), step=np.int64(2**40))
    assert all(torch.equal(a.to_tensor(torch.float64), b.to_tensor(torch.float64)) for a, b in zip(got, want))
    with pytest.raises(ValueError, match="step must fit in int64"):
        sample_params(sizes, step=np.uint64(2**63))
    # numpy integers wherever an int is taken; integer ids tensors of any width up to int64
    np_sizes = [(np.int64(40), np.int32(30))] * 3
    got = sample_params(np_sizes, "caug", n_local=np.int64(1), global_size=np.int64(224), seed=7,
                        step=2**40, ids=torch.arange(3, dtype=torch.int32))
    assert got == want
    with pytest.raises(ValueError, match="ids must be an integer tensor"):
        sample_params(sizes, ids=torch.arange(3, dtype=torch.float32))
    with pytest.raises(TypeError, match="seed"):
        sample_params(sizes, seed=np.float64(1.0))


def test_sample_params_accepts_config():
    cfg = make_config("caug", n_local=2, local_size=48)
    assert isinstance(cfg, AugConfig)
    a = sample_params(torch.tensor([[64, 64]] * 3), cfg, seed=1)
    b = sample_params(torch.tensor([[64, 64]] * 3), "caug", n_local=2, local_size=48, seed=1)
    assert [p.size for p in a] == [224, 224, 48, 48]
    assert all(torch.equal(x.to_tensor(), y.to_tensor()) for x, y in zip(a, b))


@pytest.mark.parametrize("unit, applied", [(0.5, False), (0.5 - 2 ** -24, True)])
def test_a_draw_applies_exactly_when_below_p(monkeypatch, unit, applied):
    """`u < p`: a draw equal to p does not apply (so p = 0 never does, even for u = 0), the
    largest draw below it does. (The tensor ops, whose draws can be replaced; the op's are held
    to them below, test_sample_views_op_applies_exactly_when_below_p.)"""
    monkeypatch.setattr(ck_rng, "to_unit", lambda bits: torch.full(bits.shape, unit, dtype=torch.float32))
    cfg = ViewConfig(flip_p=0.5, rotation_p=0.5, elastic_p=0.5, jitter_p=0.5, grayscale_p=0.5, blur_p=0.5,
                     solarize_p=0.5)
    p = sampler.sample_view(torch.tensor([[64, 80]] * 3), cfg, view=0, backend="reference")
    for name in ("flip", "elastic", "jitter", "grayscale", "solarize"):
        assert (getattr(p, name) == applied).all(), name
    assert ((p.angle != 0) == applied).all() and ((p.blur_sigma > 0) == applied).all()


# ----------------------------------------------------------------------------- gaps found by mutation testing
def test_prefix_precedence_for_every_view_kind():
    """A more specific prefix wins whatever the keyword order: local_ over the bare name, global1_
    and global2_ over global_ and over the bare name."""
    for kwargs in (dict(blur_p=0.3, local_blur_p=0.7, global_blur_p=0.4, global1_blur_p=0.9),
                   dict(global1_blur_p=0.9, global_blur_p=0.4, local_blur_p=0.7, blur_p=0.3)):
        cfg = make_config("baug", n_local=1, **kwargs)
        assert [v.blur_p for v in cfg.views()] == [0.9, 0.4, 0.7], kwargs
    cfg = make_config("baug", n_local=1, hue=0.05, local_hue=0.2, global2_hue=0.3)
    assert [v.hue for v in cfg.views()] == [(-0.05, 0.05), (-0.3, 0.3), (-0.2, 0.2)]


def test_factor_strength_above_one_clamps_at_zero():
    """ColorJitter's convention: a strength a gives [max(0, 1 - a), 1 + a], so a strength above 1
    never draws a negative factor."""
    cfg = make_config("baug", brightness=1.5, contrast=2.0, saturation=1.0, jitter_p=1.0)
    assert cfg.global1.brightness == (0.0, 2.5) and cfg.local.contrast == (0.0, 3.0)
    assert cfg.global2.saturation == (0.0, 2.0)
    p = sample_params(torch.tensor([[50, 60]] * 2000), cfg, n_local=0, seed=3)[0]
    for name in ("brightness", "contrast", "saturation"):
        values = getattr(p, name)
        assert values.min() >= 0.0, f"{name}: negative factor {values.min().item()}"


def test_hue_pair_outside_half_a_turn_is_refused():
    """Hue shifts are limited to [-0.5, 0.5] (torchvision's bound) for a pair as for a strength."""
    for hue in ((-0.2, 0.7), (-0.6, 0.1)):
        with pytest.raises(ValueError, match="hue"):
            make_config("baug", hue=hue)
    assert make_config("baug", hue=(-0.5, 0.5)).global1.hue == (-0.5, 0.5)


def test_dense_batch_sizes_are_height_then_width():
    """A (B, C, H, W) batch gives the same (height, width) sizes, and so the same draws, as the
    explicit sizes; a non-square image tells height from width."""
    gen = torch.Generator().manual_seed(11)
    batch = torch.randint(0, 256, (6, 3, 37, 90), dtype=torch.uint8, generator=gen)
    assert image_sizes(batch).tolist() == [[37, 90]] * 6
    from_batch = sample_params(batch, "caug", n_local=2, seed=5)
    from_sizes = sample_params(torch.tensor([[37, 90]] * 6), "caug", n_local=2, seed=5)
    for a, b in zip(from_batch, from_sizes):
        assert torch.equal(a.to_tensor(torch.float64), b.to_tensor(torch.float64))
        assert ((a.top + a.height) <= 37).all() and ((a.left + a.width) <= 90).all()


def test_crop_size_ties_round_half_to_even():
    """w = round(sqrt(target_area * aspect)) rounds half to even, as Python's round in
    torchvision. With scale fixed at 1/4 and ratio 1, an odd n x n image has a side of exactly
    n / 2 = k + 1/2: k when k is even, k + 1 when odd."""
    cfg = ViewConfig(scale=(0.25, 0.25), ratio=(1.0, 1.0))
    for n in (5, 7, 9, 11, 13):
        p = sample_view(torch.tensor([[n, n]] * 4), cfg, view=0, seed=1)
        want = round(n / 2)  # Python's round: half to even
        assert (p.height == want).all() and (p.width == want).all(), (n, p.height.tolist(), want)
        assert (p.top + p.height <= n).all() and (p.left + p.width <= n).all()


def test_aug_params_fields_must_share_one_device():
    p = AugParams.identity(torch.tensor([[10, 20], [30, 40]]), size=8)
    with pytest.raises(ValueError, match="is on meta"):
        AugParams(**{**p.__dict__, "angle": p.angle.to("meta")})
