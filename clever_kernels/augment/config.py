"""Augmentation presets (BAug, CAug, CAug+) and the per-view configuration they expand to.

The defaults are SPEC.md's table. Every range and probability can be overridden by keyword, with
a prefix choosing which views it applies to:

    flip_p=0.3            every view
    global_blur_p=0.5     both global views          local_blur_p=0.2   the local views
    global1_blur_p=0.9    global view 1 only         global2_solarize_p=0.1   global view 2 only

A more specific prefix wins over a less specific one. `global_size`, `local_size`,
`global_scale` and `local_scale` are just overrides of this form.
"""
import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Dict, List, Tuple, Union

from .params import MAX_MAGNITUDE, MAX_SIGMA, MAX_SIZE, as_float32, as_index

Range = Tuple[float, float]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESET_NAMES = ("baug", "caug", "caug+")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_prob(name: str, p) -> float:
    if not _is_number(p):
        raise TypeError(f"{name} must be a Python or numpy number (a probability in [0, 1]), "
                        f"got {type(p).__name__} {p!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _check_range(name: str, value, low=None, high=None, positive=False) -> Range:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max) of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be a finite pair with min <= max, got {value!r}")
    if max(abs(lo), abs(hi)) > MAX_MAGNITUDE:
        raise ValueError(f"{name} must lie within +-{MAX_MAGNITUDE:g}, got {value!r}")
    if positive and lo <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if low is not None and lo < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    if high is not None and hi > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return lo, hi


def _factor_range(name: str, value) -> Range:
    """ColorJitter's convention: a strength a gives [max(0, 1 - a), 1 + a]; a pair is taken as is."""
    if _is_number(value):
        if not (math.isfinite(value) and 0 <= value <= MAX_MAGNITUDE):
            raise ValueError(f"{name} must be a strength in [0, {MAX_MAGNITUDE:g}], got {value!r}")
        return max(0.0, 1.0 - float(value)), 1.0 + float(value)
    return _check_range(name, value, low=0.0)


def _hue_range(name: str, value) -> Range:
    if _is_number(value):
        if not 0.0 <= value <= 0.5:
            raise ValueError(f"{name} must be a strength in [0, 0.5], got {value!r}")
        return -float(value), float(value)
    return _check_range(name, value, low=-0.5, high=0.5)


def _check_nonneg(name: str, value, high=MAX_MAGNITUDE) -> float:
    if not _is_number(value) or not (math.isfinite(value) and 0 <= value <= high):
        raise ValueError(f"{name} must be a finite number in [0, {high}], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ViewConfig:
    """How one view is drawn. Probabilities in [0, 1]; ranges are (min, max) pairs.

    size: output side in pixels; scale, ratio: RandomResizedCrop's area fraction and aspect ratio
    ranges; degrees: rotation range (applied with rotation_p); elastic_alpha, elastic_sigma:
    ElasticTransform's strength and smoothing (applied with elastic_p); brightness, contrast,
    saturation: factor ranges (a float a means [max(0, 1 - a), 1 + a]); hue: shift range (a float
    h means [-h, h]); blur_sigma: Gaussian blur sigma range (applied with blur_p).
    """
    size: int = 224
    scale: Range = (0.4, 1.0)
    ratio: Range = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    rotation_p: float = 0.0
    degrees: Range = (-90.0, 90.0)
    elastic_p: float = 0.0
    elastic_alpha: float = 100.0
    elastic_sigma: float = 5.0
    jitter_p: float = 0.8
    brightness: Union[float, Range] = 0.4
    contrast: Union[float, Range] = 0.4
    saturation: Union[float, Range] = 0.2
    hue: Union[float, Range] = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: Range = (0.1, 2.0)
    solarize_p: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "size", as_index(self.size))
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 1 <= self.size <= MAX_SIZE:
            raise ValueError(f"size must be an int in [1, {MAX_SIZE}], got {self.size!r}")
        checked = {
            "scale": _check_range("scale", self.scale, high=1.0, positive=True),
            "ratio": _check_range("ratio", self.ratio, positive=True),
            "degrees": _check_range("degrees", self.degrees),
            # float32, as AugParams records them and the kernels take them
            "elastic_alpha": as_float32(_check_nonneg("elastic_alpha", self.elastic_alpha)),
            "elastic_sigma": as_float32(_check_nonneg("elastic_sigma", self.elastic_sigma, high=MAX_SIGMA)),
            "brightness": _factor_range("brightness", self.brightness),
            "contrast": _factor_range("contrast", self.contrast),
            "saturation": _factor_range("saturation", self.saturation),
            "hue": _hue_range("hue", self.hue),
            "blur_sigma": _check_range("blur_sigma", self.blur_sigma, high=MAX_SIGMA, positive=True),
        }
        for f in dataclasses.fields(self):
            if f.name.endswith("_p"):
                checked[f.name] = _check_prob(f.name, getattr(self, f.name))
        for name, value in checked.items():
            object.__setattr__(self, name, value)


