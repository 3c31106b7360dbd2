"""Reference multi-crop augmentation: one view rendered from uint8 images and an AugParams.

This is the definition the fused kernels are tested against. It loops over samples and applies
one op at a time, following torchvision's tensor functional ops. Pixels are float32 in [0, 1]
from the first step to the normalisation: the uint8 input is divided by 255 once and never
rounded again (torchvision's tensor ops, given uint8, round back to uint8 after the resize and
after every colour op; PIL, which the authors used, does as well).

Op by op, for a source image of C in {1, 3} channels (C = 1 is replicated to RGB first), output
side S, and the sample's parameters:

1. Resized crop. Slice rows top..top+height-1 and columns left..left+width-1, then
   `F.interpolate(size=(S, S), mode=interpolation, align_corners=False, antialias=antialias)` and
   clamp to [0, 1] (bicubic overshoots). With antialias=True, PyTorch's bicubic uses the a = -0.5
   kernel (PIL's) at every scale; without it the a = -0.75 kernel; torchvision calls the same
   function. The crop box must lie inside the image (torchvision would zero-pad; the sampler
   never asks for it, so here it is an error).
2. Horizontal flip: reverse the columns.
3. Rotation by `angle` degrees counter-clockwise about the image centre, output S x S
   (torchvision's rotate with expand=False, center=None, fill=0). Output pixel centre
   (x, y), relative to the centre with y pointing down, samples the source at
   (cos a * x - sin a * y, sin a * x + cos a * y), by `F.grid_sample(align_corners=False,
   padding_mode="zeros")` with mode rotation_interpolation. An angle of exactly 0 is skipped
   (the identity, bit for bit). With bilinear rotation torchvision also multiplies by a
   bilinearly sampled validity mask, which darkens the one-pixel band along the border a second
   time; we do not (only that band differs). With nearest the two agree.
4. Elastic (torchvision's ElasticTransform). Noise n[c, y, x] = 2 * hash_uniform(elastic_seed,
   (c * S + y) * S + x) - 1 for c = 0 (dx), 1 (dy) (see augment.rng); each plane is blurred with
   a Gaussian of kernel size k = int(8 * sigma + 1), made odd, taps at integer offsets
   -(k-1)/2..(k-1)/2 with weights exp(-t^2 / (2 sigma^2)) normalised, reflect padding,
   separable (rows then columns); no blur when sigma = 0. The displacement alpha / S * n is
   added to the identity grid ((2i + 1) / S - 1 per axis) and the image is resampled bilinearly,
   align_corners=False, zeros outside (same mask remark as for the rotation).
5. Colour jitter, when applied, in the recorded `order` (0 brightness, 1 contrast,
   2 saturation, 3 hue), each clamped to [0, 1]:
     brightness  x * f
     contrast    (x - m) * f + m, m the mean over the image of its grayscale
     saturation  g + f * (x - g), g the pixel's grayscale
     hue         RGB -> HSV as torchvision's _rgb2hsv, h <- (h + f) mod 1, HSV -> RGB as
                 torchvision's _hsv2rgb.
   torchvision writes the first three as blends f * x + (1 - f) * other; we use the forms above.
6. Grayscale: g = 0.299 R + 0.587 G + 0.114 B, replicated to three channels. torchvision uses
   0.2989 for R; we use 0.299 (ITU-R 601, PIL's) everywhere, including contrast and saturation.
7. Gaussian blur with sigma > 0: radius r = ceil(3 sigma), taps at offsets -r..r with weights
   exp(-t^2 / (2 sigma^2)) normalised, reflect padding (edge pixel not repeated, reflected again
   when the radius exceeds the image), separable, rows then columns. DINO used PIL's
   GaussianBlur(radius=sigma), whose kernel is not Gaussian-exact; we do not follow it.
8. Solarize: x >= 0.5 becomes 1 - x (PIL solarizes uint8 at 128, i.e. x >= 0.502).
9. Normalise: (x - mean[c]) / std[c], then cast to out_dtype.

antialias=False changes step 1 only: the resize without antialiasing (torchvision's
antialias=False). The fused kernels follow these steps in every mode; they compose steps 1 to 4
into one read of the source per output pixel by evaluating the resize at the rotated (and
displaced) positions, so a cheaper single bilinear warp of the source would save arithmetic,
not memory traffic, and would give other pixels than torchvision's ops.
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import rng
from ..augment.config import IMAGENET_MEAN, IMAGENET_STD, make_config
from ..augment.params import FLOAT_FIELDS, MAX_IMAGE_SIDE, MAX_SIGMA, TENSOR_FIELDS, AugParams
from ..augment.sampler import sample_params

Tensor = torch.Tensor
Images = Union[Tensor, Sequence[Tensor]]

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
INTERPOLATIONS = ("bicubic", "bilinear")
ROTATION_INTERPOLATIONS = ("nearest", "bilinear")


# ----------------------------------------------------------------------------- colour ops
def rgb_to_grayscale(x: Tensor) -> Tensor:
    """(3, H, W) -> (1, H, W): 0.299 R + 0.587 G + 0.114 B."""
    r, g, b = x.unbind(0)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(0)


def adjust_brightness(x: Tensor, factor: float) -> Tensor:
    return (x * factor).clamp(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: float) -> Tensor:
    m = rgb_to_grayscale(x).mean()
    return ((x - m) * factor + m).clamp(0.0, 1.0)


def adjust_saturation(x: Tensor, factor: float) -> Tensor:
    g = rgb_to_grayscale(x)
    return (g + factor * (x - g)).clamp(0.0, 1.0)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """(3, H, W) RGB in [0, 1] -> (3, H, W) HSV, hue in [0, 1), as torchvision's _rgb2hsv."""
    r, g, b = x.unbind(0)
    maxc, minc = x.amax(0), x.amin(0)
    delta = maxc - minc
    flat = delta == 0
    # Gray pixels: divide by 1 instead of 0; their hue and saturation come out 0.
    s = delta / torch.where(flat, torch.ones_like(maxc), maxc)
    d = torch.where(flat, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc))


