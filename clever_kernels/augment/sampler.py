"""Vectorised sampling of augmentation parameters.

Every draw is `rng.hash_bits(seed, step, id, view, op, draw)` for the sample's id, so the
parameters of a sample depend only on (seed, step, id, view) and the config, never on the batch
it is in. Where the extension is built, one op draws every view of a batch
(`torch.ops.clever_kernels.sample_views`, C++ on the CPU, one CUDA launch on a GPU); the tensor
ops below (`_draw_with_tensor_ops`) are its definition and its fallback, bit for bit the same.
Neither reads a value back to the host, so sampling can be queued ahead on a GPU stream.

Op ids and draw indices (a draw's 32 bits become a float with rng.to_unit or an integer in
[0, n) with rng.to_index):

    op 0 CROP       draw 2a: area scale of attempt a, 2a+1: log aspect ratio of attempt a
                    (a = 0..9); draw 20: top; draw 21: left
    op 1 FLIP       draw 0: applied
    op 2 ROTATE     draw 0: applied, 1: angle
    op 3 ELASTIC    draw 0: applied, 1: the elastic seed (the 32 bits themselves)
    op 4 JITTER     draw 0: applied, 1: brightness, 2: contrast, 3: saturation, 4: hue,
                    5: order (index into the 24 permutations of 0..3 in lexicographic order)
    op 5 GRAYSCALE  draw 0: applied
    op 6 BLUR       draw 0: applied, 1: sigma
    op 7 SOLARIZE   draw 0: applied

"applied" is `u < p` with u = to_unit(bits), so p = 0 never and p = 1 always applies. A value in
a range (lo, hi) is lo + (hi - lo) * u. Fields of an op that is not applied hold neutral values
(angle 0, elastic seed 0, factors 1, hue 0, order 0 1 2 3, blur sigma 0).

RandomResizedCrop follows torchvision's sampling in float64, all ten attempts at once:
target_area = H * W * scale, aspect = exp(log r0 + (log r1 - log r0) * u), w = round(sqrt(
target_area * aspect)), h = round(sqrt(target_area / aspect)) (round half to even, as Python's
round); the first attempt with 0 < w <= W and 0 < h <= H wins, and top = to_index(bits, H - h + 1),
left = to_index(bits, W - w + 1). If none is accepted, torchvision's centre crop: the whole image
with its aspect ratio clamped to the range, centred with floor division. The exp is
`portable_exp`, made of IEEE operations alone (torch.exp rounds some inputs differently on the
CPU and on CUDA, which would move a box where sqrt(area * aspect) lies within an ulp of a
half-integer), so every device draws the same boxes.
"""
import enum
import functools
import math
import operator
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .. import _backend
from ..reference import augment as reference
from . import rng
from .config import AugConfig, ViewConfig, make_config
from .params import _BOOL_FIELDS, _INT_FIELDS, FLOAT_FIELDS, AugParams, as_index
from .render import BACKENDS, resolve_backend

Tensor = torch.Tensor


class Op(enum.IntEnum):
    CROP = 0
    FLIP = 1
    ROTATE = 2
    ELASTIC = 3
    JITTER = 4
    GRAYSCALE = 5
    BLUR = 6
    SOLARIZE = 7


CROP_ATTEMPTS = 10
CROP_TOP_DRAW = 2 * CROP_ATTEMPTS
CROP_LEFT_DRAW = 2 * CROP_ATTEMPTS + 1


# Draws per op, in op order: a view's draws are one (B, sum) table, column _FIRST[op] + draw.
_DRAW_COUNTS = {Op.CROP: CROP_LEFT_DRAW + 1, Op.FLIP: 1, Op.ROTATE: 2, Op.ELASTIC: 2, Op.JITTER: 6,
                Op.GRAYSCALE: 1, Op.BLUR: 2, Op.SOLARIZE: 1}
_FIRST = {op: sum(n for o, n in _DRAW_COUNTS.items() if o < op) for op in Op}
_KEY_COLUMNS = {}


