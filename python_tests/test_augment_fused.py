"""The fused renderer (torch.ops.clever_kernels.render_views) against the plain-PyTorch reference
on the same parameters: every op alone, the presets, ragged batches, grayscale input, output
dtypes and layouts, determinism, argument errors.

Every test runs twice: with the C++ CPU kernel, and with the CUDA kernels compiled for the CPU
and run block by block with a fiber per thread (cuda_emulation.py, csrc/testing/simt.h), so the
GPU code's tiling, shared-memory blurs, barriers, block reductions and output indexing are
checked here too, the checks of the values inside the parameter tables included (the CPU op
raises before rendering, the CUDA kernels refuse the row in every block).

Tolerance: float32 outputs agree with reference.render within 1e-4 in [0, 1] pixel space (the
tests render with mean 0 and std 1, or undo the normalisation). No pixel is excluded anywhere,
rotations included: the nearest-neighbour rotation picks its source pixel by the reference's own
arithmetic (float64 grid rounded to float32, unnormalised in float32, no fused multiply-adds,
round half to even), and for square outputs exact half-pixel ties do not arise, so the picks agree.
float16 / bfloat16 outputs are the float32 result rounded to nearest, so
they are checked bit for bit against the float32 output cast, and against the reference within
one unit in the last place of the dtype plus the float32 tolerance.
"""
import dataclasses
import math

import pytest
import torch

from clever_kernels import _backend
from clever_kernels.augment import AugParams, MultiCrop, render, sample_params
from clever_kernels.augment.params import MAX_SIGMA
from clever_kernels.reference import augment as ref

if _backend.extension() is None or not hasattr(torch.ops.clever_kernels, "render_views"):
    pytest.skip("render_views is not built (pip install --no-build-isolation -e .)", allow_module_level=True)

from clever_kernels.augment import _fused  # noqa: E402  (needs the extension)
import cuda_emulation  # noqa: E402
from conftest import torch_threads  # noqa: E402

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
ATOL = 1e-4


# ----------------------------------------------------------------------------- renderers
@pytest.fixture(autouse=True, params=["cpu-kernel", "cuda-kernels-emulated"])
def renderer(request, monkeypatch):
    """Which implementation torch.ops.clever_kernels.render_views runs for the test."""
    if request.param == "cuda-kernels-emulated":
        emulated = cuda_emulation.render_views_op()
        torch.ops.clever_kernels.render_views  # resolve the op before replacing it
        monkeypatch.setattr(torch.ops.clever_kernels, "render_views", emulated)
    return request.param


def cpu_kernel_only(renderer, why):
    if renderer != "cpu-kernel":
        pytest.skip(why)


# ----------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def ragged():
    """Real photographs cropped to odd sizes plus random noise images: four sizes in one batch."""
    pytest.importorskip("sklearn")
    from clever_kernels.data import sample_photos
    china, flower = sample_photos()
    gen = torch.Generator().manual_seed(7)
    noise = torch.randint(0, 256, (3, 57, 83), dtype=torch.uint8, generator=gen)
    small = torch.randint(0, 256, (3, 23, 19), dtype=torch.uint8, generator=gen)
    return [china[:, 11:312, 5:382].contiguous(), flower[:, 40:281, 100:403].contiguous(), noise, small]


def sizes_of(images):
    return torch.tensor([list(x.shape[-2:]) for x in images])


def with_fields(params, **fields):
    """Copy of params with fields set for every sample (Python values broadcast) or per sample."""
    out = {}
    for name, value in fields.items():
        old = getattr(params, name)
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, list) and name != "order":
            out[name] = torch.tensor(value, dtype=old.dtype)
        else:
            out[name] = torch.tensor(value, dtype=old.dtype).expand_as(old).clone()
    return dataclasses.replace(params, **out)