def hsv_to_rgb(x: Tensor) -> Tensor:
    """(3, H, W) HSV -> RGB, as torchvision's _hsv2rgb (sector i = floor(6h) mod 6)."""
    h, s, v = x.unbind(0)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    sector = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # Rows: the (R, G, B) of each sector 0..5.
    table = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    channels = []
    for c in range(3):
        candidates = torch.stack([row[c] for row in table])
        channels.append(candidates.gather(0, sector.unsqueeze(0)).squeeze(0))
    return torch.stack(channels)


def adjust_hue(x: Tensor, shift: float) -> Tensor:
    hsv = rgb_to_hsv(x)
    hue = torch.remainder(hsv[0] + shift, 1.0)
    return hsv_to_rgb(torch.stack((hue, hsv[1], hsv[2]))).clamp(0.0, 1.0)


JITTER_FNS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def solarize(x: Tensor) -> Tensor:
    return torch.where(x >= 0.5, 1.0 - x, x)


# ----------------------------------------------------------------------------- filtering
def reflect_index(positions: Tensor, n: int) -> Tensor:
    """Reflect integer positions into [0, n) without repeating the edge (numpy's "reflect"),
    periodically, so that any radius works on any size."""
    if n == 1:
        return torch.zeros_like(positions)
    period = 2 * (n - 1)
    m = torch.remainder(positions, period)
    return torch.where(m >= n, period - m, m)


