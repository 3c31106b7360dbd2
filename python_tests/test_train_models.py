"""Backbones, heads and the multi-crop wrapper: shapes for odd image sizes, the hand-written
weight normalisation, the frozen prototypes, the IR / EF split."""
import pytest
import torch

from clever_kernels.train.models import (DINOHead, MultiCropWrapper, ResNet18, VisionTransformer, build_backbone,
                                         build_model, feature_split)
from clever_kernels.train.schedules import cancel_last_layer_gradients, head_norm_gap


@pytest.mark.parametrize("size", [(32, 32), (33, 29), (16, 16), (7, 9), (4, 4)])
def test_vit_any_size(size):
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3)
    out = vit(torch.randn(3, 3, *size))
    assert out.shape == (3, 48) and torch.isfinite(out).all()


def test_vit_rejects_inputs_smaller_than_a_patch():
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=1)
    with pytest.raises(ValueError, match="patch"):
        vit(torch.randn(1, 3, 7, 32))


@pytest.mark.parametrize("small_stem,size", [(True, (32, 32)), (True, (17, 23)), (True, (3, 5)),
                                             (False, (64, 48)), (False, (21, 35))])
def test_resnet_any_size(small_stem, size):
    torch.manual_seed(0)
    net = ResNet18(small_stem=small_stem, width=8).eval()
    out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 64) and net.embed_dim == 64


def test_archs_widths():
    assert build_backbone("vit_tiny", 32, patch_size=4, depth=1).embed_dim == 192
    assert build_backbone("vit_small", 32, patch_size=4, depth=1).embed_dim == 384
    assert build_backbone("resnet18", 32, small_stem=True).embed_dim == 512
    with pytest.raises(ValueError, match="arch"):
        build_backbone("vit_huge", 32)


def test_head_weight_norm_and_frozen_g():
    torch.manual_seed(0)
    head = DINOHead(20, 30, hidden_dim=16, bottleneck_dim=8)
    assert not head.last_layer.weight_g.requires_grad
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(30))
    with torch.no_grad():
        head.last_layer.weight_v.mul_(7.0)
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(30))
    logits = head(torch.randn(5, 20))
    # unit bottleneck against unit prototypes: every logit is a cosine
    assert logits.shape == (5, 30) and logits.abs().max() <= 1 + 1e-5
    learnt = DINOHead(20, 30, hidden_dim=16, bottleneck_dim=8, norm_last_layer=False)
    assert learnt.last_layer.weight_g.requires_grad
    names = {n for n, _ in head.named_parameters()}
    assert {"last_layer.weight_v", "last_layer.weight_g"} <= names
    assert not any(isinstance(m, torch.nn.Linear) and m.bias is not None for m in head.last_layer.modules())


def test_weight_norm_gradient_is_orthogonal_to_rows():
    torch.manual_seed(0)
    head = DINOHead(6, 5, hidden_dim=8, bottleneck_dim=4)
    head(torch.randn(7, 6)).pow(2).sum().backward()
    v, g = head.last_layer.weight_v, head.last_layer.weight_v.grad
    # scaling a row of v leaves the output unchanged, so its gradient has no radial component
    torch.testing.assert_close((v * g).sum(dim=1), torch.zeros(5), atol=1e-6, rtol=0)


def test_last_layer_frozen_in_first_epochs():
    torch.manual_seed(0)
    model = build_model("clever", build_backbone("vit_tiny", 16, patch_size=8, width=32, depth=1), 12, 10, 0.8,
                        hidden_dim=16, bottleneck_dim=8)
    ir, ef = model([torch.randn(2, 3, 16, 16)])
    (ir.sum() + ef.sum()).backward()
    cancel_last_layer_gradients(model, epoch=0, freeze_last_layer=1)
    frozen = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    assert frozen == {"heads.0.last_layer.weight_v", "heads.1.last_layer.weight_v"}
    model.zero_grad()
    ir, ef = model([torch.randn(2, 3, 16, 16)])
    (ir.sum() + ef.sum()).backward()
    cancel_last_layer_gradients(model, epoch=1, freeze_last_layer=1)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_feature_split():
    # rounded down, as the authors' main_dino.py sizes its heads (round() would give 154 and 410)
    assert feature_split(192, 0.8) == (153, 39)
    assert feature_split(512, 0.8) == (409, 103)
    assert feature_split(384, 0.8) == (307, 77)
    assert feature_split(10, 0.99) == (9, 1)
    with pytest.raises(ValueError):
        feature_split(10, 1.0)