def _key_columns(device: torch.device) -> Tuple[Tensor, Tensor]:
    """(op, draw) of every table column as int64 tensors on `device`, built there (no host copy)
    and kept per device."""
    if device not in _KEY_COLUMNS:
        ops = torch.cat([torch.full((n,), int(op), dtype=torch.int64, device=device)
                         for op, n in _DRAW_COUNTS.items()])
        draws = torch.cat([torch.arange(n, dtype=torch.int64, device=device) for n in _DRAW_COUNTS.values()])
        _KEY_COLUMNS[device] = ops, draws
    return _KEY_COLUMNS[device]


class _Streams:
    """The draws of V views for a batch of sample ids: every (view, op, draw) hashed in one
    broadcast call, a (V, B, 37) table, since a few dozen element-wise ops on it cost what they
    cost on (B,) (on a GPU, one launch each)."""

    def __init__(self, seed, step, ids: Tensor, views: Tensor):
        ops, draws = _key_columns(ids.device)
        self.table = rng.hash_bits(seed, step, ids[None, :, None], views[:, None, None], ops, draws)

    def bits(self, op: Op, draw: Union[int, slice]) -> Tensor:
        """(V, B) bits of one draw, or (V, B, n) for a slice of draw indices."""
        first = _FIRST[op]
        if isinstance(draw, slice):
            return self.table[:, :, first + draw.start:first + draw.stop:draw.step]
        return self.table[:, :, first + draw]

    def unit(self, op: Op, draw: Union[int, slice]) -> Tensor:
        return rng.to_unit(self.bits(op, draw))


class _ViewConstants:
    """Every view's probabilities and ranges as (V, 1) columns on the device, in the dtypes the
    per-view arithmetic uses: float32 for the draws made in float32 (so that u < p and
    lo + (hi - lo) * u round as they would with Python floats, which torch applies in float32),
    float64 for the crop's. Built once per (configs, device), by a blocking copy (the one time a
    draw waits for the device), so that every stream may read them at once; no copy per batch."""

    _F32 = ("flip_p", "rotation_p", "elastic_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p", "elastic_alpha",
            "elastic_sigma")
    _RANGES = ("degrees", "brightness", "contrast", "saturation", "hue", "blur_sigma")

    def __init__(self, configs: Sequence[ViewConfig], device: torch.device):
        f32 = {name: [getattr(c, name) for c in configs] for name in self._F32}
        for name in self._RANGES:
            f32[name + "_lo"] = [getattr(c, name)[0] for c in configs]
            f32[name + "_span"] = [getattr(c, name)[1] - getattr(c, name)[0] for c in configs]
        f64 = {
            "scale_lo": [c.scale[0] for c in configs],
            "scale_span": [c.scale[1] - c.scale[0] for c in configs],
            "log_ratio_lo": [math.log(c.ratio[0]) for c in configs],
            "log_ratio_span": [math.log(c.ratio[1]) - math.log(c.ratio[0]) for c in configs],
            "ratio_lo": [c.ratio[0] for c in configs],
            "ratio_hi": [c.ratio[1] for c in configs],
        }
        hosts = {}
        for table, dtype in ((f32, torch.float32), (f64, torch.float64)):
            names = list(table)
            host = torch.tensor([table[n] for n in names], dtype=dtype)
            hosts.update(zip(names, host.to(torch.float64)))  # float32 values are exact in float64
            columns = host.to(device)[:, :, None]  # (fields, V, 1)
            for name, column in zip(names, columns):
                setattr(self, name, column)
        # the sample_views op's (V, len(VIEW_CONSTANTS)) table
        self.packed = torch.stack([hosts[name] for name in VIEW_CONSTANTS], dim=1).to(device)


#: The sample_views op's per-view constants, in the column order of sample::ViewConstant
#: (csrc/include/clever_kernels/sample_draws.h).
VIEW_CONSTANTS = ("flip_p", "rotation_p", "elastic_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p",
                  "degrees_lo", "degrees_span", "brightness_lo", "brightness_span", "contrast_lo", "contrast_span",
                  "saturation_lo", "saturation_span", "hue_lo", "hue_span", "blur_sigma_lo", "blur_sigma_span",
                  "scale_lo", "scale_span", "log_ratio_lo", "log_ratio_span", "ratio_lo", "ratio_hi", "elastic_alpha",
                  "elastic_sigma")


