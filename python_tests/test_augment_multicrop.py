"""MultiCrop is exactly render(images, sample_params(...)), views of one size share storage,
and a sample's views depend on its id, not on its batch."""
import numpy as np
import pytest
import torch

from clever_kernels import _backend
from clever_kernels.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCrop, make_config, render, sample_params


def _images(rng, sizes):
    return [torch.randint(0, 256, (3, h, w), generator=rng, dtype=torch.uint8) for h, w in sizes]


needs_ext = pytest.mark.skipif(not _backend.has_extension(), reason="clever_kernels._C is not built")


@pytest.fixture(params=["reference", pytest.param("fused", marks=needs_ext)])
def multicrop(request):
    return MultiCrop("caug+", n_local=3, global_size=21, local_size=9, seed=7, backend=request.param)


def test_call_equals_render_of_sample_params(rng, multicrop):
    """Also where the sample_views op hands the renderer its own tables (fused): the same views
    as the tables render() builds from the records."""
    images = _images(rng, [(30, 41), (17, 23), (40, 40)])
    views, params = multicrop(images, step=3)
    backend = multicrop.render_options["backend"]
    again = render(images, sample_params(images, multicrop.config, seed=7, step=3, backend=backend),
                   mean=multicrop.config.mean, std=multicrop.config.std, backend=backend)
    assert len(views) == 5 and [v.shape[-1] for v in views] == [21, 21, 9, 9, 9]
    for got, want in zip(views, again):
        assert torch.equal(got, want)


def test_views_of_one_size_share_one_tensor(rng, multicrop):
    views, _ = multicrop(_images(rng, [(25, 25), (31, 19)]))
    assert views[0].untyped_storage().data_ptr() == views[1].untyped_storage().data_ptr()
    assert views[2].untyped_storage().data_ptr() == views[4].untyped_storage().data_ptr()
    assert views[0].untyped_storage().data_ptr() != views[2].untyped_storage().data_ptr()


def test_sample_views_follow_its_id_not_its_batch(rng, multicrop):
    images = _images(rng, [(30, 41), (17, 23), (40, 40)])
    ids = torch.tensor([10, 11, 12])
    views, params = multicrop(images, step=1, ids=ids)
    alone, alone_params = multicrop([images[1]], step=1, ids=ids[1:2])
    for v, a in zip(views, alone):
        assert torch.equal(v[1:2], a)
    for p, a in zip(params, alone_params):
        torch.testing.assert_close(p.to_tensor()[1:2], a.to_tensor())
    other_step, _ = multicrop(images, step=2, ids=ids)
    assert not torch.equal(other_step[0], views[0])


def test_channels_last_and_dtype(rng):
    mc = MultiCrop("baug", n_local=2, global_size=12, local_size=6, out_dtype=torch.bfloat16, channels_last=True,
                   backend="reference")
    views, _ = mc(torch.randint(0, 256, (2, 3, 20, 22), generator=rng, dtype=torch.uint8))
    assert all(v.dtype == torch.bfloat16 and v.is_contiguous(memory_format=torch.channels_last) for v in views)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_local=-1), "n_local"),
    (dict(global_size=0), "size"),
    (dict(flip_p=1.5), "flip_p"),
    (dict(seed=1.5), "seed"),
    # render options are refused at construction, whatever the backend
    (dict(out_dtype=torch.float64), "out_dtype"),
    (dict(out_dtype=torch.float64, backend="reference"), "out_dtype"),
    (dict(interpolation="lanczos"), "interpolation"),
    (dict(rotation_interpolation="bicubic"), "rotation_interpolation"),
    (dict(backend="gpu"), "backend"),
    (dict(antialias="False"), "antialias must be a bool"),
    (dict(channels_last="no"), "channels_last must be a bool"),
    (dict(seed=2**64), "seed must fit in int64"),
])
def test_bad_config_names_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MultiCrop("caug", **kwargs)