def centre_crops(images, size, frac=0.8):
    """Identity-like params with a central crop box of `frac` of each side."""
    p = AugParams.identity(sizes_of(images), size)
    h = (sizes_of(images)[:, 0] * frac).long().clamp(min=1)
    w = (sizes_of(images)[:, 1] * frac).long().clamp(min=1)
    return with_fields(p, top=(sizes_of(images)[:, 0] - h) // 2, left=(sizes_of(images)[:, 1] - w) // 2,
                       height=h, width=w)


def fused01(images, params, **kw):
    return render(images, params, mean=ZERO, std=ONE, backend="fused", **kw)


def check(images, params, atol=ATOL, **kw):
    """Fused vs reference in [0, 1] space, every view of `params` (one AugParams or a list)."""
    views = [params] if isinstance(params, AugParams) else params
    got = render(images, views, mean=ZERO, std=ONE, backend="fused", **kw)
    ref_kw = {k: v for k, v in kw.items() if k != "channels_last"}
    for p, out in zip(views, got):
        want = ref.render(images, p, mean=ZERO, std=ONE, **ref_kw)
        assert out.shape == want.shape and out.dtype == want.dtype
        err = (out - want).abs().max().item()
        assert err <= atol, f"max abs error {err:.3g} > {atol} (view {p.view}, size {p.size})"
    return got


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("size", [17, 40, 64])
@pytest.mark.parametrize("interpolation, antialias", [("bicubic", True), ("bicubic", False),
                                                      ("bilinear", True), ("bilinear", False)])
def test_resized_crop_down_and_up(ragged, size, interpolation, antialias):
    """Downscale (large crops to 17) and upscale (crops smaller than the output)."""
    check(ragged, centre_crops(ragged, size), interpolation=interpolation, antialias=antialias)
    tiny = with_fields(AugParams.identity(sizes_of(ragged), size), top=[3, 0, 50, 22], left=[5, 7, 0, 18],
                       height=[9, 1, 7, 1], width=[7, 13, 1, 1])
    check(ragged, tiny, interpolation=interpolation, antialias=antialias)


def test_flip(ragged):
    p = with_fields(centre_crops(ragged, 33), flip=[True, False, True, True])
    check(ragged, p)


