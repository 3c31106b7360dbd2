"""AugParams: every parameter drawn for one view of B images.

This record is what the sampler returns, what the reference renderer and the fused kernels
consume, and what training code may keep as equivariance targets. A multi-view draw is a list of
AugParams in the authors' view order: global 1, global 2, then the local views.
"""
import dataclasses
import math
import operator
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import torch

Tensor = torch.Tensor

_INT_FIELDS = ("top", "left", "height", "width", "elastic_seed", "image_height", "image_width")
_BOOL_FIELDS = ("flip", "elastic", "jitter", "grayscale", "solarize")
#: The float32 per-sample fields.
FLOAT_FIELDS = ("angle", "brightness", "contrast", "saturation", "hue", "blur_sigma")
TENSOR_FIELDS = ("top", "left", "height", "width", "flip", "angle", "elastic", "elastic_seed",
                 "jitter", "brightness", "contrast", "saturation", "hue", "order", "grayscale",
                 "blur_sigma", "solarize", "image_height", "image_width")

#: Columns of AugParams.to_tensor(), in order (`order` spreads over four columns).
COLUMNS = ("top", "left", "height", "width", "flip", "angle", "elastic", "elastic_seed", "jitter",
           "brightness", "contrast", "saturation", "hue", "order0", "order1", "order2", "order3",
           "grayscale", "blur_sigma", "solarize", "image_height", "image_width")

#: Largest blur or elastic sigma a renderer takes (output pixels). The kernels' work grows with
#: the square of the radius (3 sigma), so an unbounded sigma would be a render that never ends.
MAX_SIGMA = 1000.0

#: Largest output side a renderer takes: the CUDA kernels put one block per 16 x 16 tile of a view
#: in a grid dimension of at most 65535 (csrc/include/clever_kernels/render_views_args.h).
MAX_SIZE = 4080

#: Largest side of a source image a renderer takes, the kernels' bound (image_table_error in
#: csrc/include/clever_kernels/augment_pixel.h, which keeps channels x height x width far from
#: overflow); the reference refuses the same images, so both backends take the same inputs.
MAX_IMAGE_SIDE = 2**20

#: Largest magnitude of any other number in a recipe (angles, factors, strengths): parameters
#: are drawn and rendered in float32, where a range near float32's limit would draw inf.
MAX_MAGNITUDE = 1e6

#: Colour-jitter op numbering used by `order`.
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def as_index(value):
    """An integer scalar of any type (numpy's too) as a Python int; anything else unchanged, for
    the caller's check to take or refuse (bools and tensors included, arrays too, which have
    __index__ as well)."""
    if (not isinstance(value, (bool, int, Tensor)) and hasattr(value, "__index__")
            and getattr(value, "ndim", 0) == 0):
        try:
            return operator.index(value)
        except TypeError:  # a 0-d array of another kind: the caller's check names it
            return value
    return value


def as_float32(value: float) -> float:
    """value rounded to the nearest float32, as a Python float."""
    return struct.unpack("f", struct.pack("f", value))[0]