def test_numpy_integer_seed_and_bool_flags():
    mc = MultiCrop("baug", n_local=0, global_size=8, seed=np.int64(3), antialias=np.False_,
                   channels_last=np.True_)
    assert type(mc.seed) is int and mc.seed == 3
    views, _ = mc(torch.zeros(2, 3, 20, 20, dtype=torch.uint8))
    assert views[0].is_contiguous(memory_format=torch.channels_last)


def test_unprefixed_overrides_and_configs_are_not_shadowed():
    """MultiCrop's named sizes and scales apply only when given: `size=` / `scale=` reach every
    view, an AugConfig keeps its own values, and MultiCrop draws what sample_params draws."""
    mc = MultiCrop("baug", n_local=1, size=16, scale=(0.9, 1.0))
    assert [v.size for v in mc.config.views()] == [16, 16, 16]
    assert all(v.scale == (0.9, 1.0) for v in mc.config.views())
    sizes = torch.tensor([[40, 50], [33, 21]])
    for a, b in zip(mc.sample_params(sizes, step=4), sample_params(sizes, "baug", n_local=1, size=16,
                                                                      scale=(0.9, 1.0), step=4)):
        assert torch.equal(a.to_tensor(torch.float64), b.to_tensor(torch.float64))
    cfg = make_config("caug", n_local=2, global_size=32, local_size=16, global_scale=(0.9, 1.0))
    assert MultiCrop(cfg).config == cfg
    assert MultiCrop(cfg, local_size=8).config == make_config(cfg, local_size=8)
    default = MultiCrop("caug").config
    assert (default.n_local, default.global1.size, default.local.size) == (8, 224, 96)
    assert (default.global1.scale, default.local.scale) == ((0.4, 1.0), (0.05, 0.4))