@pytest.mark.parametrize("rotation_interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("size", [17, 40])
def test_rotation(ragged, rotation_interpolation, size):
    """Angles where nearest-neighbour ties are everywhere (multiples of 45 and 90 degrees) and
    generic ones; odd and even sizes."""
    for angles in ([90.0, -90.0, 180.0, 45.0], [-45.0, 30.5, -89.99, 1e-3], [135.0, -180.0, 270.0, 7.25]):
        p = with_fields(centre_crops(ragged, size), angle=angles, flip=[True, False, False, True])
        check(ragged, p, rotation_interpolation=rotation_interpolation)


def test_nearest_rotation_many_angles():
    """Half a million rotated pixels of noise at random angles, nearest neighbour, no pixel
    excluded: every source pick agrees with the reference's. (Exact half-pixel ties do not occur
    for square outputs; near ties, within 1e-5 px, are about 1 in 50000 pixels here.)"""
    gen = torch.Generator().manual_seed(17)
    batch = torch.randint(0, 256, (240, 3, 50, 50), dtype=torch.uint8, generator=gen)
    p = AugParams.identity(sizes_of(batch), 48)
    p = with_fields(p, angle=torch.rand(240, generator=gen) * 360 - 180)
    got = fused01(batch, p)
    want = ref.render(batch, p, mean=ZERO, std=ONE)
    assert (got - want).abs().max().item() <= ATOL


@pytest.mark.parametrize("rotation_interpolation", ["nearest", "bilinear"])
# sigma 35: a field blur radius of 140, beyond the 127 taps the CUDA kernels cache in shared memory
@pytest.mark.parametrize("sigma, alpha", [(5.0, 100.0), (0.0, 3.0), (1.5, 40.0), (9.0, 200.0), (35.0, 300.0)])
def test_elastic(ragged, sigma, alpha, rotation_interpolation):
    p = with_fields(centre_crops(ragged, 23), elastic=True, elastic_seed=[0, 12345, 2**32 - 1, 987654321],
                    angle=[0.0, 33.0, -71.5, 90.0])
    p = dataclasses.replace(p, elastic_alpha=alpha, elastic_sigma=sigma)
    check(ragged, p, rotation_interpolation=rotation_interpolation)


# ----------------------------------------------------------------------------- colour
@pytest.mark.parametrize("op, values", [
    ("brightness", [0.0, 0.6, 1.4, 2.5]),
    ("contrast", [0.0, 0.6, 1.4, 2.5]),
    ("saturation", [0.0, 0.8, 1.2, 3.0]),
    ("hue", [-0.5, -0.1, 0.07, 0.5]),
])
def test_each_jitter_op(ragged, op, values):
    p = with_fields(centre_crops(ragged, 21), jitter=True, **{op: values})
    check(ragged, p)


@pytest.mark.parametrize("factor", [300.0, 3000.0])
def test_large_factors_scale_the_tolerance(ragged, factor):
    """Colour factors far beyond any recipe's, which the config accepts (up to 1e6):
    (x - m) f + m and g + f (x - g) multiply the renderers' float32 rounding differences (the
    contrast mean, the resize sums) by f. The bound is 1e-4 x max(1, f / 100) (README);
    measured 0.5e-4 to 0.9e-4 at f = 300 and 3.6e-4 to 5.4e-4 at 3000 here."""
    p = centre_crops(ragged, 29)
    bound = ATOL * max(1.0, factor / 100)
    check(ragged, with_fields(p, jitter=True, contrast=[factor, 1.0, factor, factor / 7]), atol=bound)
    check(ragged, with_fields(p, jitter=True, saturation=[factor, factor / 3, 1.0, factor]), atol=bound)


def test_large_elastic_strength_scales_the_tolerance(ragged):
    """An elastic strength far beyond the recipe's 100 multiplies the rounding differences of the
    blurred noise (conv1d's sums against the kernels' tap loops) into displacements of alpha / 2
    times the noise in pixels. The bound is 1e-4 x max(1, alpha / 1e4) (README); measured 1.9e-4
    at alpha = 3e4 on this 128-pixel view, where about 1% of the pixels stay inside the image."""
    alpha = 3e4
    p = with_fields(centre_crops(ragged, 128), elastic=True, elastic_seed=[3, 1234, 2**32 - 7, 55])
    views = check(ragged, dataclasses.replace(p, elastic_alpha=alpha, elastic_sigma=5.0),
                  atol=ATOL * max(1.0, alpha / 1e4))
    assert (views[0] != 0).any()  # not every pixel displaced outside


def test_jitter_in_random_orders(ragged):
    gen = torch.Generator().manual_seed(3)
    base = with_fields(centre_crops(ragged, 19), jitter=[True, True, True, False], brightness=[1.3, 0.7, 1.1, 0.6],
                       contrast=[0.65, 1.35, 1.2, 1.3], saturation=[1.15, 0.85, 0.9, 1.1], hue=[0.08, -0.09, 0.03, 0.1])
    for _ in range(6):
        order = torch.stack([torch.randperm(4, generator=gen) for _ in range(len(ragged))])
        check(ragged, with_fields(base, order=order))


def test_grayscale_blur_solarize(ragged):
    p = centre_crops(ragged, 25)
    check(ragged, with_fields(p, grayscale=[True, False, True, True]))
    check(ragged, with_fields(p, blur_sigma=[0.1, 1.3, 2.0, 0.0]))
    # a radius beyond the image reflects periodically
    check(ragged, with_fields(p, blur_sigma=[9.5, 3.0, 20.0, 0.5]))
    # radii 135 and 180: beyond the taps the CUDA kernels cache in shared memory (127); 127 itself
    # (ceil(3 * 42.2)), the largest radius the cache holds
    check(ragged, with_fields(p, blur_sigma=[45.0, 0.0, 60.0, 1.0]))
    check(ragged, with_fields(p, blur_sigma=[42.2, 1.0, 42.2, 0.0]))
    check(ragged, with_fields(p, solarize=[True, False, True, True]))


# ----------------------------------------------------------------------------- whole pipeline
@pytest.mark.parametrize("preset", ["baug", "caug", "caug+"])
@pytest.mark.parametrize("interpolation, antialias", [("bicubic", True), ("bilinear", False)])
def test_presets(ragged, preset, interpolation, antialias):
    params = sample_params(ragged, preset, global_size=40, local_size=17, n_local=3, seed=11, step=2,
                           global2_solarize_p=0.7, jitter_p=1.0)
    check(ragged, params, interpolation=interpolation, antialias=antialias)


def test_many_samples_caug_plus():
    """A larger random batch, so every op and many parameter draws meet."""
    gen = torch.Generator().manual_seed(5)
    images = [torch.randint(0, 256, (3, int(h), int(w)), dtype=torch.uint8, generator=gen)
              for h, w in torch.randint(20, 70, (12, 2), generator=gen)]
    params = sample_params(images, "caug+", global_size=29, local_size=15, n_local=2, seed=4,
                           global_blur_p=0.5, global_solarize_p=0.5)
    for rot in ("nearest", "bilinear"):
        check(images, params, rotation_interpolation=rot)


def test_grayscale_input(ragged):
    gray = [x[:1].contiguous() for x in ragged]
    params = sample_params(gray, "caug+", global_size=27, local_size=13, n_local=1, seed=2)
    check(gray, params)


def test_dense_batch_is_viewed_not_copied():
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (3, 3, 31, 45), dtype=torch.uint8, generator=gen)
    pixels, offsets, sizes = _fused.pack_images(list(batch.unbind(0)))
    assert pixels.data_ptr() == batch.data_ptr() and pixels.numel() == batch.numel()
    assert offsets.tolist() == [0, 3 * 31 * 45, 6 * 31 * 45] and sizes.tolist() == [[31, 45]] * 3
    check(batch, sample_params(batch, "caug", global_size=20, local_size=11, n_local=1))
    shuffled = [batch[2], batch[0], batch[1]]
    pixels, _, _ = _fused.pack_images(shuffled)
    assert pixels.data_ptr() != batch.data_ptr()
    check(shuffled, sample_params(shuffled, "caug", global_size=20, local_size=11, n_local=1))