_VIEW_FIELDS = tuple(f.name for f in dataclasses.fields(ViewConfig))
# Most specific last, so that it wins.
_PREFIXES = (("", ("global1", "global2", "local")), ("global_", ("global1", "global2")),
             ("local_", ("local",)), ("global1_", ("global1",)), ("global2_", ("global2",)))

_BASE = {
    "global1": dict(size=224, scale=(0.4, 1.0), blur_p=1.0, solarize_p=0.0),
    "global2": dict(size=224, scale=(0.4, 1.0), blur_p=0.1, solarize_p=0.2),
    "local": dict(size=96, scale=(0.05, 0.4), blur_p=0.5, solarize_p=0.0),
}
_PRESETS = {
    "baug": {},
    "caug": {"rotation_p": 1.0},
    "caug+": {"rotation_p": 1.0, "elastic_p": 0.5},
}


@dataclass(frozen=True)
class AugConfig:
    """A full multi-crop recipe: the two global views, the local view template, how many local
    views, and the normalisation applied to every view."""
    global1: ViewConfig
    global2: ViewConfig
    local: ViewConfig
    n_local: int = 8
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        for name in ("global1", "global2", "local"):
            if not isinstance(getattr(self, name), ViewConfig):
                raise TypeError(f"{name} must be a ViewConfig, got {type(getattr(self, name)).__name__}")
        object.__setattr__(self, "n_local", as_index(self.n_local))
        if isinstance(self.n_local, bool) or not isinstance(self.n_local, int) or self.n_local < 0:
            raise ValueError(f"n_local must be an int >= 0, got {self.n_local!r}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or not all(math.isfinite(v) for v in value):
                raise ValueError(f"{name} must be 3 finite numbers (R, G, B), got {getattr(self, name)!r}")
            if name == "std" and min(value) <= 0:
                raise ValueError(f"std must be > 0, got {value!r}")
            object.__setattr__(self, name, value)

    @property
    def n_views(self) -> int:
        return 2 + self.n_local

    def views(self) -> List[ViewConfig]:
        """Per-view configs in the authors' order: global 1, global 2, then the local views."""
        return [self.global1, self.global2] + [self.local] * self.n_local

    def replace(self, **overrides) -> "AugConfig":
        """A copy with prefixed overrides applied (see the module docstring); also accepts
        n_local, mean and std."""
        top = {k: overrides.pop(k) for k in ("n_local", "mean", "std") if k in overrides}
        per_view = _split_overrides(overrides)
        views = {}
        for name in ("global1", "global2", "local"):
            try:
                views[name] = dataclasses.replace(getattr(self, name), **per_view[name])
            except ValueError as exc:
                raise ValueError(f"{name} view: {exc}") from None
        return dataclasses.replace(self, **views, **top)


def _split_overrides(overrides: Dict[str, object]) -> Dict[str, Dict[str, object]]:
    per_view = {"global1": {}, "global2": {}, "local": {}}
    claimed = set()
    for prefix, targets in _PREFIXES:
        for key, value in overrides.items():
            if key.startswith(prefix) and key[len(prefix):] in _VIEW_FIELDS:
                claimed.add(key)
                for target in targets:
                    per_view[target][key[len(prefix):]] = value
    unknown = sorted(set(overrides) - claimed)
    if unknown:
        raise TypeError(f"unknown augmentation override(s) {unknown}; expected a ViewConfig field "
                        f"{list(_VIEW_FIELDS)}, optionally prefixed by global_, local_, global1_ "
                        "or global2_")
    return per_view


_OPTIONAL_NAMED = ("n_local", "global_size", "local_size", "global_scale", "local_scale")


def make_config(preset: Union[str, AugConfig] = "baug", **overrides) -> AugConfig:
    """The AugConfig of a preset ("baug", "caug", "caug+"), with overrides applied.

    A ready AugConfig may be passed instead of a name; the overrides then apply to it.
    n_local, global_size, local_size, global_scale and local_scale given as None keep the
    preset's (or the AugConfig's) values, so that callers can forward their own optional
    arguments. Raises ValueError for an unknown preset or an out-of-range value (naming the
    argument) and TypeError for an unknown override.
    """
    overrides = {k: v for k, v in overrides.items() if not (k in _OPTIONAL_NAMED and v is None)}
    if isinstance(preset, AugConfig):
        return preset.replace(**overrides)
    if not isinstance(preset, str) or preset.lower() not in _PRESETS:
        raise ValueError(f"preset must be one of {PRESET_NAMES} or an AugConfig, got {preset!r}")
    preset_keys = _PRESETS[preset.lower()]
    views = {name: ViewConfig(**{**base, **preset_keys}) for name, base in _BASE.items()}
    return AugConfig(**views).replace(**overrides)