@dataclass(kw_only=True, eq=False)
class AugParams:
    """Parameters of one view for B images. All tensors share one device; shapes are (B,) unless
    noted.

    top, left, height, width   int64  crop box in source pixels (rows top..top+height-1)
    flip                       bool   horizontal flip, applied after the resize
    angle                      float32 rotation in degrees, counter-clockwise; 0 when not rotated
    elastic                    bool   elastic displacement applied
    elastic_seed               int64  32-bit key of the elastic noise field (values in [0, 2**32));
                                      drawn for every sample, used only where `elastic` is set
    jitter                     bool   colour jitter applied
    brightness, contrast, saturation  float32 factors (1 = unchanged; 1 when jitter is off)
    hue                        float32 hue shift in turns (0 = unchanged; 0 when jitter is off)
    order                      int64 (B, 4) permutation of 0..3 (brightness, contrast, saturation,
                                      hue): the jitter ops in the order they are applied
    grayscale                  bool
    blur_sigma                 float32 Gaussian blur sigma in output pixels; 0 when not blurred
    solarize                   bool
    image_height, image_width  int64  size of the source image the parameters were drawn for:
                                      render() refuses other images, whose crop boxes would
                                      mean other regions

    View-level constants: size (output side S), view (0 global 1, 1 global 2, 2.. local),
    elastic_alpha and elastic_sigma (the elastic transform's strength and field smoothing).
    """
    size: int
    view: int
    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor
    flip: Tensor
    angle: Tensor
    elastic: Tensor
    elastic_seed: Tensor
    jitter: Tensor
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    order: Tensor
    grayscale: Tensor
    blur_sigma: Tensor
    solarize: Tensor
    image_height: Tensor
    image_width: Tensor
    elastic_alpha: float = 0.0
    elastic_sigma: float = 0.0

    def __post_init__(self):
        for name, low, high in (("size", 1, MAX_SIZE), ("view", 0, None)):
            value = as_index(getattr(self, name))
            setattr(self, name, value)
            if not isinstance(value, int) or isinstance(value, bool) or value < low or (high and value > high):
                want = f"in [{low}, {high}]" if high else f">= {low}"
                raise ValueError(f"{name} must be an int {want}, got {value!r}")
        for name, high in (("elastic_alpha", MAX_MAGNITUDE), ("elastic_sigma", MAX_SIGMA)):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and 0 <= value <= high):
                raise ValueError(f"{name} must be a finite number in [0, {high:g}], got {value!r}")
            # Rounded to float32 here, as the kernels take it, so that every renderer sees one
            # value: the field's kernel size int(8 sigma + 1) steps at sigma = k / 8, and a float64
            # sigma just below a step rounds onto it in float32.
            setattr(self, name, as_float32(value))
        batch, device = None, None
        for name in TENSOR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise TypeError(f"AugParams.{name} must be a tensor, got {type(value).__name__}")
            want = (torch.int64 if name in _INT_FIELDS or name == "order"
                    else torch.bool if name in _BOOL_FIELDS else torch.float32)
            if value.dtype != want:
                raise TypeError(f"AugParams.{name} must have dtype {want}, got {value.dtype}")
            if batch is None:
                batch, device = value.shape[0] if value.dim() else None, value.device
            shape = (batch, 4) if name == "order" else (batch,)
            if tuple(value.shape) != shape:
                raise ValueError(f"AugParams.{name} must have shape {shape}, got {tuple(value.shape)}")
            if value.device != device:
                raise ValueError(f"AugParams.{name} is on {value.device}, the other fields on {device}")

    def __eq__(self, other) -> bool:
        """Same view constants and every per-sample field equal (and on the same device)."""
        if not isinstance(other, AugParams):
            return NotImplemented
        return (all(getattr(self, name) == getattr(other, name)
                    for name in ("size", "view", "elastic_alpha", "elastic_sigma"))
                and self.device == other.device
                and all(torch.equal(getattr(self, name), getattr(other, name)) for name in TENSOR_FIELDS))

    __hash__ = None  # mutable tensors

    @property
    def batch_size(self) -> int:
        return self.top.shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def device(self) -> torch.device:
        return self.top.device

    @property
    def is_global(self) -> bool:
        return self.view < 2

    columns = COLUMNS

    def to_tensor(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """(B, len(COLUMNS)) tensor of every per-sample parameter, columns as in `self.columns`.

        Booleans become 0/1. elastic_seed is a 32-bit integer: exact in float64, rounded in
        float32 (pass dtype=torch.float64 to keep it: `from_tensor` refuses a float32 table
        with elastic samples).
        """
        parts = [getattr(self, name).to(dtype).unsqueeze(1) if name != "order" else self.order.to(dtype)
                 for name in TENSOR_FIELDS]
        return torch.cat(parts, dim=1)

    @classmethod
    def from_tensor(cls, table: Tensor, size: int, view: int, elastic_alpha: Optional[float] = None,
                    elastic_sigma: Optional[float] = None) -> "AugParams":
        """Inverse of to_tensor: (B, len(COLUMNS)) tensor back to an AugParams.

        The table holds no view-level constants: where any sample has elastic set, pass the
        view's elastic_alpha and elastic_sigma (they default to 0 only where no sample has), and
        the table must be float64, float32 having rounded the 32-bit elastic seeds. Any table
        must be float32 or float64 (an integer one has truncated the angles and factors, a
        half-precision one rounded the crop boxes).
        """
        if isinstance(table, Tensor) and table.dim() == 2 and table.shape[1] == len(COLUMNS) - 2:
            raise ValueError(f"table has {len(COLUMNS) - 2} columns, the layout before AugParams recorded its "
                             f"images' sizes: append image_height and image_width columns (B, 2) to read "
                             f"it back, {len(COLUMNS)} in all")
        if not isinstance(table, Tensor) or table.dim() != 2 or table.shape[1] != len(COLUMNS):
            raise ValueError(f"table must be a tensor of shape (B, {len(COLUMNS)}), got "
                             f"{tuple(table.shape) if isinstance(table, Tensor) else type(table).__name__}")
        if not table.is_floating_point():
            raise ValueError(f"table must be floating point, as to_tensor makes it: {table.dtype} has "
                             "truncated the angles and colour factors")
        if table.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"table must be float32 or float64: {table.dtype} rounds crop boxes and angles "
                             "(bfloat16 keeps 8 significant bits: a width of 349 reads back as 348)")
        col = {name: table[:, i] for i, name in enumerate(COLUMNS)}
        if bool((col["elastic"] != 0).any()):
            if elastic_alpha is None or elastic_sigma is None:
                raise ValueError("table has samples with elastic set: pass the view's elastic_alpha and "
                                 "elastic_sigma (AugParams.elastic_alpha / .elastic_sigma), which the table "
                                 "does not hold")
            if table.dtype != torch.float64:
                raise ValueError(f"table has samples with elastic set, so it must be float64 "
                                 f"(to_tensor(torch.float64)): {table.dtype} rounds the 32-bit elastic_seed")
        elastic_alpha = 0.0 if elastic_alpha is None else elastic_alpha
        elastic_sigma = 0.0 if elastic_sigma is None else elastic_sigma
        fields = {}
        for name in TENSOR_FIELDS:
            if name == "order":
                first = COLUMNS.index("order0")
                fields[name] = table[:, first:first + 4].round().to(torch.int64)
            elif name in _INT_FIELDS:
                fields[name] = col[name].round().to(torch.int64)
            elif name in _BOOL_FIELDS:
                fields[name] = col[name] != 0
            else:
                fields[name] = col[name].to(torch.float32)
        return cls(size=size, view=view, elastic_alpha=elastic_alpha, elastic_sigma=elastic_sigma, **fields)

    def _map(self, fn) -> "AugParams":
        return dataclasses.replace(self, **{name: fn(getattr(self, name)) for name in TENSOR_FIELDS})

    def index(self, idx: Union[int, slice, Sequence[int], Tensor]) -> "AugParams":
        """The samples selected by idx: an int (a batch dimension of 1 is kept), a slice, or a
        sequence, array or 1-D tensor of ints or of B bools (a mask)."""
        if isinstance(idx, Tensor) and idx.dim() == 0 and not idx.dtype.is_floating_point and idx.dtype != torch.bool:
            idx = int(idx)
        if isinstance(idx, bool):
            raise TypeError("index: a bool is not a sample index (a mask is a sequence of B bools)")
        idx = as_index(idx)
        if isinstance(idx, int):
            if not -self.batch_size <= idx < self.batch_size:
                raise IndexError(f"index {idx} is out of range for a batch of {self.batch_size}")
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        elif not isinstance(idx, slice):
            idx = self._as_index_tensor(idx)
        return self._map(lambda t: t[idx])

    def _as_index_tensor(self, idx) -> Tensor:
        tensor = idx if isinstance(idx, Tensor) else torch.as_tensor(idx)
        if tensor.numel() == 0 and tensor.dim() == 1:
            tensor = tensor.to(torch.int64)  # [] reads as float32: no samples, as a list index gives
        if tensor.dim() != 1 or tensor.is_floating_point() or tensor.is_complex():
            raise TypeError(f"index: expected an int, a slice, or a 1-D sequence or tensor of ints or bools, got "
                            f"{tensor.dtype} of shape {tuple(tensor.shape)}")
        if tensor.dtype == torch.bool and tensor.shape[0] != self.batch_size:
            raise IndexError(f"index: a mask must have {self.batch_size} entries, got {tensor.shape[0]}")
        if tensor.dtype != torch.bool:
            tensor = tensor.to(torch.int64)
        return tensor.to(self.device)

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "AugParams":
        """The parameters on `device`; their dtypes are fixed (to_tensor(dtype) gives a table)."""
        if isinstance(device, torch.dtype):
            raise TypeError(f"AugParams.to takes a device, got the dtype {device}: the fields' dtypes are fixed "
                            "(to_tensor(dtype) gives a table)")
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    @classmethod
    def identity(cls, image_sizes: Tensor, size: int, view: int = 0) -> "AugParams":
        """Parameters that only resize each full image to size x size: no flip, rotation, elastic,
        jitter, grayscale, blur or solarize. image_sizes: (B, 2) ints (height, width), a tensor or
        a sequence of pairs."""
        if not isinstance(image_sizes, Tensor):
            image_sizes = torch.as_tensor(image_sizes, dtype=torch.int64)
        if image_sizes.dim() != 2 or image_sizes.shape[1] != 2:
            raise ValueError(f"image_sizes must have shape (B, 2), got {tuple(image_sizes.shape)}")
        batch, device = image_sizes.shape[0], image_sizes.device
        zeros_i = torch.zeros(batch, dtype=torch.int64, device=device)
        false = torch.zeros(batch, dtype=torch.bool, device=device)
        zeros_f = torch.zeros(batch, dtype=torch.float32, device=device)
        ones_f = torch.ones(batch, dtype=torch.float32, device=device)
        order = torch.arange(4, device=device).expand(batch, 4).clone()
        return cls(size=size, view=view, top=zeros_i, left=zeros_i.clone(),
                   height=image_sizes[:, 0].to(torch.int64, copy=True),
                   width=image_sizes[:, 1].to(torch.int64, copy=True),
                   flip=false, angle=zeros_f, elastic=false.clone(), elastic_seed=zeros_i.clone(),
                   jitter=false.clone(), brightness=ones_f, contrast=ones_f.clone(),
                   saturation=ones_f.clone(), hue=zeros_f.clone(), order=order,
                   grayscale=false.clone(), blur_sigma=zeros_f.clone(), solarize=false.clone(),
                   image_height=image_sizes[:, 0].to(torch.int64, copy=True),
                   image_width=image_sizes[:, 1].to(torch.int64, copy=True))


def group_by_size(views: Sequence[AugParams]) -> Dict[int, List[int]]:
    """Indices into `views` by output size, sizes in order of first appearance: the renderers
    make one tensor (one op call) per size."""
    groups: Dict[int, List[int]] = {}
    for index, p in enumerate(views):
        groups.setdefault(p.size, []).append(index)
    return groups