# ----------------------------------------------------------------------------- dtypes, layouts
@pytest.mark.parametrize("out_dtype, ulp", [(torch.float16, 2.0 ** -10), (torch.bfloat16, 2.0 ** -7)])
def test_half_outputs_are_the_float32_result_rounded(ragged, out_dtype, ulp):
    params = sample_params(ragged, "caug+", global_size=24, local_size=13, n_local=1, seed=9)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    full = render(ragged, params, mean=mean, std=std, backend="fused")
    half = render(ragged, params, mean=mean, std=std, out_dtype=out_dtype, backend="fused")
    for p, f, h in zip(params, full, half):
        assert h.dtype == out_dtype
        assert torch.equal(h, f.to(out_dtype))
        want = ref.render(ragged, p, mean=mean, std=std)
        # one ulp of the dtype at the value's magnitude, plus the float32 tolerance over std
        bound = ulp * want.abs().clamp(min=1.0) + ATOL / min(std)
        assert ((h.float() - want).abs() <= bound).all()


def test_half_outputs_round_ties_to_even():
    """Outputs exactly halfway between two half-precision values round to the even one, as
    torch's casts do. A white pixel's 1 - mean is, per channel, a bfloat16 tie rounding down
    (1 + 2^-8), one rounding up (1 + 3 * 2^-8) and a float16 tie (1 + 2^-11); photos under
    ImageNet normalisation almost never land on one."""
    images = [torch.full((3, 9, 11), 255, dtype=torch.uint8), torch.zeros(3, 7, 6, dtype=torch.uint8)]
    mean = (-2.0 ** -8, -3 * 2.0 ** -8, -2.0 ** -11)
    params = [AugParams.identity(sizes_of(images), 8)]
    full = render(images, params, mean=mean, std=ONE, backend="fused")[0]
    assert torch.equal(full[0, :, 0, 0], 1 - torch.tensor(mean))
    for out_dtype in (torch.float16, torch.bfloat16):
        half = render(images, params, mean=mean, std=ONE, out_dtype=out_dtype, backend="fused")[0]
        assert torch.equal(half, full.to(out_dtype)), out_dtype


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_channels_last(ragged, out_dtype):
    params = sample_params(ragged, "caug", global_size=22, local_size=11, n_local=2, seed=1)
    nchw = render(ragged, params, out_dtype=out_dtype, backend="fused")
    nhwc = render(ragged, params, out_dtype=out_dtype, channels_last=True, backend="fused")
    for a, b in zip(nchw, nhwc):
        assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
        assert a.is_contiguous()
        assert torch.equal(a, b)


