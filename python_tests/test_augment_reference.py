"""The plain-PyTorch renderer: invariants of every op, on real photographs and random images."""
import colorsys
import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clever_kernels.augment import IMAGENET_MEAN, IMAGENET_STD, AugParams, sample_params
from clever_kernels.augment import rng as ck_rng
from clever_kernels.reference import augment as ref

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def photos():
    pytest.importorskip("sklearn")
    from clever_kernels.data import sample_photos
    return sample_photos()


@pytest.fixture(scope="module")
def noise_images():
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(0, 256, (3, 3, 40, 56), dtype=torch.uint8, generator=gen)


def sizes_of(images):
    return torch.tensor([list(x.shape[-2:]) for x in images])


def identity(images, size):
    return AugParams.identity(sizes_of(images), size)


def with_fields(params, **fields):
    """Copy of params with some fields set for every sample (Python values broadcast)."""
    out = {}
    for name, value in fields.items():
        old = getattr(params, name)
        out[name] = (value if isinstance(value, torch.Tensor)
                     else torch.tensor(value, dtype=old.dtype).expand_as(old).clone())
    return dataclasses.replace(params, **out)


def render01(images, params, **kw):
    """Render without normalisation, so outputs are pixels in [0, 1]."""
    return ref.render(images, params, mean=ZERO, std=ONE, **kw)


def square_crop(images, side, size):
    p = identity(images, size)
    return with_fields(p, top=10, left=20, height=side, width=side)


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("interpolation, antialias", [("bicubic", True), ("bilinear", False),
                                                      ("bilinear", True)])
def test_identity_params_give_the_resized_image(photos, interpolation, antialias):
    out = ref.render(photos, identity(photos, 48), interpolation=interpolation, antialias=antialias)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for image, got in zip(photos, out):
        x = F.interpolate(image[None].float() / 255, size=(48, 48), mode=interpolation,
                          align_corners=False, antialias=antialias)[0].clamp(0, 1)
        assert torch.equal(got, (x - mean) / std)


def test_crop_box_selects_source_pixels(noise_images):
    """A crop as large as the output is copied verbatim, at the recorded offset."""
    p = with_fields(identity(noise_images, 16), top=[3, 0, 24], left=[5, 40, 0], height=16, width=16)
    out = render01(noise_images, p)
    for b, (t, l) in enumerate(((3, 5), (0, 40), (24, 0))):
        want = noise_images[b, :, t:t + 16, l:l + 16].float() / 255
        torch.testing.assert_close(out[b], want, atol=1e-6, rtol=0)


def test_grayscale_source_and_lists_of_sizes(photos):
    gray = [photos[0][:1, :200, :300].contiguous(), photos[1][1:2, 100:260, 50:150].contiguous()]
    rgb = [x.expand(3, -1, -1) for x in gray]
    p = sample_params(gray, "caug", seed=3)[2]
    out = render01(gray, p)
    assert out.shape == (2, 3, 96, 96)
    assert torch.equal(out, render01(rgb, p))
    for b in range(2):
        assert torch.equal(out[b], render01([gray[b]], p.index(b))[0])


