"""Python side of the fused renderer: packs images and parameters for
`torch.ops.clever_kernels.render_views` (C++ on the CPU, CUDA on GPUs; contract in csrc/ops.cpp).

The kernels follow clever_kernels.reference.augment.render in every mode, antialias=False
included, so backend="fused" and backend="reference" agree for every option.
"""
from typing import List, Sequence, Tuple

import torch

from .. import _backend
from ..reference import augment as reference
from .params import AugParams
from .render import check_options

Tensor = torch.Tensor

#: Columns of render_views' parameter tables (augment::kNumIParams, kNumFParams in
#: csrc/include/clever_kernels/augment_pixel.h).
INT_COLUMNS, FLOAT_COLUMNS = 15, 8

_INTERPOLATION = {"bicubic": 0, "bilinear": 1}
_ROTATION_INTERPOLATION = {"nearest": 0, "bilinear": 1}


def pack_images(images: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """One flat uint8 buffer holding every (C, Hi, Wi) image back to back, never padded.

    Returns (pixels (P,) uint8, offsets (B,) int64, sizes (B, 2) int64), the last two on the
    images' device. Images that already sit back to back in one storage (the slices of a dense
    (B, C, H, W) batch) are viewed, not copied.
    """
    device = images[0].device
    numels = [x.numel() for x in images]
    starts = [0]
    for n in numels[:-1]:
        starts.append(starts[-1] + n)
    first = images[0]
    adjacent = all(x.is_contiguous() for x in images) and all(
        x.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and x.storage_offset() == first.storage_offset() + s for x, s in zip(images, starts))
    if adjacent:
        pixels = first.as_strided((sum(numels),), (1,))
    else:
        pixels = torch.cat([x.reshape(-1) for x in images])
    # offsets and sizes travel in one host-to-device copy
    batch = len(images)
    geometry = starts + [side for x in images for side in x.shape[1:]]
    geometry = _backend.host_to_device(torch.tensor(geometry, dtype=torch.int64), device)
    return pixels, geometry[:batch], geometry[batch:].view(batch, 2)


def param_tables(group: Sequence[AugParams]) -> Tuple[Tensor, Tensor]:
    """(iparams (N, 15) int64, fparams (N, 8) float32) for the views of `group`, view-major
    (row j*B + b is view j of sample b); columns as in csrc/ops.cpp. Built with tensor ops on
    the parameters' device, so a GPU batch needs no host round trip."""
    ints, floats = [], []
    for p in group:
        batch, device = p.batch_size, p.device
        image = torch.arange(batch, dtype=torch.int64, device=device)
        as_int = lambda t: t.to(torch.int64)
        ints.append(torch.cat([
            torch.stack([image, p.top, p.left, p.height, p.width, as_int(p.flip), as_int(p.elastic),
                         p.elastic_seed & 0xFFFFFFFF, as_int(p.jitter)], dim=1),
            p.order,
            torch.stack([as_int(p.grayscale), as_int(p.solarize)], dim=1),
        ], dim=1))
        alpha = torch.full((batch,), p.elastic_alpha, dtype=torch.float32, device=device)
        sigma = torch.full((batch,), p.elastic_sigma, dtype=torch.float32, device=device)
        floats.append(torch.stack([p.angle, p.brightness, p.contrast, p.saturation, p.hue, p.blur_sigma,
                                   alpha, sigma], dim=1).detach())
    return torch.cat(ints).contiguous(), torch.cat(floats).contiguous()


def render_packed(packed: Tuple[Tensor, Tensor, Tensor], channels: int, group: Sequence[AugParams], mean, std,
                  antialias: bool, out_dtype: torch.dtype, channels_last: bool, interpolation: str,
                  rotation_interpolation: str) -> Tensor:
    """render_views on images already packed (pack_images) and checked, with checked options:
    what render() calls once per output size, packing the images once for all sizes."""
    return render_tables(packed, channels, param_tables(group), group[0].size, mean, std, antialias, out_dtype,
                         channels_last, interpolation, rotation_interpolation)


def render_tables(packed: Tuple[Tensor, Tensor, Tensor], channels: int, tables: Tuple[Tensor, Tensor], size: int,
                  mean, std, antialias: bool, out_dtype: torch.dtype, channels_last: bool, interpolation: str,
                  rotation_interpolation: str) -> Tensor:
    """The op call alone, on packed images and built parameter tables (param_tables)."""
    pixels, offsets, image_sizes = packed
    iparams, fparams = tables
    return torch.ops.clever_kernels.render_views(
        pixels, offsets, image_sizes, channels, iparams, fparams, size, list(mean), list(std),
        bool(antialias), _INTERPOLATION[interpolation], _ROTATION_INTERPOLATION[rotation_interpolation],
        out_dtype, bool(channels_last))


def render_views(images, group: Sequence[AugParams], mean: Sequence[float], std: Sequence[float],
                 antialias: bool = True, out_dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 interpolation: str = "bicubic", rotation_interpolation: str = "nearest") -> Tensor:
    """Every view in `group` (all of one output size S) of every image, in one op call.

    images: (B, C, H, W) uint8 or a list of B (C, Hi, Wi) uint8 images (C 1 or 3) on one device.
    group: AugParams of B samples each, all with the same .size. mean, std: 3 values each.
    Returns (len(group) * B, 3, S, S) of out_dtype (float32, float16, bfloat16), view-major:
    view j of sample b is row j * B + b; channels_last selects NHWC memory format.
    """
    images = reference._check_images(images)
    group = list(group)
    if not group:
        raise ValueError("group: no views to render")
    sizes = {p.size for p in group}
    if len(sizes) != 1:
        raise ValueError(f"group: every view must have the same size, got sizes {sorted(sizes)}")
    reference.check_views(group, images)
    mean, std, antialias, channels_last = check_options(mean, std, antialias, channels_last, interpolation,
                                                        rotation_interpolation, out_dtype)
    return render_packed(pack_images(images), images[0].shape[0], group, mean, std, antialias, out_dtype,
                         channels_last, interpolation, rotation_interpolation)


def _register_fake():
    if not hasattr(torch.library, "register_fake"):
        return

    @torch.library.register_fake("clever_kernels::render_views")
    def _render_views_fake(pixels, offsets, sizes, channels, iparams, fparams, size, mean, std, antialias,
                           interpolation, rotation_interpolation, out_dtype, channels_last):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return torch.empty((iparams.shape[0], 3, size, size), dtype=out_dtype, device=pixels.device,
                           memory_format=fmt)


if _backend.extension() is not None and hasattr(torch.ops.clever_kernels, "render_views"):
    _register_fake()