def test_views_of_one_size_share_storage(ragged):
    params = sample_params(ragged, "baug", global_size=20, local_size=10, n_local=3)
    views = render(ragged, params, backend="fused")
    assert views[0].untyped_storage().data_ptr() == views[1].untyped_storage().data_ptr()
    assert views[2].untyped_storage().data_ptr() == views[4].untyped_storage().data_ptr()


def test_rerendering_is_bit_identical(ragged):
    params = sample_params(ragged, "caug+", global_size=30, local_size=14, n_local=2, seed=8)
    first = render(ragged, params, backend="fused")
    again = render(ragged, params, backend="fused")
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with torch_threads(1):
        single = render(ragged, params, backend="fused")
    assert all(torch.equal(a, b) for a, b in zip(first, single))


def test_multicrop_fused_matches_reference_backend(ragged):
    """A full MultiCrop draw through the public API, both backends, normalised output."""
    mc = dict(n_local=4, global_size=36, local_size=16, seed=21, global_blur_p=0.6)
    fused_views, fused_params = MultiCrop("caug+", backend="fused", **mc)(ragged, step=3)
    ref_views, ref_params = MultiCrop("caug+", backend="reference", **mc)(ragged, step=3)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    assert len(fused_views) == len(ref_views) == 6
    for a, b in zip(fused_views, ref_views):
        assert a.shape == b.shape
        assert ((a - b).abs() * std).max().item() <= ATOL


# ----------------------------------------------------------------------------- errors, fake
def _op_args(ragged):
    params = sample_params(ragged, "baug", global_size=12, local_size=8, n_local=0)
    pixels, offsets, sizes = _fused.pack_images(ragged)
    iparams, fparams = _fused.param_tables(params[:1])
    return [pixels, offsets, sizes, 3, iparams, fparams, 12, [0.0] * 3, [1.0] * 3, True, 0, 0,
            torch.float32, False]


