"""render(images, params): every view of a multi-crop draw, views of one size in one tensor.

The fused kernels render all views of one output size in one call (`torch.ops.clever_kernels.
render_views`, C++ on the CPU, CUDA on GPUs); the reference renders view by view.
"""
import warnings
from typing import List, Sequence, Union

import torch

from .. import _backend
from ..reference import augment as reference
from .config import IMAGENET_MEAN, IMAGENET_STD
from .params import AugParams, group_by_size

Tensor = torch.Tensor
_warned = set()


#: What render() writes, on every backend (the kernels store these three).
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKENDS = ("auto", "fused", "reference")


def check_options(mean, std, antialias: bool, channels_last: bool, interpolation: str,
                  rotation_interpolation: str, out_dtype: torch.dtype, backend: str = "auto"):
    """The rendering options, the same for every backend; returns (mean, std, antialias,
    channels_last): mean and std as float tuples, the flags as Python bools. Raises naming a bad
    option."""
    mean, std = reference._check_norm(mean, std)
    antialias = reference._check_flag("antialias", antialias)
    channels_last = reference._check_flag("channels_last", channels_last)
    reference._check_choice("interpolation", interpolation, reference.INTERPOLATIONS)
    reference._check_choice("rotation_interpolation", rotation_interpolation, reference.ROTATION_INTERPOLATIONS)
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    reference._check_choice("backend", backend, BACKENDS)
    return mean, std, antialias, channels_last


def resolve_backend(backend: str, device: torch.device, op: str = "render_views", warn: bool = True) -> str:
    """"fused" (the extension's `op`) or "reference" for a backend name check_options has
    accepted; "auto" falls back to the reference, with a warning unless `warn` is off (the
    sampler's reference draws the op's very bits)."""
    if backend == "reference":
        return "reference"
    if _backend.kernel_available(op, device):
        return "fused"
    why = (f"no {op} kernel for {device.type} tensors "
           f"({_backend.backends()['cpu-ext' if device.type == 'cpu' else 'cuda'].reason})")
    if backend == "fused":
        raise RuntimeError(f"backend='fused' unavailable: {why}")
    if warn and why not in _warned:
        _warned.add(why)
        warnings.warn(f"clever_kernels.augment: {why}; rendering with the plain-PyTorch reference",
                      RuntimeWarning, stacklevel=3)
    return "reference"


def render(images, params: Union[AugParams, Sequence[AugParams]], mean: Sequence[float] = IMAGENET_MEAN,
           std: Sequence[float] = IMAGENET_STD, antialias: bool = True, out_dtype: torch.dtype = torch.float32,
           channels_last: bool = False, interpolation: str = "bicubic", rotation_interpolation: str = "nearest",
           backend: str = "auto") -> Union[Tensor, List[Tensor]]:
    """Renders views from recorded parameters; a pure function of (images, params).

    images: (B, C, H, W) uint8 or a list of B uint8 (C, Hi, Wi) images on one device (C 1 or 3).
    params: one AugParams (returns a (B, 3, S, S) tensor) or a list of them (returns a list of
    views in the same order; views of one size are slices of one (n*B, 3, S, S) tensor, so a
    model can run one forward per resolution on `torch.cat`-free storage).
    Pixel semantics: clever_kernels.reference.augment. out_dtype float32, float16 or bfloat16;
    channels_last gives NHWC memory format. backend: "auto", "fused" or "reference".
    """
    return render_checked(images, params, mean, std, antialias, out_dtype, channels_last, interpolation,
                          rotation_interpolation, backend, check_values=True)


def render_checked(images, params, mean, std, antialias, out_dtype, channels_last, interpolation,
                   rotation_interpolation, backend, check_values: bool, tables=None, packed=None):
    """render() with the choice to skip the checks of the parameter values (crop boxes, blur
    sigmas, orders), which cost a device-to-host copy on a GPU: MultiCrop skips them for the
    parameters sample_params has just drawn, which are valid by construction. tables: the
    render_views tables of all of `params` (rows view-major), as the sample_views op draws them
    with the parameters: the fused renderer then slices them instead of building its own.
    packed: `_fused.pack_images(images)` where the caller has packed them already."""
    single = isinstance(params, AugParams)
    views = [params] if single else list(params)
    if not views:
        raise ValueError("params: empty list of views")
    images = reference._check_images(images)
    reference.check_views(views, images, values=check_values)
    mean, std, antialias, channels_last = check_options(mean, std, antialias, channels_last, interpolation,
                                                        rotation_interpolation, out_dtype, backend)
    impl = resolve_backend(backend, images[0].device)
    groups = group_by_size(views)
    out: List[Tensor] = [None] * len(views)
    batch = len(images)
    if impl == "fused":
        from . import _fused
        packed = _fused.pack_images(images) if packed is None else packed
    for size, members in groups.items():
        group = [views[i] for i in members]
        if impl == "fused":
            first, last = members[0], members[-1]
            if tables is not None and members == list(range(first, last + 1)):  # consecutive rows
                group_tables = tuple(t[first * batch:(last + 1) * batch] for t in tables)
            else:
                group_tables = _fused.param_tables(group)
            stacked = _fused.render_tables(packed, images[0].shape[0], group_tables, size, mean, std, antialias,
                                           out_dtype, channels_last, interpolation, rotation_interpolation)
        else:
            stacked = torch.cat([reference.render(images, p, mean, std, antialias, out_dtype, interpolation,
                                                  rotation_interpolation) for p in group])
            if channels_last:
                stacked = stacked.contiguous(memory_format=torch.channels_last)
        for j, i in enumerate(members):
            out[i] = stacked[j * batch:(j + 1) * batch]
    return out[0] if single else out