def gaussian_taps(radius: int, sigma: float, device=None) -> Tensor:
    """Normalised weights exp(-t^2 / (2 sigma^2)) at t = -radius..radius, float32."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def _filter_rows(x: Tensor, taps: Tensor) -> Tensor:
    """Correlate the last dimension of (C, H, W) with taps, reflect padding."""
    c, h, w = x.shape
    radius = (taps.numel() - 1) // 2
    idx = reflect_index(torch.arange(-radius, w + radius, device=x.device), w)
    padded = x.index_select(2, idx).reshape(c * h, 1, w + 2 * radius)
    return F.conv1d(padded, taps.view(1, 1, -1)).reshape(c, h, w)


def gaussian_blur(x: Tensor, radius: int, sigma: float) -> Tensor:
    """Separable Gaussian blur of (C, H, W) float, rows then columns, reflect padding."""
    taps = gaussian_taps(radius, sigma, x.device)
    x = _filter_rows(x, taps)
    return _filter_rows(x.transpose(1, 2), taps).transpose(1, 2)


# ----------------------------------------------------------------------------- geometry
def pixel_centres(n: int, device=None) -> Tensor:
    """Normalised coordinates (2i + 1) / n - 1 of n pixel centres (align_corners=False), float64."""
    return (2.0 * torch.arange(n, dtype=torch.float64, device=device) + 1.0) / n - 1.0


def rotation_grid(height: int, width: int, angle: float, device=None) -> Tensor:
    """(1, H, W, 2) grid_sample grid of a counter-clockwise rotation by angle degrees about the
    image centre (torchvision's rotate, expand=False)."""
    a = math.radians(angle)
    cos, sin = math.cos(a), math.sin(a)
    ys = pixel_centres(height, device) * (height / 2)
    xs = pixel_centres(width, device) * (width / 2)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    src_x = (cos * x - sin * y) / (width / 2)
    src_y = (sin * x + cos * y) / (height / 2)
    return torch.stack((src_x, src_y), dim=-1).unsqueeze(0).to(torch.float32)


def rotate(x: Tensor, angle: float, interpolation: str = "nearest") -> Tensor:
    """Rotate (C, H, W) float counter-clockwise by angle degrees about the centre, fill 0."""
    if angle == 0:
        return x
    grid = rotation_grid(x.shape[1], x.shape[2], angle, x.device)
    return F.grid_sample(x.unsqueeze(0), grid, mode=interpolation, padding_mode="zeros",
                         align_corners=False).squeeze(0)


def elastic_kernel_radius(sigma: float) -> int:
    """torchvision's ElasticTransform kernel: size int(8 sigma + 1), made odd; returns its radius."""
    k = int(8 * sigma + 1)
    if k % 2 == 0:
        k += 1
    return (k - 1) // 2


def elastic_displacement(seed: int, size: int, alpha: float, sigma: float, device=None) -> Tensor:
    """(size, size, 2) float32 displacement (dx, dy) in normalised coordinates, regenerated from
    the 32-bit elastic seed as described in step 4 of the module docstring."""
    counter = torch.arange(2 * size * size, dtype=torch.int64, device=device).view(2, size, size)
    key = torch.tensor(seed, dtype=torch.int64, device=device)
    noise = 2.0 * rng.hash_uniform(key, counter) - 1.0
    if sigma > 0:
        noise = gaussian_blur(noise, elastic_kernel_radius(sigma), sigma)
    return (noise * (alpha / size)).permute(1, 2, 0)


def identity_grid(size: int, device=None) -> Tensor:
    """(1, size, size, 2) grid that samples every pixel centre of a size x size image, float32."""
    c = pixel_centres(size, device)
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack((x, y), dim=-1).unsqueeze(0).to(torch.float32)


def elastic(x: Tensor, seed: int, alpha: float, sigma: float) -> Tensor:
    """Elastic displacement of a square (C, S, S) float image, bilinear, fill 0."""
    size = x.shape[-1]
    grid = identity_grid(size, x.device) + elastic_displacement(seed, size, alpha, sigma, x.device)
    return F.grid_sample(x.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).squeeze(0)


# ----------------------------------------------------------------------------- input checks
def _check_images(images: Images) -> List[Tensor]:
    """Validate and return a list of (C, H, W) uint8 images on one device."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be a (B, C, H, W) batch or a list of (C, H, W) images, "
                             f"got a tensor of shape {tuple(images.shape)}")
        images = list(images.unbind(0))
    elif isinstance(images, (list, tuple)):
        if not all(isinstance(x, Tensor) for x in images):
            raise TypeError("images: every element of the list must be a tensor")
        if any(x.dim() != 3 for x in images):
            raise ValueError("images: every image of a list must be (C, H, W), got shapes "
                             f"{[tuple(x.shape) for x in images]}")
    else:
        raise TypeError(f"images must be a tensor or a list of tensors, got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError("images: empty batch")
    for x in images:
        if x.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 (0..255), got {x.dtype}")
        if x.shape[0] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {x.shape[0]}")
        if x.shape[1] < 1 or x.shape[2] < 1:
            raise ValueError(f"images: empty image of shape {tuple(x.shape)}")
        if max(x.shape[1], x.shape[2]) > MAX_IMAGE_SIDE:
            raise ValueError(f"images: each side must be at most {MAX_IMAGE_SIDE}, got an image of shape "
                             f"{tuple(x.shape)}")
    if len({x.device for x in images}) > 1:
        raise ValueError(f"images: list mixes devices {sorted({str(x.device) for x in images})}")
    if len({x.shape[0] for x in images}) > 1:
        raise ValueError(f"images: list mixes channel counts {sorted({x.shape[0] for x in images})}")
    return images


def _check_params(params: AugParams, images: List[Tensor]) -> None:
    """Raises naming what is wrong with one view's params for `images`."""
    check_views([params], images)


def check_views(views: Sequence[AugParams], images: List[Tensor], values: bool = True) -> None:
    """Raises naming what is wrong with any view's params for `images`: per view what needs no
    data (type, batch, device, gradients), then, unless values=False, check_param_values."""
    for params in views:
        _check_structure(params, images)
    if values:
        check_param_values(views, images)


def _check_structure(params: AugParams, images: List[Tensor]) -> None:
    if not isinstance(params, AugParams):
        raise TypeError(f"params must be an AugParams (one view), got {type(params).__name__}")
    if params.batch_size != len(images):
        raise ValueError(f"params holds {params.batch_size} samples but images has {len(images)}")
    if params.device != images[0].device:
        raise ValueError(f"params is on {params.device} but images on {images[0].device}")
    for name in ("angle", "brightness", "contrast", "saturation", "hue", "blur_sigma"):
        if getattr(params, name).requires_grad:
            raise ValueError(f"params.{name} requires grad; the reference renderer does not "
                             "differentiate through augmentation parameters (detach it)")


def check_param_values(views: Sequence[AugParams], images: List[Tensor]) -> None:
    """Parameters drawn for images of these sizes, crop boxes inside their images, angles and
    colour factors finite, blur sigmas in [0, MAX_SIGMA], orders permutations, elastic seeds in
    [0, 2**32), for every view, with one device-to-host copy for all of them (on a GPU each copy
    waits for the stream). The kernels refuse such rows too (the CUDA ones with a device-side
    assert, which ends the process's CUDA context), so checking here turns that into a ValueError
    naming the view and the sample; the seeds they would take modulo 2**32, so -1 would render as
    2**32 - 1 does."""
    ints = torch.stack([torch.cat([torch.stack([p.top, p.left, p.height, p.width, p.elastic_seed], dim=1),
                                   p.order, torch.stack([p.image_height, p.image_width], dim=1)], dim=1)
                        for p in views])
    floats = torch.stack([torch.stack([getattr(p, name) for name in FLOAT_FIELDS], dim=1) for p in views])
    # float32 crop boxes would round: the two tables travel as one int64 copy, floats by their bits
    host = torch.cat([ints, floats.view(torch.int32).to(torch.int64)], dim=2).cpu()
    # top, left, height, width, elastic_seed, the four order columns, image_height, image_width
    n_ints = ints.shape[2]
    host_floats = host[:, :, n_ints:].to(torch.int32).view(torch.float32)
    heights = torch.tensor([x.shape[1] for x in images])
    widths = torch.tensor([x.shape[2] for x in images])
    for v in range(len(views)):
        where = f"params of view {views[v].view}"
        drawn_h, drawn_w = host[v, :, n_ints - 2:n_ints].unbind(1)
        # a crop box means a region only of the image it was drawn for: on a larger one it would
        # render another region without any error
        other = (drawn_h != heights) | (drawn_w != widths)
        if other.any():
            b = int(other.nonzero()[0, 0])
            raise ValueError(f"{where}: sample {b} was drawn for a {int(drawn_h[b])}x{int(drawn_w[b])} image "
                             f"(image_height x image_width) but images[{b}] is {heights[b].item()}x"
                             f"{widths[b].item()}; draw parameters for these images (sample_params)")
        top, left, h, w = host[v, :, :4].unbind(1)
        # top > height - h rather than top + h > height, which wraps past int64 for huge boxes
        bad = (top < 0) | (left < 0) | (h < 1) | (w < 1) | (top > heights - h) | (left > widths - w)
        if bad.any():
            b = int(bad.nonzero()[0, 0])
            raise ValueError(f"{where}: crop box (top {int(top[b])}, left {int(left[b])}, height {int(h[b])}, "
                             f"width {int(w[b])}) of sample {b} is not inside its "
                             f"{heights[b].item()}x{widths[b].item()} image")
        seed = host[v, :, 4]
        bad_seed = (seed < 0) | (seed >= 2**32)
        if bad_seed.any():
            b = int(bad_seed.nonzero()[0, 0])
            raise ValueError(f"{where}: elastic_seed of sample {b} is {int(seed[b])}; expected a 32-bit key in "
                             "[0, 2**32)")
        order = host[v, :, 5:n_ints - 2]
        not_perm = (order.sort(dim=1).values != torch.arange(4)).any(dim=1)
        if not_perm.any():
            b = int(not_perm.nonzero()[0, 0])
            raise ValueError(f"{where}: order of sample {b} is {order[b].tolist()}; every row must be a "
                             "permutation of 0, 1, 2, 3")
        for name, column in zip(FLOAT_FIELDS, host_floats[v].unbind(1)):
            if not torch.isfinite(column).all():
                b = int((~torch.isfinite(column)).nonzero()[0, 0])
                raise ValueError(f"{where}: {name} of sample {b} is {column[b].item()}; expected a finite value")
        sigma = host_floats[v, :, FLOAT_FIELDS.index("blur_sigma")]
        if ((sigma < 0) | (sigma > MAX_SIGMA)).any():
            raise ValueError(f"{where}: blur_sigma must be in [0, {MAX_SIGMA}] (0 means no blur), "
                             f"got {sigma.min().item()}..{sigma.max().item()}")


def _check_norm(mean, std) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    # normalisation runs in float32: each value must be finite there, and std no float32 zero
    f32 = torch.finfo(torch.float32)
    if len(mean) != 3 or not all(abs(m) <= f32.max for m in mean):
        raise ValueError(f"mean must have 3 values (R, G, B), each finite in float32, got {mean}")
    if len(std) != 3 or not all(f32.tiny <= s <= f32.max for s in std):
        raise ValueError(f"std must have 3 values > 0, each a finite normal float32, got {std}")
    return mean, std


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _check_flag(name: str, value) -> bool:
    # a string such as "False" from a config file is truthy: taken as given it would do the opposite
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _check_out_dtype(out_dtype: torch.dtype) -> None:
    if not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point:
        raise ValueError(f"out_dtype must be a floating torch dtype, got {out_dtype!r}")


# ----------------------------------------------------------------------------- rendering
def _crop_to_unit_rgb(image: Tensor, p: dict) -> Tensor:
    """The sample's crop box of a (C, H, W) uint8 image as float32 RGB in [0, 1]."""
    box = image[:, p["top"]:p["top"] + p["height"], p["left"]:p["left"] + p["width"]]
    x = box.to(torch.float32) / 255.0
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x


def _sample_values(params: AugParams) -> List[dict]:
    """Per-sample Python values of every field (the reference loops over samples)."""
    table = {name: getattr(params, name).tolist() for name in TENSOR_FIELDS}
    return [{name: values[b] for name, values in table.items()} for b in range(params.batch_size)]


def _colour_and_normalise(x: Tensor, p: dict, mean, std, out_dtype) -> Tensor:
    if p["jitter"]:
        factors = (p["brightness"], p["contrast"], p["saturation"], p["hue"])
        for op in p["order"]:
            x = JITTER_FNS[op](x, factors[op])
    if p["grayscale"]:
        x = rgb_to_grayscale(x).expand(3, -1, -1)
    if p["blur_sigma"] > 0:
        x = gaussian_blur(x, math.ceil(3 * p["blur_sigma"]), p["blur_sigma"])
    if p["solarize"]:
        x = solarize(x)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return ((x - m) / s).to(out_dtype)


def render(images: Images, params: AugParams, mean: Sequence[float] = IMAGENET_MEAN,
           std: Sequence[float] = IMAGENET_STD, antialias: bool = True,
           out_dtype: torch.dtype = torch.float32, interpolation: str = "bicubic",
           rotation_interpolation: str = "nearest") -> Tensor:
    """Render one view of every image, op by op (see the module docstring).

    images: (B, C, H, W) uint8 or a list of B (C, Hi, Wi) uint8 images of any sizes, C in {1, 3},
    all on one device. params: the view's AugParams (B samples, same device).
    mean, std: per-channel normalisation of [0, 1] pixels. interpolation: "bicubic" or
    "bilinear" for the resize; antialias: antialiased resize (as F.interpolate);
    rotation_interpolation: "nearest" or "bilinear". Returns (B, 3, S, S) of out_dtype.
    """
    images = _check_images(images)
    _check_params(params, images)
    mean, std = _check_norm(mean, std)
    _check_choice("interpolation", interpolation, INTERPOLATIONS)
    _check_choice("rotation_interpolation", rotation_interpolation, ROTATION_INTERPOLATIONS)
    _check_out_dtype(out_dtype)
    antialias = _check_flag("antialias", antialias)
    size = params.size
    views = []
    for image, p in zip(images, _sample_values(params)):
        x = F.interpolate(_crop_to_unit_rgb(image, p).unsqueeze(0), size=(size, size),
                          mode=interpolation, align_corners=False,
                          antialias=antialias).squeeze(0).clamp(0.0, 1.0)
        if p["flip"]:
            x = torch.flip(x, dims=[-1])
        x = rotate(x, p["angle"], rotation_interpolation)
        if p["elastic"]:
            x = elastic(x, p["elastic_seed"], params.elastic_alpha, params.elastic_sigma)
        views.append(_colour_and_normalise(x, p, mean, std, out_dtype))
    return torch.stack(views)


def multicrop(images: Images, preset="baug", *, n_local: Optional[int] = None,
              global_size: Optional[int] = None, local_size: Optional[int] = None,
              global_scale: Optional[Tuple[float, float]] = None,
              local_scale: Optional[Tuple[float, float]] = None, seed=0, step=0, ids=None,
              antialias: bool = True, out_dtype: torch.dtype = torch.float32,
              interpolation: str = "bicubic", rotation_interpolation: str = "nearest",
              **overrides) -> Tuple[List[Tensor], List[AugParams]]:
    """sample_params then render every view: the plain-PyTorch multi-crop.

    Arguments as sample_params (preset, sizes, seed, step, ids, overrides) and render
    (antialias, out_dtype, interpolation, rotation_interpolation); mean and std come from the
    config (override with mean=..., std=...). Returns (views, params): views[v] is
    (B, 3, S_v, S_v), in the order global 1, global 2, locals; params[v] its AugParams.
    """
    named = dict(n_local=n_local, global_size=global_size, local_size=local_size,
                 global_scale=global_scale, local_scale=local_scale)
    config = make_config(preset, **{k: v for k, v in named.items() if v is not None}, **overrides)
    images = _check_images(images)
    params = sample_params(images, config, seed=seed, step=step, ids=ids)
    views = [render(images, p, mean=config.mean, std=config.std, antialias=antialias,
                    out_dtype=out_dtype, interpolation=interpolation,
                    rotation_interpolation=rotation_interpolation) for p in params]
    return views, params
