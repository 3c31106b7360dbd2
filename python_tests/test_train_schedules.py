"""DINO's schedules and optimiser helpers: values at the landmarks."""
import math

import numpy as np
import pytest
import torch

from clever_kernels.loss import CLeVERLoss
from clever_kernels.train.schedules import (clip_gradients, cosine_schedule, ema_update, param_groups,
                                            scaled_lr)


def test_lr_schedule_warmup_then_cosine():
    lr = cosine_schedule(0.01, 1e-5, epochs=10, niter_per_ep=20, warmup_epochs=2)
    assert lr.shape == (200,)
    assert lr[0] == 0.0
    # DINO's np.linspace(0, base, warmup iterations): the ramp's last value is the peak itself
    np.testing.assert_allclose(lr[:40], np.arange(40) * 0.01 / 39)
    assert lr[39] == pytest.approx(0.01) and lr[40] == pytest.approx(0.01)
    assert np.all(np.diff(lr[40:]) < 0)
    # the half cosine: halfway through the decay the value is the midpoint
    assert lr[40 + 80] == pytest.approx((0.01 + 1e-5) / 2)
    assert lr[-1] == pytest.approx(1e-5 + 0.5 * (0.01 - 1e-5) * (1 + math.cos(math.pi * 159 / 160)))


def test_momentum_and_weight_decay_schedules():
    m = cosine_schedule(0.996, 1.0, epochs=4, niter_per_ep=5)
    assert m[0] == pytest.approx(0.996) and np.all(np.diff(m) > 0) and 0.9999 < m[-1] < 1.0
    wd = cosine_schedule(0.04, 0.4, epochs=4, niter_per_ep=5)
    assert wd[0] == pytest.approx(0.04) and wd[-1] == pytest.approx(0.4, abs=3e-3)


def test_warmup_longer_than_training_is_the_ramps_start():
    lr = cosine_schedule(1.0, 0.0, epochs=1, niter_per_ep=4, warmup_epochs=3)
    np.testing.assert_allclose(lr, np.arange(4) / 11)  # the first 4 of a 12-iteration ramp


def test_fractional_warmup_rounds_to_iterations_and_negative_is_refused():
    lr = cosine_schedule(1.0, 0.0, epochs=2, niter_per_ep=4, warmup_epochs=0.75)
    np.testing.assert_allclose(lr[:3], [0.0, 0.5, 1.0])
    assert lr[3] == pytest.approx(1.0) and np.all(np.diff(lr[3:]) < 0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        cosine_schedule(1.0, 0.0, epochs=2, niter_per_ep=4, warmup_epochs=-1)


def test_linear_scaling():
    assert scaled_lr(0.0005, 64, 1) == pytest.approx(0.000125)
    assert scaled_lr(0.0005, 64, 4) == pytest.approx(0.0005)


def test_teacher_temperature_warmup_from_loss_module():
    loss = CLeVERLoss(8, 4, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3, nepochs=5,
                      dvr_out_dim=8)
    assert [round(loss.teacher_temp(e), 4) for e in range(5)] == [0.04, 0.055, 0.07, 0.07, 0.07]


def test_param_groups_exclude_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2, bias=False))
    model[2].weight.requires_grad_(False)
    decay, no_decay = param_groups(model)
    assert [p.shape for p in decay["params"]] == [(4, 3)]
    assert sorted(p.numel() for p in no_decay["params"]) == [4, 4, 4] and no_decay["weight_decay"] == 0.0


def test_clip_gradients_per_parameter():
    a, b = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(3))
    model = torch.nn.Module()
    model.a, model.b = a, b
    a.grad = torch.full((4,), 3.0)  # norm 6
    b.grad = torch.tensor([0.1, 0.2, 0.2])  # norm 0.3, under the cap
    clip_gradients(model, 2.0)
    assert float(a.grad.norm()) == pytest.approx(2.0, rel=1e-5)
    torch.testing.assert_close(b.grad, torch.tensor([0.1, 0.2, 0.2]))


def test_ema_update():
    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    t0 = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t, s, before in zip(teacher.parameters(), student.parameters(), t0):
        torch.testing.assert_close(t, 0.9 * before + 0.1 * s.detach())


def test_size_defaults_and_augmentation_overrides():
    from clever_kernels.train.cli import train_parser
    from clever_kernels.train.trainer import aug_overrides, build_multicrop, resolve_sizes

    args = resolve_sizes(train_parser().parse_args([]))
    assert (args.global_size, args.local_size, args.patch_size, args.small_stem) == (32, 16, 4, True)
    assert args.blur_sigma == pytest.approx((0.1 * 32 / 224, 2.0 * 32 / 224))
    big = resolve_sizes(train_parser().parse_args(["--data", "/some/folder"]))
    assert (big.global_size, big.local_size, big.patch_size, big.small_stem) == (224, 96, 16, False)
    assert big.blur_sigma == pytest.approx((0.1, 2.0))
    assert aug_overrides(["flip_p=0", "degrees=(-45, 45)"]) == {"flip_p": 0, "degrees": (-45, 45)}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        aug_overrides(["flip_p"])
    args = resolve_sizes(train_parser().parse_args(["--aug-set", "flip_p=0", "--aug-set", "local_degrees=(-5,5)"]))
    config = build_multicrop(args).config
    assert config.global1.flip_p == 0 and config.local.degrees == (-5, 5) and config.global1.degrees == (-90, 90)


def test_defaults_follow_the_spec_and_dino():
    """clever-train's defaults are SPEC.md's (CLeVER's code) and DINO's recipe."""
    from clever_kernels.train.cli import train_parser

    args = train_parser().parse_args([])
    spec = dict(hp1=0.8, sep_lambd=1.0, reg_lambd=0.001, student_temp=0.1, teacher_temp=0.04,
                warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=0, center_momentum=0.9, out_dim=65536,
                dvr_out_dim=16384, head_hidden=2048, head_bottleneck=256, n_local=8, global_scale=(0.4, 1.0),
                local_scale=(0.05, 0.4), norm_last_layer=True,
                # DINO's recipe
                momentum_teacher=0.996, freeze_last_layer=1, clip_grad=3.0, weight_decay=0.04,
                weight_decay_end=0.4)
    for name, want in spec.items():
        assert getattr(args, name) == want, f"--{name.replace('_', '-')} defaults to {getattr(args, name)!r}, not {want!r}"


def test_help_shows_defaults_of_values_only():
    """A flag's help carries no '(default: ...)': for a store_false flag argparse would print
    '(default: True)' though the flag is off unless given (--imagenet-stem, --no-norm-last-layer)."""
    from clever_kernels.train.cli import eval_parser, train_parser

    text = " ".join(train_parser().format_help().split())
    for flag in ("--imagenet-stem", "--no-norm-last-layer", "--small-stem", "--head-bn"):
        entry = text.split(f" {flag} ", 1)[1].split(" --", 1)[0]
        assert "(default:" not in entry, f"{flag}: {entry}"
    assert "head 1 (IR / DINO) prototypes K1 (default: 65536)" in text
    assert "(default: None)" not in text and "(default: None)" not in eval_parser().format_help()