def test_flip_mirrors_the_output(photos):
    p = sample_params(photos, "caug", seed=1, n_local=0, global_size=40)[0]
    # Pixel-wise colour ops commute with the mirror bit for bit.
    p = with_fields(p, jitter=True, brightness=1.2, contrast=1.0, saturation=0.7, hue=0.05,
                    grayscale=False, blur_sigma=0.0, solarize=True)
    plain = with_fields(p, angle=0.0)
    flipped = render01(photos, with_fields(plain, flip=True))
    assert torch.equal(flipped, torch.flip(render01(photos, with_fields(plain, flip=False)), dims=[-1]))
    # Flip then rotate by a is the mirror of rotating by -a.
    rotated = render01(photos, with_fields(p, flip=True, angle=[25.0, -60.0]))
    mirror = torch.flip(render01(photos, with_fields(p, flip=False, angle=[-25.0, 60.0])), dims=[-1])
    torch.testing.assert_close(rotated, mirror, atol=1e-6, rtol=0)
    # Image-wide sums (contrast mean, blur) only reorder additions.
    q = with_fields(p, contrast=0.6, blur_sigma=1.0, angle=0.0)
    torch.testing.assert_close(render01(photos, with_fields(q, flip=True)),
                               torch.flip(render01(photos, with_fields(q, flip=False)), dims=[-1]),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("rotation_interpolation", ["nearest", "bilinear"])
def test_quarter_turns_match_rot90(photos, rotation_interpolation):
    """Positive angles turn counter-clockwise, as torchvision's: +90 degrees is torch.rot90 from
    the row axis towards the column axis (the right edge comes to the top)."""
    p = square_crop(photos, 300, 48)
    base = render01(photos, p, rotation_interpolation=rotation_interpolation)
    for angle, k in ((90.0, 1), (-90.0, -1), (180.0, 2)):
        turned = render01(photos, with_fields(p, angle=angle),
                          rotation_interpolation=rotation_interpolation)
        torch.testing.assert_close(turned, torch.rot90(base, k, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_rotation_moves_a_dot_counter_clockwise():
    img = torch.zeros(1, 3, 33, 33, dtype=torch.uint8)
    img[0, :, 16, 26] = 255  # right of the centre
    p = with_fields(identity(img, 33), angle=30.0)
    out = render01(img, p)[0, 0]
    y, x = divmod(int(out.argmax()), 33)
    # The dot sits 10 px right of the centre; after 30 degrees CCW it is up and to the right.
    a = math.radians(30)
    assert (y, x) == (16 - round(10 * math.sin(a)), 16 + round(10 * math.cos(a)))


def test_rotation_fills_corners_with_zero(photos):
    p = with_fields(square_crop(photos, 300, 32), angle=45.0)
    out = render01(photos, p)
    assert (out[:, :, 0, 0] == 0).all() and (out[:, :, -1, -1] == 0).all()
    assert (out[:, :, 16, 16] > 0).any()


def test_angle_zero_is_skipped_exactly(photos):
    # At 24 px (unlike powers of two) a bilinear grid through the pixel centres is off by ulps.
    x = render01(photos, square_crop(photos, 300, 24))[0]
    assert torch.equal(ref.rotate(x, 0.0, "bilinear"), x)


# ----------------------------------------------------------------------------- elastic
def np_hash32(*words):
    """rng.hash32 in numpy uint32 arithmetic."""
    h = np.uint32(0x9E3779B9)
    with np.errstate(over="ignore"):
        for w in words:
            x = h ^ (np.asarray(w, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32)
            x = (x ^ (x >> np.uint32(16))) * np.uint32(0x7FEB352D)
            x = (x ^ (x >> np.uint32(15))) * np.uint32(0x846CA68B)
            h = x ^ (x >> np.uint32(16))
    return h


def np_elastic_displacement(seed, size, alpha, sigma):
    """Independent construction: uint32 hash in numpy, scipy's Gaussian filter in mirror mode."""
    ndimage = pytest.importorskip("scipy.ndimage")
    counter = np.arange(2 * size * size, dtype=np.int64).reshape(2, size, size)
    noise = (np_hash32(seed, counter) >> 8).astype(np.float64) * 2.0**-24 * 2 - 1
    # Kernel size k = int(8 sigma + 1), made odd as k + 1: the radius is k // 2 either way.
    radius = int(8 * sigma + 1) // 2
    blurred = np.stack([ndimage.gaussian_filter(n, sigma, mode="mirror", truncate=radius / sigma)
                        for n in noise])
    return np.moveaxis(blurred * alpha / size, 0, -1)


@pytest.mark.parametrize("size, sigma", [(32, 5.0), (24, 2.5), (20, 1.2), (9, 5.0), (16, 0.0)])
def test_elastic_field_matches_independent_construction(size, sigma):
    seed = 0xDEADBEEF
    got = ref.elastic_displacement(seed, size, alpha=100.0, sigma=sigma)
    if sigma == 0:
        counter = torch.arange(2 * size * size).view(2, size, size)
        want = (2 * ck_rng.hash_uniform(torch.tensor(seed), counter) - 1) * 100.0 / size
        assert torch.equal(got, want.permute(1, 2, 0))
    else:
        want = torch.from_numpy(np_elastic_displacement(seed, size, 100.0, sigma)).float()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not torch.equal(got, ref.elastic_displacement(seed + 1, size, 100.0, sigma))


def test_elastic_identity_and_effect(photos):
    p = with_fields(square_crop(photos, 300, 32), elastic=True, elastic_seed=[123, 456])
    base = render01(photos, with_fields(p, elastic=False))
    still = render01(photos, dataclasses.replace(p, elastic_alpha=0.0, elastic_sigma=5.0))
    torch.testing.assert_close(still, base, atol=1e-5, rtol=0)
    moved = render01(photos, dataclasses.replace(p, elastic_alpha=100.0, elastic_sigma=5.0))
    assert (moved - base).abs().mean() > 0.01
    again = render01(photos, dataclasses.replace(p, elastic_alpha=100.0, elastic_sigma=5.0))
    assert torch.equal(moved, again)


# ----------------------------------------------------------------------------- colour
def test_neutral_jitter_changes_nothing(photos):
    p = sample_params(photos, "baug", seed=2, n_local=0, global_size=32)[0]
    p = with_fields(p, grayscale=False, blur_sigma=0.0, solarize=False)
    base = render01(photos, with_fields(p, jitter=False))
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        neutral = with_fields(p, jitter=True, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0,
                              order=order)
        torch.testing.assert_close(render01(photos, neutral), base, atol=2e-6, rtol=0)


def test_jitter_ops_follow_the_formulas(noise_images):
    p = with_fields(identity(noise_images, 24), jitter=True, brightness=1.0, contrast=1.0,
                    saturation=1.0, hue=0.0)
    x = render01(noise_images, with_fields(p, jitter=False))
    g = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    m = g.mean(dim=(1, 2, 3), keepdim=True)
    cases = [
        (dict(brightness=1.3), 0, (x * 1.3).clamp(0, 1)),
        (dict(contrast=0.6), 1, ((x - m) * 0.6 + m).clamp(0, 1)),
        (dict(contrast=1.7), 1, ((x - m) * 1.7 + m).clamp(0, 1)),
        (dict(saturation=1.6), 2, (g + 1.6 * (x - g)).clamp(0, 1)),
    ]
    for fields, op, want in cases:
        # The op under test goes last, so no later op's clamp hides a missing one.
        order = [o for o in range(4) if o != op] + [op]
        got = render01(noise_images, with_fields(p, order=order, **fields))
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_hue_matches_colorsys():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(3, 8, 8, generator=gen)
    x[:, 0, :3] = torch.tensor([[0.5, 1.0, 0.0], [0.5, 0.0, 1.0], [0.5, 0.0, 0.0]])  # gray, pure hues
    for shift in (0.1, -0.25, 0.5):
        got = ref.adjust_hue(x, shift)
        pixels = x.permute(1, 2, 0).reshape(-1, 3).double().numpy()
        want = []
        for r, g, b in pixels:
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            want.append(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v))
        want = torch.tensor(want, dtype=torch.float32).reshape(8, 8, 3).permute(2, 0, 1)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    torch.testing.assert_close(ref.adjust_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1),
                               atol=1e-6, rtol=0)
    # the HSV form itself: hue in [0, 1) as colorsys has it, also where R is the maximum and B > G
    # (a negative hue before the wrap)
    hsv = ref.rgb_to_hsv(x)
    want = torch.tensor([colorsys.rgb_to_hsv(*rgb) for rgb in x.permute(1, 2, 0).reshape(-1, 3).double().tolist()],
                        dtype=torch.float32).reshape(8, 8, 3).permute(2, 0, 1)
    assert ((x[0] == x.amax(0)) & (x[2] > x[1])).any()
    assert (hsv[0] >= 0).all() and (hsv[0] < 1).all()
    torch.testing.assert_close(hsv, want, atol=2e-6, rtol=0)


def test_jitter_applies_ops_in_recorded_order(photos):
    p = with_fields(square_crop(photos, 300, 24), jitter=True, brightness=1.4, contrast=0.5,
                    saturation=1.8, hue=0.2)
    x = render01(photos, with_fields(p, jitter=False))
    factors = (1.4, 0.5, 1.8, 0.2)
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        got = render01(photos, with_fields(p, order=order))
        for b in range(len(photos)):
            want = x[b]
            for op in order:
                want = ref.JITTER_FNS[op](want, factors[op])
            torch.testing.assert_close(got[b], want, atol=1e-6, rtol=0)
            reverse = x[b]
            for op in reversed(order):
                reverse = ref.JITTER_FNS[op](reverse, factors[op])
            assert (got[b] - reverse).abs().max() > 1e-2


def test_grayscale_has_equal_channels(photos):
    p = with_fields(square_crop(photos, 300, 32), grayscale=True)
    out = render01(photos, p)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    x = render01(photos, with_fields(p, grayscale=False))
    torch.testing.assert_close(out[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2],
                               atol=1e-6, rtol=0)
    normalised = ref.render(photos, p)
    assert not torch.equal(normalised[:, 0], normalised[:, 1])  # per-channel mean and std apply after


def test_solarize_formula(photos):
    p = square_crop(photos, 300, 32)
    x = render01(photos, p)
    got = render01(photos, with_fields(p, solarize=True))
    assert torch.equal(got, torch.where(x >= 0.5, 1 - x, x))


def test_blur(photos, noise_images):
    p = square_crop(photos, 300, 32)
    x = render01(photos, p)
    torch.testing.assert_close(render01(photos, with_fields(p, blur_sigma=0.1)), x, atol=1e-6, rtol=0)
    blurred = render01(photos, with_fields(p, blur_sigma=1.5))
    assert (blurred - x).abs().mean() > 1e-3
    const = torch.full((2, 3, 20, 30), 77, dtype=torch.uint8)
    q = with_fields(identity(const, 12), blur_sigma=[0.7, 2.0])
    torch.testing.assert_close(render01(const, q), torch.full((2, 3, 12, 12), 77 / 255), atol=1e-6, rtol=0)
    # Against scipy's Gaussian filter (mirror mode is reflection without edge repetition);
    # a 7 px image with radius 6 needs the reflection to wrap around twice.
    ndimage = pytest.importorskip("scipy.ndimage")
    for size, sigma in ((24, 1.3), (7, 2.0)):
        q = identity(noise_images, size)
        x = render01(noise_images, q)
        got = render01(noise_images, with_fields(q, blur_sigma=sigma))
        r = math.ceil(3 * sigma)
        want = ndimage.gaussian_filter(x.double().numpy(), (0, 0, sigma, sigma), mode="mirror",
                                       truncate=r / sigma)
        torch.testing.assert_close(got, torch.from_numpy(want).float(), atol=2e-6, rtol=0)


def test_normalisation_and_out_dtype(photos):
    p = square_crop(photos, 300, 16)
    x = render01(photos, p)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    got = ref.render(photos, p, mean=mean, std=std, out_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16
    want = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(got, want.bfloat16())


# ----------------------------------------------------------------------------- end to end
def test_multicrop_on_photos(photos):
    views, params = ref.multicrop(photos, "caug+", n_local=2, global_size=48, local_size=24, seed=9,
                                  step=1)
    assert [v.shape for v in views] == [(2, 3, 48, 48)] * 2 + [(2, 3, 24, 24)] * 2
    lo = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    hi = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for v, p in zip(views, params):
        assert torch.isfinite(v).all()
        assert (v >= lo.view(1, 3, 1, 1) - 1e-5).all() and (v <= hi.view(1, 3, 1, 1) + 1e-5).all()
        assert torch.equal(v, ref.render(photos, p))
    again, _ = ref.multicrop(photos, "caug+", n_local=2, global_size=48, local_size=24, seed=9, step=1)
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    other, _ = ref.multicrop(photos, "caug+", n_local=2, global_size=48, local_size=24, seed=9, step=2)
    assert not torch.equal(views[0], other[0])


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_raise_naming_the_argument(noise_images):
    p = identity(noise_images, 8)
    cases = [
        (lambda: ref.render(noise_images.float(), p), TypeError, "images"),
        (lambda: ref.render(noise_images[0], p), ValueError, "images"),
        (lambda: ref.render(noise_images[:, :2], p), ValueError, "channels"),
        (lambda: ref.render(torch.zeros(3, 4, 8, 8, dtype=torch.uint8), p), ValueError, "channels"),
        (lambda: ref.render([], p), ValueError, "images"),
        (lambda: ref.render(noise_images[:0], p), ValueError, "images"),
        (lambda: ref.render([noise_images[0], noise_images[1, :1]], p.index([0, 1])), ValueError,
         "images"),
        (lambda: ref.render([noise_images[0], noise_images[1].to("meta")], p.index([0, 1])),
         ValueError, "images"),
        (lambda: ref.render(noise_images[:2], p), ValueError, "params"),
        (lambda: ref.render(noise_images, with_fields(p, height=41)), ValueError, "params"),
        (lambda: ref.render(noise_images, with_fields(p, left=-1)), ValueError, "params"),
        # every side of the box, each just past its image (the boxes cover the whole image)
        (lambda: ref.render(noise_images, with_fields(p, width=noise_images.shape[3] + 1)), ValueError, "params"),
        (lambda: ref.render(noise_images, with_fields(p, left=1)), ValueError, "params"),
        (lambda: ref.render(noise_images, with_fields(p, top=1)), ValueError, "params"),
        (lambda: ref.render(noise_images, with_fields(p, top=-1)), ValueError, "params"),
        (lambda: ref.render(noise_images, with_fields(p, height=0)), ValueError, "params"),
        (lambda: ref.render(noise_images, with_fields(p, width=0)), ValueError, "params"),
        (lambda: ref.render(noise_images, with_fields(p, order=[0, 0, 1, 2])), ValueError, "order"),
        (lambda: ref.render(noise_images, with_fields(p, blur_sigma=-1.0)), ValueError, "blur_sigma"),
        (lambda: ref.render(noise_images, with_fields(p, blur_sigma=float("inf"))), ValueError, "blur_sigma"),
        (lambda: ref.render(noise_images, with_fields(p, blur_sigma=1000.5)), ValueError, "blur_sigma"),
        (lambda: ref.render(noise_images, with_fields(p, angle=float("nan"))), ValueError, "angle"),
        (lambda: ref.render(noise_images, with_fields(p, hue=float("inf"))), ValueError, "hue"),
        (lambda: ref.render(noise_images, with_fields(p, contrast=float("nan"))), ValueError, "contrast"),
        (lambda: dataclasses.replace(p, elastic_sigma=float("inf")), ValueError, "elastic_sigma"),
        (lambda: dataclasses.replace(p, elastic_sigma=1001.0), ValueError, "elastic_sigma"),
        (lambda: dataclasses.replace(p, elastic_alpha=float("nan")), ValueError, "elastic_alpha"),
        (lambda: ref.render(noise_images, with_fields(p, angle=torch.zeros(3, requires_grad=True))),
         ValueError, "angle"),
        (lambda: ref.render(noise_images, p, interpolation="lanczos"), ValueError, "interpolation"),
        # a flag read from a config file as a string would be truthy
        (lambda: ref.render(noise_images, p, antialias="False"), TypeError, "antialias must be a bool"),
        (lambda: ref.render(noise_images, with_fields(p, elastic_seed=-1)), ValueError, "elastic_seed"),
        (lambda: ref.render(noise_images, with_fields(p, elastic_seed=2**32)), ValueError, "elastic_seed"),
        (lambda: ref.render(noise_images, p, rotation_interpolation="bicubic"), ValueError,
         "rotation_interpolation"),
        (lambda: ref.render(noise_images, p, mean=(0.5, 0.5)), ValueError, "mean"),
        (lambda: ref.render(noise_images, p, std=(1.0, 0.0, 1.0)), ValueError, "std"),
        # normalisation is float32: non-finite there, or a std that is a float32 zero, is refused
        (lambda: ref.render(noise_images, p, std=(1.0, float("inf"), 1.0)), ValueError, "std"),
        (lambda: ref.render(noise_images, p, std=(1.0, 1e-50, 1.0)), ValueError, "std"),
        (lambda: ref.render(noise_images, p, mean=(0.0, float("nan"), 0.0)), ValueError, "mean"),
        (lambda: ref.render(noise_images, p, mean=(0.0, 1e39, 0.0)), ValueError, "mean"),
        # a box so large that top + height would wrap past int64
        (lambda: ref.render(noise_images, with_fields(p, top=2**62, height=2**62)), ValueError, "crop box"),
        (lambda: ref.render(noise_images, p, out_dtype=torch.int32), ValueError, "out_dtype"),
        (lambda: ref.render(noise_images, [p]), TypeError, "params"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()


def test_reference_imports_on_its_own():
    """`import clever_kernels.reference.augment` first, in a fresh interpreter: it imports the
    augment package, whose MultiCrop refers back to it."""
    code = "import clever_kernels.reference.augment as r; print(r.render.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "render", out.stderr


def test_blur_radius_is_ceil_of_three_sigma(noise_images):
    """SPEC.md: radius ceil(3 sigma), not 3 sigma rounded: sigmas whose 3 sigma lies just above an
    integer (1.1 -> 3.3, radius 4; 0.45 -> 1.35, radius 2; 2.35 -> 7.05, radius 8) against scipy's
    Gaussian filter truncated at that radius."""
    ndimage = pytest.importorskip("scipy.ndimage")
    q = identity(noise_images, 24)
    x = render01(noise_images, q)
    for sigma in (1.1, 0.45, 2.35):
        r = math.ceil(3 * sigma)
        got = render01(noise_images, with_fields(q, blur_sigma=sigma))
        want = ndimage.gaussian_filter(x.double().numpy(), (0, 0, sigma, sigma), mode="mirror",
                                       truncate=r / sigma)
        torch.testing.assert_close(got, torch.from_numpy(want).float(), atol=2e-6, rtol=0,
                                   msg=lambda m: f"sigma {sigma} (radius {r}): {m}")


def test_colour_ops_run_in_spec_order(noise_images):
    """SPEC.md's order after the geometry: jitter, grayscale, blur, solarize, each a fixed step.
    Blur then solarize is not solarize then blur (solarize is not linear); jitter then grayscale
    is not grayscale then jitter (saturation of a gray image is a no-op)."""
    p = with_fields(identity(noise_images, 20), jitter=True, saturation=1.8, brightness=1.0,
                    contrast=1.0, hue=0.0, grayscale=True, blur_sigma=1.2, solarize=True)
    x = render01(noise_images, with_fields(p, jitter=False, grayscale=False, blur_sigma=0.0, solarize=False))
    r = math.ceil(3 * 1.2)
    for b in range(len(noise_images)):
        want = ref.adjust_saturation(x[b], 1.8)
        want = ref.rgb_to_grayscale(want).expand(3, -1, -1)
        want = ref.gaussian_blur(want, r, 1.2)
        want = ref.solarize(want)
        got = render01(noise_images[b:b + 1], p.index(b))[0]
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=lambda m: f"sample {b}: {m}")
        swapped = ref.gaussian_blur(ref.solarize(ref.rgb_to_grayscale(ref.adjust_saturation(x[b], 1.8))
                                                 .expand(3, -1, -1)), r, 1.2)
        assert (got - swapped).abs().max() > 1e-2, "solarize-before-blur gives the same image: a weak test input"


def test_multicrop_normalises_with_the_configured_mean_and_std(noise_images):
    """ref.multicrop takes mean and std from the config (mean=..., std=... override them)."""
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    views, params = ref.multicrop(noise_images, "baug", n_local=1, global_size=16, local_size=8, seed=3,
                                  mean=mean, std=std)
    for v, p in zip(views, params):
        assert torch.equal(v, ref.render(noise_images, p, mean=mean, std=std))
        assert not torch.equal(v, ref.render(noise_images, p))