def test_wrapper_shapes_and_split():
    torch.manual_seed(0)
    backbone = build_backbone("vit_tiny", 32, patch_size=8, width=64, depth=1)
    model = build_model("clever", backbone, 24, 20, 0.8, hidden_dim=16, bottleneck_dim=8)
    assert model.splits == (51, 13)
    views = [torch.randn(3, 3, 32, 32) for _ in range(2)] + [torch.randn(3, 3, 16, 16) for _ in range(4)]
    ir, ef = model(views)
    assert ir.shape == (18, 24) and ef.shape == (18, 20)
    # view-major rows: view v of image b is row v * B + b, whatever the batching by resolution
    alone = model.heads[0](backbone(views[3])[:, :51])
    torch.testing.assert_close(ir[9:12], alone)
    (logits,) = build_model("dino", backbone, 24, 20, 0.8, hidden_dim=16, bottleneck_dim=8)(views[:2])
    assert logits.shape == (6, 24)
    with pytest.raises(ValueError):
        MultiCropWrapper(backbone, [torch.nn.Identity()], [10])


def test_head_norm_gap():
    torch.manual_seed(0)
    a, b = DINOHead(4, 6, 5, 3), DINOHead(2, 6, 5, 3)
    square_sum = lambda head: sum(float(p.detach().pow(2).sum()) for p in head.parameters())
    expected = abs(square_sum(a) - square_sum(b))
    gap = head_norm_gap([a, b])
    assert float(gap.detach()) == pytest.approx(expected, rel=1e-5)
    gap.backward()
    assert a.mlp[0].weight.grad is not None and b.mlp[0].weight.grad is not None


def test_head_batchnorm_option():
    head = DINOHead(12, 20, hidden_dim=16, bottleneck_dim=8, use_bn=True)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.mlp) == 2
    assert head(torch.randn(4, 12)).shape == (4, 20)
    model = build_model("clever", build_backbone("resnet18", 16, small_stem=True, width=4), 10, 6, 0.8,
                        hidden_dim=16, bottleneck_dim=8, head_bn=True)
    ir, ef = model([torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)])
    assert ir.shape == (6, 10) and ef.shape == (6, 6)


def test_head_norm_gap_either_way_round_and_over_frozen_parameters():
    """| ||theta_1||^2 - ||theta_2||^2 | over every head parameter, the frozen norms g of the
    weight-normalised prototypes included (SPEC.md: a plain sum over head parameters): the value
    and the gradient when the second head is the larger one, and with heads of unequal out_dim
    so that the g's (one per prototype) do not cancel."""
    torch.manual_seed(1)
    small, large = DINOHead(3, 5, 4, 3), DINOHead(6, 11, 9, 4)
    assert not large.last_layer.weight_g.requires_grad
    square_sum = lambda head: sum(float(t.double().pow(2).sum()) for t in head.state_dict().values())
    s_small, s_large = square_sum(small), square_sum(large)
    assert s_large > s_small + 6  # the larger head's 11 frozen g's alone outweigh the smaller's 5
    for order in ([small, large], [large, small]):
        gap = head_norm_gap(order)
        assert float(gap.detach()) == pytest.approx(s_large - s_small, rel=1e-5), \
            f"gap of {[type(h).__name__ for h in order]}: {float(gap)} != {s_large - s_small}"
        small.zero_grad()
        large.zero_grad()
        gap.backward()
        # d/dtheta of the gap: +2 theta on the larger head, -2 theta on the smaller
        torch.testing.assert_close(large.mlp[0].weight.grad, 2 * large.mlp[0].weight.detach())
        torch.testing.assert_close(small.mlp[0].weight.grad, -2 * small.mlp[0].weight.detach())