@pytest.mark.parametrize("index, value, match", [
    (0, "float", "pixels must be a flat uint8"),
    (1, "int32", "offsets must be an int64"),
    (2, "short", "sizes must be an int64"),
    (3, 2, "channels must be 1 or 3"),
    (4, "cols", "iparams must be an int64 tensor of shape"),
    (5, "double", "fparams must be a float32"),
    (6, 0, "size must be"),
    (8, [1.0, 0.0, 1.0], "std must have 3 values > 0"),
    (8, [1.0, math.inf, 1.0], "std must have 3 values > 0, each a finite normal float32"),
    (8, [1.0, 1e-50, 1.0], "std must have 3 values > 0, each a finite normal float32"),
    (7, [0.0, math.nan, 0.0], "mean must have 3 values, each finite in float32"),
    (7, [0.0, 1e39, 0.0], "mean must have 3 values, each finite in float32"),
    (10, 2, "interpolation must be 0"),
    (11, 5, "rotation_interpolation must be 0"),
    (12, torch.float64, "out_dtype must be float32"),
    (4, "crop", "crop box"),
    (4, "order", r"order \(0, 0, 1, 2\) is not a permutation"),
    (4, "image", "image index"),
    (1, "offset", "runs outside pixels"),
    (5, "grad", "requires grad"),
    (5, "noncontig", "fparams must be contiguous"),
])
def test_op_argument_errors(ragged, index, value, match, renderer):
    args = _op_args(ragged)
    x = args[index]
    if value == "float":
        x = x.float()
    elif value in ("int32", "short", "double"):
        x = x.to(getattr(torch, value))
    elif value == "cols":
        x = x[:, :14].contiguous()
    elif value == "crop":
        x = x.clone()
        x[0, 3] = 10_000
    elif value == "order":
        x = x.clone()
        x[0, 9:13] = torch.tensor([0, 0, 1, 2])
    elif value == "image":
        x = x.clone()
        x[0, 0] = 4
    elif value == "offset":
        x = x.clone()
        x[-1] = args[0].numel() - 5
    elif value == "grad":
        x = x.clone().requires_grad_()
    elif value == "noncontig":
        x = torch.cat([x, x], dim=1)[:, ::2]
    else:
        x = value
    args[index] = x
    with pytest.raises(RuntimeError, match=match):
        torch.ops.clever_kernels.render_views(*args)


@pytest.mark.parametrize("column, name", [(5, "blur sigma"), (7, "elastic sigma")])
def test_op_takes_sigmas_up_to_the_python_bound(ragged, column, name, renderer):
    args = _op_args(ragged)
    args[5] = args[5].clone()
    args[5][:, column] = MAX_SIGMA
    if renderer == "cpu-kernel":  # a blur radius of 3000 takes minutes emulated block by block
        assert torch.isfinite(torch.ops.clever_kernels.render_views(*args)).all()
    for bad in (MAX_SIGMA * (1 + 1e-6), -1e-6, math.inf, -math.inf, math.nan):
        args[5][:, column] = bad
        with pytest.raises(RuntimeError, match=f"{name} must be in \\[0, {MAX_SIGMA:g}\\]"):
            torch.ops.clever_kernels.render_views(*args)


@pytest.mark.parametrize("column", [0, 1, 2, 3, 4, 6])  # angle, the four factors, elastic alpha
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_op_rejects_non_finite_parameters(ragged, column, value, renderer):
    """A non-finite angle, jitter factor or elastic strength in any row is refused by name, not
    rendered as a view of NaN; the row is not the first, so the kernels must check every row."""
    args = _op_args(ragged)
    row = len(ragged) - 1
    args[5] = args[5].clone()
    args[5][row, column] = value
    with pytest.raises(RuntimeError, match=f"fparams\\[{row}\\] holds a non-finite value"):
        torch.ops.clever_kernels.render_views(*args)


@pytest.mark.parametrize("size", [(0, 5), (5, 0), (2**20 + 1, 1)])
def test_op_rejects_invalid_image_sizes(ragged, size, renderer):
    args = _op_args(ragged)
    args[2] = args[2].clone()
    args[2][1] = torch.tensor(size)
    with pytest.raises(RuntimeError, match=r"sizes\[1\] = .* is not a valid image size"):
        torch.ops.clever_kernels.render_views(*args)