@functools.lru_cache(maxsize=256)
def _view_constants(configs: Tuple[ViewConfig, ...], device: torch.device) -> _ViewConstants:
    return _ViewConstants(configs, device)


def permutation_from_index(k: Tensor) -> Tensor:
    """k in [0, 24) (int64, any shape) -> the k-th permutation of 0..3 in lexicographic order,
    shape k.shape + (4,). Decodes the Lehmer code right to left with tensor ops only."""
    digits = [k // 6, (k % 6) // 2, k % 2, torch.zeros_like(k)]
    perm = [None] * 4
    for i in range(3, -1, -1):
        perm[i] = digits[i]
        for j in range(i + 1, 4):
            perm[j] = perm[j] + (perm[j] >= perm[i]).to(k.dtype)
    return torch.stack(perm, dim=-1)


_LN2_HI, _LN2_LO, _INV_LN2 = (float.fromhex(h) for h in ("0x1.62e42fee00000p-1", "0x1.a39ef35793c76p-33",
                                                           "0x1.71547652b82fep+0"))
_EXP_COEFFICIENTS = tuple(1 / math.factorial(n) for n in range(14))


def _pow2(k: Tensor) -> Tensor:
    """2.0 ** k for int64 k in [-1022, 1023], exactly, from its bits."""
    return ((k + 1023) << 52).view(torch.float64)


def portable_exp(x: Tensor) -> Tensor:
    """exp of a float64 tensor with x in [-745, 709], within about an ulp, the same bits on every
    device: only multiplications, additions and a round, one IEEE operation each. x = k ln2 + r
    with |r| <= ln2 / 2 (Cody and Waite's two-part ln2: k * ln2_hi is exact), exp(r) by its Taylor
    polynomial of degree 13 in Horner form, 2^k applied as two exact powers of two (a subnormal
    result rounds once). csrc/include/clever_kernels/sample_draws.h repeats it operation for
    operation."""
    k = torch.round(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = torch.full_like(r, _EXP_COEFFICIENTS[13])
    for c in reversed(_EXP_COEFFICIENTS[:13]):
        p = p * r + c
    k = k.to(torch.int64)
    half = k >> 1
    return p * _pow2(half) * _pow2(k - half)


def _crop_boxes(streams: _Streams, sizes: Tensor, k: _ViewConstants) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """RandomResizedCrop boxes (top, left, height, width), int64 (V, B), for image sizes (B, 2)."""
    height = sizes[:, 0].to(torch.float64)
    width = sizes[:, 1].to(torch.float64)
    u_scale = streams.unit(Op.CROP, slice(0, 2 * CROP_ATTEMPTS, 2)).to(torch.float64)
    u_ratio = streams.unit(Op.CROP, slice(1, 2 * CROP_ATTEMPTS, 2)).to(torch.float64)
    target_area = (height * width)[None, :, None] * (k.scale_lo[..., None] + k.scale_span[..., None] * u_scale)
    aspect = portable_exp(k.log_ratio_lo[..., None] + k.log_ratio_span[..., None] * u_ratio)
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    accepted = (w > 0) & (w <= width[None, :, None]) & (h > 0) & (h <= height[None, :, None])
    first = torch.argmax(accepted.to(torch.int32), dim=2, keepdim=True)
    found = accepted.any(dim=2)
    w_try = w.gather(2, first).squeeze(2).to(torch.int64)
    h_try = h.gather(2, first).squeeze(2).to(torch.int64)

    in_ratio = width / height
    too_narrow, too_wide = in_ratio < k.ratio_lo, in_ratio > k.ratio_hi
    # At least one pixel: a thin image with an extreme ratio (1 x 40 at ratios up to 0.4) would
    # round the fallback's short side to 0, a box no renderer can sample (torchvision's too).
    w_fb = torch.where(too_wide, torch.round(height * k.ratio_hi).clamp(min=1), width).to(torch.int64)
    h_fb = torch.where(too_narrow, torch.round(width / k.ratio_lo).clamp(min=1), height).to(torch.int64)

    h_int, w_int = sizes[:, 0].to(torch.int64), sizes[:, 1].to(torch.int64)
    top_try = rng.to_index(streams.bits(Op.CROP, CROP_TOP_DRAW), h_int - h_try + 1)
    left_try = rng.to_index(streams.bits(Op.CROP, CROP_LEFT_DRAW), w_int - w_try + 1)
    top = torch.where(found, top_try, (h_int - h_fb) // 2)
    left = torch.where(found, left_try, (w_int - w_fb) // 2)
    return top, left, torch.where(found, h_try, h_fb), torch.where(found, w_try, w_fb)


RenderTables = Tuple[Tensor, Tensor]


def sample_views(sizes: Tensor, configs: Sequence[ViewConfig], first_view: int = 0,
                 seed: Union[int, Tensor] = 0, step: Union[int, Tensor] = 0,
                 ids: Optional[Tensor] = None, backend: str = "auto") -> List[AugParams]:
    """Parameters of views first_view, first_view + 1, ... (one per config) for B images, all
    drawn in one op call (or one pass of tensor ops); view j's are exactly sample_view(sizes,
    configs[j], first_view + j, ...)'s. Arguments as sample_view's."""
    sizes, ids = _check_sizes_ids(sizes, ids)
    if sizes.device.type == "cpu":
        _check_size_values(sizes, "sizes")
    return _sample_views(sizes, configs, first_view, seed, step, ids, backend)[0]


def _sample_views(sizes: Tensor, configs: Sequence[ViewConfig], first_view, seed, step, ids: Tensor,
                  backend: str) -> Tuple[List[AugParams], Optional[RenderTables]]:
    """sample_views on sizes and ids _check_sizes_ids has returned, the sizes known to be >= 1,
    and the render_views parameter tables of every view (rows view-major) where the op drew
    them, None where the tensor ops did."""
    seed, step = _as_key("seed", seed, sizes.device), _as_key("step", step, sizes.device)
    configs = tuple(configs)
    if not configs:
        raise ValueError("configs: no view to draw")
    # the view number is one 32-bit word of the key: a larger one would draw another view's values
    if (isinstance(first_view, bool) or not isinstance(first_view, int) or first_view < 0
            or first_view + len(configs) > 2**32):
        raise ValueError(f"view must be an int in [0, 2**32 - {len(configs)}] (views view, view + 1, ... are "
                         f"drawn), got {first_view!r}")
    draw = _draw_function(backend, sizes.device)
    k = _view_constants(configs, sizes.device)
    fields, tables = draw(sizes, ids, seed, step, first_view, k)
    # one unbind per field rather than one select per field and view: a few hundred fewer calls
    per_view = {name: t.unbind(0) for name, t in fields.items()}
    return [AugParams(size=config.size, view=first_view + j, elastic_alpha=config.elastic_alpha,
                      elastic_sigma=config.elastic_sigma, **{name: t[j] for name, t in per_view.items()})
            for j, config in enumerate(configs)], tables


def _draw_function(backend: str, device: torch.device):
    """The draws for a backend name: "fused" the sample_views op, "reference" the tensor ops,
    "auto" the op where it is built (both draw the same bits, so no warning on a fallback)."""
    reference._check_choice("backend", backend, BACKENDS)
    impl = resolve_backend(backend, device, op="sample_views", warn=False)
    return _draw_with_kernel if impl == "fused" else _draw_with_tensor_ops


def _draw_with_kernel(sizes: Tensor, ids: Tensor, seed, step, first_view: int,
                      k: _ViewConstants) -> Tuple[Dict[str, Tensor], RenderTables]:
    """Every field of every view, as _draw_with_tensor_ops returns them, and the render_views
    tables of the same draws, from one op call."""
    device = sizes.device
    key = rng.hash32(*rng.split64(seed), *rng.split64(step))  # the chain's state after seed and step
    if not isinstance(key, Tensor):
        key = torch.full((), key, dtype=torch.int64, device=device)  # a fill, not a host-to-device copy
    ints, floats, flags, order, iparams, fparams = torch.ops.clever_kernels.sample_views(
        sizes.contiguous(), ids.contiguous(), key, first_view, k.packed)
    fields = {**dict(zip(_INT_FIELDS, ints)), **dict(zip(FLOAT_FIELDS, floats)), **dict(zip(_BOOL_FIELDS, flags)),
              "order": order}
    return fields, (iparams, fparams)


def _draw_with_tensor_ops(sizes: Tensor, ids: Tensor, seed, step, first_view: int,
                          k: _ViewConstants) -> Tuple[Dict[str, Tensor], None]:
    """Every AugParams field of every view, (V, B) ((V, B, 4) for order), in one pass of tensor
    ops: the definition of the sample_views op. No render tables (None)."""
    batch, device = sizes.shape[0], sizes.device
    n_views = k.packed.shape[0]
    views = torch.arange(first_view, first_view + n_views, dtype=torch.int64, device=device)
    s = _Streams(seed, step, ids, views)

    def happens(op, p):
        return s.unit(op, 0) < p

    def within(op, draw, lo, span):
        return lo + span * s.unit(op, draw)

    top, left, height, width = _crop_boxes(s, sizes, k)
    flip = happens(Op.FLIP, k.flip_p)
    rotate = happens(Op.ROTATE, k.rotation_p)
    angle = torch.where(rotate, within(Op.ROTATE, 1, k.degrees_lo, k.degrees_span), 0.0)

    elastic = happens(Op.ELASTIC, k.elastic_p)
    elastic_seed = torch.where(elastic, s.bits(Op.ELASTIC, 1), 0)

    jitter = happens(Op.JITTER, k.jitter_p)
    factors = [torch.where(jitter, within(Op.JITTER, draw, getattr(k, name + "_lo"), getattr(k, name + "_span")),
                           neutral)
               for draw, name, neutral in ((1, "brightness", 1.0), (2, "contrast", 1.0), (3, "saturation", 1.0),
                                           (4, "hue", 0.0))]
    drawn_order = permutation_from_index(rng.to_index(s.bits(Op.JITTER, 5), 24))
    identity_order = torch.arange(4, device=device, dtype=torch.int64).expand(n_views, batch, 4)
    order = torch.where(jitter[..., None], drawn_order, identity_order)

    grayscale = happens(Op.GRAYSCALE, k.grayscale_p)
    blur = happens(Op.BLUR, k.blur_p)
    blur_sigma = torch.where(blur, within(Op.BLUR, 1, k.blur_sigma_lo, k.blur_sigma_span), 0.0)
    solarize = happens(Op.SOLARIZE, k.solarize_p)
    # a (2, views, batch) table of its own, so that no view's record shares memory with another
    # view's or with the caller's sizes (the other fields are slices of such tables too)
    image_h, image_w = sizes.t().unsqueeze(1).expand(2, n_views, batch).clone()

    return dict(top=top, left=left, height=height, width=width, flip=flip, angle=angle, elastic=elastic,
                elastic_seed=elastic_seed, jitter=jitter, brightness=factors[0], contrast=factors[1],
                saturation=factors[2], hue=factors[3], order=order, grayscale=grayscale, blur_sigma=blur_sigma,
                solarize=solarize, image_height=image_h, image_width=image_w), None


def sample_view(sizes: Tensor, config: ViewConfig, view: int, seed: Union[int, Tensor] = 0,
                step: Union[int, Tensor] = 0, ids: Optional[Tensor] = None, backend: str = "auto") -> AugParams:
    """Parameters of one view for B images.

    sizes: (B, 2) int64 (height, width) of each source image, on the device the parameters are
    wanted on, all >= 1 (checked on the CPU; on a GPU taken as given, as reading them back would
    make the host wait for the device). config: the view's ViewConfig. view: the view index that
    keys the draws (0 global 1, 1 global 2, 2.. local). seed, step: ints or 0-dim int64 tensors
    on that device. ids: (B,) int64 sample ids (default 0..B-1). backend: as sample_params'.
    """
    return sample_views(sizes, [config], view, seed=seed, step=step, ids=ids, backend=backend)[0]


def sample_params(sizes_or_images, preset: Union[str, AugConfig] = "baug",
                  n_local: Optional[int] = None, global_size: Optional[int] = None,
                  local_size: Optional[int] = None,
                  global_scale: Optional[Tuple[float, float]] = None,
                  local_scale: Optional[Tuple[float, float]] = None,
                  seed: Union[int, Tensor] = 0, step: Union[int, Tensor] = 0,
                  ids: Optional[Union[Tensor, Sequence[int]]] = None, backend: str = "auto",
                  **overrides) -> List[AugParams]:
    """Parameters of every view of a multi-crop draw.

    sizes_or_images: a (B, C, H, W) image batch, a list of B (C, Hi, Wi) images, a list of B
    (height, width) pairs, or a (B, 2) int64 tensor of (height, width) (its values >= 1, checked
    as sample_view's). Only sizes and the device are used. preset: "baug", "caug", "caug+" or an
    AugConfig. n_local (default 8), global_size (224), local_size (96), global_scale ((0.4,
    1.0)), local_scale ((0.05, 0.4)): None keeps the preset's value. Further keyword overrides
    as in `clever_kernels.augment.config` (e.g. flip_p=0.3, global2_solarize_p=0.5,
    degrees=(-45, 45)).
    seed, step: ints (or 0-dim int64 tensors on the device). ids: (B,) sample ids, default
    0..B-1; pass dataset indices to make a sample's draws independent of its batch position.
    backend: "auto" (the sample_views op where the extension is built, else the tensor ops),
    "fused" (the op, or an error) or "reference" (the tensor ops); all three draw the same bits,
    on every device.

    Returns a list of 2 + n_local AugParams on the images' device: global 1, global 2, locals.
    """
    config = make_config(preset, n_local=n_local, global_size=global_size, local_size=local_size,
                         global_scale=global_scale, local_scale=local_scale, **overrides)
    return draw_for_render(image_sizes(sizes_or_images), config, seed, step, ids, backend)[0]


def draw_for_render(sizes: Tensor, config: AugConfig, seed, step, ids,
                    backend: str) -> Tuple[List[AugParams], Optional[RenderTables]]:
    """sample_params with a built config on checked (B, 2) sizes (image_sizes), and the
    render_views tables of its views where the op drew them (MultiCrop renders from those,
    building no table of its own)."""
    if ids is not None and not isinstance(ids, Tensor):
        ids = _backend.host_to_device(torch.tensor(_as_ids(ids), dtype=torch.int64), sizes.device)
    sizes, ids = _check_sizes_ids(sizes, ids)
    return _sample_views(sizes, config.views(), 0, seed, step, ids, backend)


def _check_size_values(sizes: Tensor, name: str) -> None:
    # for CPU tensors only, where reading values back costs no wait on a device: sizes on a GPU
    # are taken as given, so that drawing never waits for the device (the renderer refuses the
    # boxes that sizes < 1 would draw)
    if bool((sizes < 1).any()):
        raise ValueError(f"{name}: image sizes must be >= 1, got {sizes.tolist()}")


def _as_ids(ids) -> List[int]:
    """Sample ids as ints: a float id would be truncated into another sample's draws."""
    try:
        ids = list(ids)  # an iterator is read once
        if any(isinstance(i, bool) for i in ids):
            raise TypeError
        ints = [operator.index(i) for i in ids]
    except TypeError:
        raise TypeError(f"ids must be a tensor or a sequence of ints, got {ids!r}") from None
    outside = [i for i in ints if not rng.INT64_MIN <= i <= rng.INT64_MAX]
    if outside:
        raise ValueError(f"ids must fit in int64, got {outside[0]}")
    return ints


def _const_sizes(batch: int, height: int, width: int, device) -> Tensor:
    # torch.full instead of torch.tensor: no host-to-device copy that would wait on the stream.
    return torch.stack([torch.full((batch,), height, dtype=torch.int64, device=device),
                        torch.full((batch,), width, dtype=torch.int64, device=device)], dim=1)


def image_sizes(sizes_or_images) -> Tensor:
    """(B, 2) int64 (height, width) tensor, on the images' device, from any accepted input of
    sample_params. Raises ValueError naming sizes_or_images for anything else."""
    name = "sizes_or_images"
    if isinstance(sizes_or_images, Tensor):
        x = sizes_or_images
        if x.dim() == 4:
            if x.shape[0] == 0:
                raise ValueError(f"{name}: empty batch")
            if x.shape[2] < 1 or x.shape[3] < 1:
                raise ValueError(f"{name}: image sizes must be >= 1, got a batch of shape {tuple(x.shape)}")
            return _const_sizes(x.shape[0], x.shape[2], x.shape[3], x.device)
        if x.dim() == 2 and x.shape[1] == 2 and not x.is_floating_point() and x.dtype != torch.bool:
            if x.shape[0] == 0:
                raise ValueError(f"{name}: empty batch")
            if x.device.type == "cpu":
                _check_size_values(x, name)
            return x.to(torch.int64)
        raise ValueError(f"{name} must be a (B, C, H, W) image batch or a (B, 2) integer tensor of "
                         f"sizes, got shape {tuple(x.shape)} dtype {x.dtype}")
    if not isinstance(sizes_or_images, (list, tuple)):
        raise ValueError(f"{name} must be a tensor or a list, got {type(sizes_or_images).__name__}")
    if len(sizes_or_images) == 0:
        raise ValueError(f"{name}: empty batch")
    if all(isinstance(x, Tensor) for x in sizes_or_images):
        devices = {x.device for x in sizes_or_images}
        if len(devices) > 1:
            raise ValueError(f"{name}: images are on several devices {sorted(map(str, devices))}")
        if any(x.dim() != 3 for x in sizes_or_images):
            raise ValueError(f"{name}: every image of a list must be (C, H, W)")
        hw = [tuple(x.shape[1:]) for x in sizes_or_images]
        device = devices.pop()
    elif all(isinstance(x, (list, tuple)) and len(x) == 2 for x in sizes_or_images):
        hw, device = [tuple(as_index(v) for v in x) for x in sizes_or_images], torch.device("cpu")
    else:
        raise ValueError(f"{name} must be a list of (C, H, W) images or of (height, width) pairs")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for pair in hw for v in pair):
        raise ValueError(f"{name}: image sizes must be ints >= 1, got {hw}")
    return _backend.host_to_device(torch.tensor(hw, dtype=torch.int64), device)


def _check_sizes_ids(sizes: Tensor, ids: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    if not isinstance(sizes, Tensor) or sizes.dim() != 2 or sizes.shape[1] != 2 or sizes.dtype != torch.int64:
        raise ValueError("sizes must be a (B, 2) int64 tensor of (height, width)")
    if sizes.shape[0] == 0:
        raise ValueError("sizes: empty batch")
    if ids is None:
        return sizes, torch.arange(sizes.shape[0], device=sizes.device, dtype=torch.int64)
    if isinstance(ids, Tensor) and ids.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
        ids = ids.to(torch.int64)  # widens exactly
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64 or tuple(ids.shape) != (sizes.shape[0],):
        raise ValueError(f"ids must be an integer tensor (int64 or narrower) of shape ({sizes.shape[0]},), got "
                         f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}")
    if ids.device != sizes.device:
        raise ValueError(f"ids is on {ids.device}, the images on {sizes.device}")
    return sizes, ids


def _as_key(name: str, value, device):
    """seed or step checked, as a Python int or a 0-dim int64 tensor on `device`. Integer
    scalars of other types (numpy's, as MultiCrop takes them) become ints."""
    value = as_index(value)
    rng.check_int64(name, value)
    if isinstance(value, Tensor) and (value.dim() != 0 or value.device != device):
        raise ValueError(f"{name} must be an int or a 0-dim int64 tensor on {device}, got shape "
                         f"{tuple(value.shape)} on {value.device}")
    return value


def _register_fake():
    if not hasattr(torch.library, "register_fake"):
        return

    from ._fused import FLOAT_COLUMNS, INT_COLUMNS

    @torch.library.register_fake("clever_kernels::sample_views")
    def _sample_views_fake(sizes, ids, key, first_view, constants):
        views, batch = constants.shape[0], sizes.shape[0]
        return (sizes.new_empty((len(_INT_FIELDS), views, batch)),
                sizes.new_empty((len(FLOAT_FIELDS), views, batch), dtype=torch.float32),
                sizes.new_empty((len(_BOOL_FIELDS), views, batch), dtype=torch.bool),
                sizes.new_empty((views, batch, 4)),
                sizes.new_empty((views * batch, INT_COLUMNS)),
                sizes.new_empty((views * batch, FLOAT_COLUMNS), dtype=torch.float32))


if _backend.extension() is not None and hasattr(torch.ops.clever_kernels, "sample_views"):
    _register_fake()
