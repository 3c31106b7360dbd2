"""MultiCrop: sample every view's parameters, then render them, as one call."""
from typing import List, Optional, Sequence, Tuple, Union

import torch

from ..reference import augment as reference
from . import rng
from ._fused import pack_images
from .config import AugConfig, make_config
from .params import AugParams, as_index
from .render import check_options, render, render_checked, resolve_backend
from .sampler import draw_for_render, image_sizes, sample_params

Tensor = torch.Tensor


class MultiCrop:
    """DINO-style multi-crop with parameter capture: 2 global views and n_local local views.

        mc = MultiCrop("caug", n_local=8, global_size=224, local_size=96, seed=0)
        views, params = mc(images, step=step, ids=dataset_indices)

    images: (B, C, H, W) uint8 or a list of uint8 (C, Hi, Wi) images on one device.
    views: list of 2 + n_local tensors (B, 3, S, S) in the authors' order (global 1, global 2,
    locals); views of one size share storage. params: list of per-view AugParams. Draws are
    keyed by (seed, step, sample id, view, op), so a sample's views do not depend on the batch,
    device, rank or worker that renders it; `mc(images)` equals
    `render(images, sample_params(images, ...))` exactly.
    Every probability and range of SPEC.md's table can be overridden by keyword (see
    clever_kernels.augment.config, e.g. `flip_p=0.3`, `global2_solarize_p=0.5`).
    n_local, global_size, local_size, global_scale and local_scale left at None keep the
    preset's (8, 224, 96, (0.4, 1.0), (0.05, 0.4)) or, for an AugConfig passed as `preset`, its
    own; so do unprefixed overrides such as `size=` or `scale=`, which a default here would
    otherwise shadow. backend: "auto", "fused" or "reference", for drawing (sample_params) and
    rendering (render) alike.
    """

    def __init__(self, preset: Union[str, AugConfig] = "baug", n_local: Optional[int] = None,
                 global_size: Optional[int] = None, local_size: Optional[int] = None,
                 global_scale: Optional[Tuple[float, float]] = None,
                 local_scale: Optional[Tuple[float, float]] = None,
                 antialias: bool = True, out_dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 seed: int = 0, interpolation: str = "bicubic", rotation_interpolation: str = "nearest",
                 backend: str = "auto", **overrides):
        self.config = make_config(preset, n_local=n_local, global_size=global_size, local_size=local_size,
                                  global_scale=global_scale, local_scale=local_scale, **overrides)
        seed = as_index(seed)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        rng.check_int64("seed", seed)
        self.seed = seed
        # refused here rather than at the first call, and alike for every backend
        check_options(self.config.mean, self.config.std, antialias, channels_last, interpolation,
                      rotation_interpolation, out_dtype, backend)
        self.render_options = dict(mean=self.config.mean, std=self.config.std, antialias=antialias,
                                   out_dtype=out_dtype, channels_last=channels_last,
                                   interpolation=interpolation, rotation_interpolation=rotation_interpolation,
                                   backend=backend)

    def sample_params(self, images, step: int = 0, ids: Optional[Tensor] = None) -> List[AugParams]:
        return sample_params(images, self.config, seed=self.seed, step=step, ids=ids,
                             backend=self.render_options["backend"])

    def render(self, images, params: Sequence[AugParams]) -> List[Tensor]:
        return render(images, params, **self.render_options)

    def __call__(self, images, step: int = 0, ids: Optional[Tensor] = None):
        images = reference._check_images(images)
        backend = self.render_options["backend"]
        packed = None
        if resolve_backend(backend, images[0].device) == "fused":
            packed = pack_images(images)  # its sizes serve the draws: one copy of them to the device
        sizes = image_sizes(images) if packed is None else packed[2]
        params, tables = draw_for_render(sizes, self.config, self.seed, step, ids, backend)
        # freshly drawn parameters are valid by construction: no device-to-host copy to check them;
        # and the op that drew them wrote the renderer's tables too
        return render_checked(images, params, check_values=False, tables=tables, packed=packed,
                              **self.render_options), params

    def __repr__(self):
        return f"MultiCrop(n_views={self.config.n_views}, seed={self.seed}, {self.render_options})"