def test_python_side_errors(ragged):
    params = sample_params(ragged, "baug", global_size=12, local_size=8, n_local=1)
    with pytest.raises(ValueError, match="same size"):
        _fused.render_views(ragged, params, ZERO, ONE)
    with pytest.raises(ValueError, match="out_dtype"):
        _fused.render_views(ragged, params[:1], ZERO, ONE, out_dtype=torch.float64)
    with pytest.raises(ValueError, match="interpolation"):
        _fused.render_views(ragged, params[:1], ZERO, ONE, interpolation="lanczos")
    with pytest.raises(TypeError, match="antialias must be a bool"):
        _fused.render_views(ragged, params[:1], ZERO, ONE, antialias="False")
    with pytest.raises(TypeError, match="channels_last must be a bool"):
        render(ragged, params[:1], channels_last="no")
    with pytest.raises(ValueError, match="requires grad"):
        bad = dataclasses.replace(params[0], angle=params[0].angle.clone().requires_grad_())
        _fused.render_views(ragged, [bad], ZERO, ONE)
    with pytest.raises(ValueError, match="group: no views to render"):
        _fused.render_views(ragged, [], ZERO, ONE)
    with pytest.raises(ValueError, match="params: empty list of views"):
        render(ragged, [])


def test_fake_impl(ragged, renderer):
    cpu_kernel_only(renderer, "the fake implementation belongs to clever_kernels::render_views")
    from torch._subclasses.fake_tensor import FakeTensorMode
    args = _op_args(ragged)
    args[-2], args[-1] = torch.bfloat16, True
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = torch.ops.clever_kernels.render_views(*args)
        assert out.shape == (len(ragged), 3, 12, 12) and out.dtype == torch.bfloat16
        assert out.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- radii at rounding edges
def test_blur_and_elastic_radii_at_rounding_edges(ragged):
    """Sigmas where the radius rules differ from plain rounding: blur radius ceil(3 sigma) with
    3 sigma just above an integer (1.1 -> 4, 0.45 -> 2, 2.35 -> 8), and elastic kernels whose
    int(8 sigma + 1) is even and is made odd by adding one (1.2 -> 11 taps, 2.2 -> 19, 0.15 -> 3)."""
    p = centre_crops(ragged, 21)
    check(ragged, with_fields(p, blur_sigma=[1.1, 0.45, 2.35, 1.1]))
    q = with_fields(p, elastic=True, elastic_seed=[7, 99, 2**31 + 5, 123456])
    for sigma in (1.2, 2.2, 0.15):
        assert int(8 * sigma + 1) % 2 == 0
        check(ragged, dataclasses.replace(q, elastic_alpha=60.0, elastic_sigma=sigma))
    # Just below a step of int(8 sigma + 1) in float64 and on it in float32, as the kernels take
    # sigma (7 taps against 8, made 9): AugParams keeps the float32 value for every renderer.
    below = 0.87499999999
    assert int(8 * below + 1) == 7 and int(8 * torch.tensor(below).item() + 1) == 8
    p = dataclasses.replace(q, elastic_alpha=100.0, elastic_sigma=below)
    assert p.elastic_sigma == 0.875
    check(ragged, p)


@pytest.mark.parametrize("what", ["crop-bottom", "crop-right", "size"])
def test_op_rejects_values_just_past_their_bounds(ragged, what, renderer):
    """One past each bound: a crop box ending one row or column outside its image, an output
    side of 4081 (the CUDA grid holds at most 4080)."""
    args = _op_args(ragged)
    h, w = (int(v) for v in args[2][0])
    iparams = args[4].clone()
    if what == "crop-bottom":
        iparams[0, 1:5] = torch.tensor([1, 0, h, w])  # top 1, height h: rows 1..h
        match = "crop box"
    elif what == "crop-right":
        iparams[0, 1:5] = torch.tensor([0, 1, h, w])
        match = "crop box"
    else:
        args[6] = 4081
        match = "size must be in"
    args[4] = iparams
    with pytest.raises(RuntimeError, match=match):
        torch.ops.clever_kernels.render_views(*args)
    # the same box, one smaller, renders
    if what != "size":
        iparams[0, 3 if what == "crop-bottom" else 4] -= 1
        assert torch.isfinite(torch.ops.clever_kernels.render_views(*args)).all()
