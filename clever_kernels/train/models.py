"""Backbones (ViT-Tiny/Small, ResNet-18), the DINO projection head and the multi-crop wrapper.

Every backbone maps a (B, 3, H, W) float batch to a (B, D) feature (`embed_dim` = D): the ViT's
normalised CLS token, the ResNet's globally pooled last stage. Both accept any H, W the stem
can reduce to at least one cell, so 32x32 digits with 16x16 local crops work as well as 224x224
photos with 96x96 ones.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor

ARCHS = ("vit_tiny", "vit_small", "resnet18")
_VIT_SIZES = {"vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
              "vit_small": dict(embed_dim=384, depth=12, num_heads=6)}


def _trunc_normal_(tensor: Tensor, std: float = 0.02) -> Tensor:
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        _trunc_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6 as in DINO's ViT)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT returning the normalised CLS token, (B, embed_dim).

    img_size is the side the position embedding is stored for (the global crop size); other
    sizes interpolate it bicubically over the patch grid, as DINO does for its local crops.
    Sides that are not multiples of patch_size lose their last partial patch (the convolution's
    floor), so any side >= patch_size works.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 192,
                 depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        if img_size < patch_size:
            raise ValueError(f"img_size {img_size} is smaller than patch_size {patch_size}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        _trunc_normal_(self.pos_embed)
        _trunc_normal_(self.cls_token)
        self.apply(_init_linear)

    def _pos_embed(self, rows: int, cols: int) -> Tensor:
        if rows == self.grid and cols == self.grid:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(rows, cols), mode="bicubic", align_corners=False)
        return torch.cat((cls_pos, patch_pos.flatten(2).transpose(1, 2)), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < self.patch_size:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than one {self.patch_size}-pixel patch")
        x = self.patch_embed(x)
        rows, cols = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self._pos_embed(rows, cols).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 without its classifier, returning the pooled (B, 8 * width) feature.

    small_stem replaces the 7x7 stride-2 convolution and the max-pool (which shrink the input 4x
    before the first block) by a 3x3 stride-1 convolution, the usual choice for 32x32 inputs.
    width is the first stage's channel count (64 in the paper's ResNet-18).
    """

    def __init__(self, small_stem: bool = False, width: int = 64):
        super().__init__()
        if small_stem:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.embed_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1)


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose weight is g * v / ||v|| row by row.

    With norm_last_layer (DINO's default) g is a frozen vector of ones, so every output logit is
    a cosine between the L2-normalised bottleneck and a unit row of v: the logits stay in
    [-1, 1] and only the directions of the prototypes are learnt.
    """

    def __init__(self, in_features: int, out_features: int, norm_last_layer: bool = True):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not norm_last_layer)

    @property
    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """MLP (in -> hidden -> hidden -> bottleneck, GELU), L2 normalisation, then the
    weight-normalised `last_layer` (bottleneck -> out_dim, no bias).

    use_bn puts a BatchNorm after each hidden linear layer (DINO's use_bn_in_head, which its
    ResNet runs use): pooled ReLU features share a large positive mean direction, and without
    the normalisation every image lands on nearly the same bottleneck direction at
    initialisation, so the centred, sharpened teacher targets are uniform from the first steps
    and training settles in the uniform collapse (loss = ln K).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True, use_bn: bool = False):
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers = []
        for i in range(nlayers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < nlayers - 1:
                if use_bn:
                    layers.append(nn.BatchNorm1d(dims[i + 1]))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.mlp.apply(_init_linear)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class MultiCropWrapper(nn.Module):
    """Backbone plus one head per feature slice.

    DINO: one head on the whole feature. CLeVER: `splits` = (d_ir, d_ef); head 0 sees the first
    d_ir feature dimensions (IR), head 1 the rest (EF). forward takes a list of view batches
    (view-major, each (B, 3, S_v, S_v)), runs the backbone once per run of equal-sized views
    (one call for the globals, one for the locals), and returns one (V * B, K_h) logit tensor per
    head, rows view-major.
    """

    def __init__(self, backbone: nn.Module, heads: Sequence[nn.Module], splits: Sequence[int]):
        super().__init__()
        if len(heads) != len(splits) or sum(splits) != backbone.embed_dim:
            raise ValueError(f"splits {list(splits)} must match the heads and sum to the feature "
                             f"width {backbone.embed_dim}")
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)
        self.splits = tuple(int(s) for s in splits)

    def features(self, views: List[Tensor]) -> Tensor:
        if isinstance(views, Tensor):
            views = [views]
        out, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            out.append(self.backbone(torch.cat(views[start:end])))
            start = end
        return torch.cat(out)

    def forward(self, views: List[Tensor]) -> Tuple[Tensor, ...]:
        parts = torch.split(self.features(views), self.splits, dim=1)
        return tuple(head(part) for head, part in zip(self.heads, parts))


def build_backbone(arch: str, img_size: int, patch_size: int = 16, small_stem: bool = False,
                   width: Optional[int] = None, depth: Optional[int] = None) -> nn.Module:
    """arch in ARCHS. ViT: img_size/patch_size set the stored position grid, depth overrides the
    block count (12), width the embedding width (num_heads keeps a head width of 64).
    ResNet-18: small_stem and width as in ResNet18 (width default 64)."""
    if arch in _VIT_SIZES:
        cfg = dict(_VIT_SIZES[arch])
        if width is not None:
            cfg["embed_dim"], cfg["num_heads"] = width, max(1, width // 64)
        if depth is not None:
            cfg["depth"] = depth
        return VisionTransformer(img_size=img_size, patch_size=patch_size, **cfg)
    if arch == "resnet18":
        if depth is not None:
            raise ValueError("--depth applies to ViTs only")
        return ResNet18(small_stem=small_stem, width=64 if width is None else width)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def feature_split(dim: int, hp1: float) -> Tuple[int, int]:
    """(d_ir, d_ef): IR is the first int(dim * hp1) dimensions, EF the rest; both non-empty.

    Rounded down as the authors' heads and probes are sized, so that widths such as 192 (ViT-Tiny)
    and 512 (ResNet-18), where rounding to nearest gives one more IR dimension, split as theirs do.
    """
    if not 0.0 < hp1 < 1.0:
        raise ValueError(f"hp1 must be in (0, 1), got {hp1}")
    d_ir = min(max(int(dim * hp1), 1), dim - 1)
    return d_ir, dim - d_ir


def build_model(method: str, backbone: nn.Module, out_dim: int, dvr_out_dim: int, hp1: float,
                hidden_dim: int = 2048, bottleneck_dim: int = 256, norm_last_layer: bool = True,
                head_bn: bool = False) -> MultiCropWrapper:
    """The student / teacher network of `method` ("dino" or "clever") around `backbone`."""
    dim = backbone.embed_dim
    head = lambda d_in, d_out: DINOHead(d_in, d_out, hidden_dim, bottleneck_dim, norm_last_layer=norm_last_layer,
                                        use_bn=head_bn)
    if method == "dino":
        heads, splits = [head(dim, out_dim)], [dim]
    elif method == "clever":
        splits = feature_split(dim, hp1)
        heads = [head(splits[0], out_dim), head(splits[1], dvr_out_dim)]
    else:
        raise ValueError(f"method must be 'dino' or 'clever', got {method!r}")
    return MultiCropWrapper(backbone, heads, splits)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