@pytest.mark.parametrize("images,match", [
    (torch.zeros(2, 3, 8, 8), "uint8"),
    ([], "empty"),
    ([torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(1, 8, 8, dtype=torch.uint8)], "channel"),
    # the kernels' bound on a side, refused by the reference backend too
    ([torch.zeros(1, 1, 2**20 + 1, dtype=torch.uint8)], "each side must be at most 1048576"),
])
def test_bad_images_name_the_argument(images, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MultiCrop("caug", n_local=1, global_size=8, local_size=4, backend="reference")(images)


def test_fused_render_checks_values_in_one_host_copy(rng, monkeypatch):
    """The fused render() checks every view's values with one device-to-host copy (a wait on a
    GPU); MultiCrop's own fresh draws are not copied at all; a bad value in any view still
    raises. (The reference renderer reads every sample's values on the host anyway.)"""
    import clever_kernels
    from clever_kernels.reference import augment as ref
    if not clever_kernels.backends()["cpu-ext"].available:
        pytest.skip("C++ extension not built")
    calls = []
    original = ref.check_param_values
    monkeypatch.setattr(ref, "check_param_values", lambda views, images: (calls.append(len(views)),
                                                                          original(views, images)))
    mc = MultiCrop("caug", n_local=4, global_size=15, local_size=7, backend="fused")
    images = _images(rng, [(30, 41), (17, 23)])
    views, params = mc(images)
    assert calls == []
    mc.render(images, params)
    render(images, params, backend="fused")
    assert calls == [6, 6]
    bad = params[4].index(slice(None))
    bad.top[1] = 100
    with pytest.raises(ValueError, match="params of view 4: crop box .* of sample 1 is not inside"):
        render(images, params[:4] + [bad] + params[5:], backend="fused")
    bad = params[3].index(slice(None))
    bad.order[0] = torch.tensor([0, 1, 1, 3])
    with pytest.raises(ValueError, match=r"params of view 3: order of sample 0 is \[0, 1, 1, 3\]"):
        render(images, params[:3] + [bad] + params[4:], backend="fused")


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_render_refuses_params_drawn_for_other_images(rng, backend):
    """Crop boxes are in source pixels: parameters drawn for one image, rendered on a larger
    one, would crop another region of it without any error. render() compares the sizes each
    sample was drawn for with the images it is given, on every backend."""
    import clever_kernels
    from clever_kernels.augment import _fused
    from clever_kernels.reference import augment as ref
    if backend == "fused" and not clever_kernels.backends()["cpu-ext"].available:
        pytest.skip("C++ extension not built")
    small = _images(rng, [(30, 41), (17, 23)])
    large = _images(rng, [(30, 41), (34, 46)])  # every crop box of `small` lies inside these
    params = sample_params(small, "caug", n_local=2, seed=1)
    render(small, params, backend=backend)
    match = r"params of view 0: sample 1 was drawn for a 17x23 image .* but images\[1\] is 34x46"
    with pytest.raises(ValueError, match=match):
        render(large, params, backend=backend)
    with pytest.raises(ValueError, match=match):
        MultiCrop("caug", n_local=2, backend=backend).render(large, params)
    with pytest.raises(ValueError, match="was drawn for a"):
        if backend == "fused":
            _fused.render_views(large, params[2:], IMAGENET_MEAN, IMAGENET_STD)
        else:
            ref.render(large, params[2], IMAGENET_MEAN, IMAGENET_STD)
    swapped = [small[1], small[0]]  # same images, other order: sample 0 is no longer its image
    with pytest.raises(ValueError, match=r"sample 0 was drawn for a 30x41 image .* images\[0\] is 17x23"):
        render(swapped, params, backend=backend)


def test_normalises_with_the_configured_mean_and_std(rng):
    """mean=..., std=... override the config's normalisation, and MultiCrop renders with it."""
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    mc = MultiCrop("baug", n_local=1, global_size=12, local_size=6, seed=2, mean=mean, std=std,
                   backend="reference")
    assert mc.config.mean == mean and mc.config.std == std
    images = _images(rng, [(20, 26), (15, 31)])
    views, params = mc(images)
    for got, want in zip(views, render(images, params, mean=mean, std=std, backend="reference")):
        assert torch.equal(got, want)


@needs_ext
def test_multicrop_makes_the_same_calls_for_any_number_of_views(rng):
    """One draw op, one render op per view size, and the packing of the images: the ATen calls
    that do work (views and slices aside, which launch nothing on a GPU) do not grow with the
    number of views, as building each view's render table would make them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountWork(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                self.calls.append(str(func))
            return func(*args, **(kwargs or {}))

    images = _images(rng, [(30, 41), (17, 23), (40, 40)])
    calls = {}
    for n_local in (1, 8):
        mc = MultiCrop("caug+", n_local=n_local, global_size=15, local_size=7, backend="fused")
        mc(images)  # the recipe's constants are copied on a first call
        with CountWork() as count:
            mc(images, step=1)
        calls[n_local] = count.calls
    assert calls[1] == calls[8], calls
    assert calls[8].count("clever_kernels.sample_views.default") == 1
    assert calls[8].count("clever_kernels.render_views.default") == 2
    assert len(calls[8]) <= 10, calls[8]


@needs_ext
@pytest.mark.parametrize("ragged", [False, True])
def test_multicrop_copies_the_image_geometry_to_the_device_once(rng, monkeypatch, ragged):
    """The packed images' offsets and sizes go to the device in one copy, and the draws read
    the sizes from it: on a GPU each host-to-device copy is a stream operation of its own."""
    copies = []
    real = _backend.host_to_device

    def counted(t, device):
        copies.append(t.tolist())
        return real(t, device)

    monkeypatch.setattr(_backend, "host_to_device", counted)
    sides = [(30, 41), (17, 23), (40, 40)] if ragged else [(30, 41)] * 3
    images = _images(rng, sides)
    batch = images if ragged else torch.stack(images)
    mc = MultiCrop("caug", n_local=2, global_size=15, local_size=7, backend="fused")
    views, params = mc(batch, step=3)
    starts = np.cumsum([0] + [3 * h * w for h, w in sides[:-1]]).tolist()
    assert copies == [starts + [side for hw in sides for side in hw]]
    want = render(batch, sample_params(batch, mc.config, seed=0, step=3), backend="fused")
    assert all(torch.equal(a, b) for a, b in zip(views, want))
