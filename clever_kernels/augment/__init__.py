"""Multi-crop augmentation with parameter capture.

    mc = MultiCrop("caug", n_local=8, seed=0); views, params = mc(images, step=0, ids=None)
    sample_params(images, "caug", seed=..., step=..., ids=...)  -> [AugParams per view]
    render(images, params)                                      -> views (fused kernels)
    clever_kernels.reference.augment.render(images, params)     -> one view, plain PyTorch

Presets "baug" (DINO), "caug" (+ rotation), "caug+" (+ elastic) follow SPEC.md's table; every
probability and range can be overridden (see `config`). Draws come from a counter-based
generator (`rng`) keyed by (seed, step, sample id, view, op, draw).
"""
from .config import IMAGENET_MEAN, IMAGENET_STD, PRESET_NAMES, AugConfig, ViewConfig, make_config
from .params import COLUMNS, JITTER_OPS, AugParams
from .multicrop import MultiCrop
from .render import render
from .sampler import Op, image_sizes, sample_params, sample_view

__all__ = [
    "AugConfig", "AugParams", "MultiCrop", "render", "COLUMNS", "IMAGENET_MEAN", "IMAGENET_STD", "JITTER_OPS", "Op",
    "PRESET_NAMES", "ViewConfig", "image_sizes", "make_config", "sample_params", "sample_view",
]
