"""DINO's per-iteration schedules and the optimiser helpers that go with them."""
import math
from typing import Dict, Iterable, List

import numpy as np
import torch
import torch.nn as nn


def cosine_schedule(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                    warmup_epochs: float = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """One value per iteration (epochs * niter_per_ep of them), as DINO's cosine_scheduler: a
    linear ramp from start_warmup_value to base_value over the first warmup_epochs * niter_per_ep
    iterations, base_value included as the ramp's last value, then a half cosine from base_value
    to final_value, reaching final_value only in the limit (the last iteration is one step short
    of it). A warm-up longer than the run (which DINO refuses) is cut where the run ends, so each
    iteration keeps the value the full ramp gives it."""
    if epochs < 1 or niter_per_ep < 1:
        raise ValueError(f"epochs and niter_per_ep must be >= 1, got {epochs} and {niter_per_ep}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    total = epochs * niter_per_ep
    full_ramp = int(round(warmup_epochs * niter_per_ep))
    ramp = np.linspace(start_warmup_value, base_value, full_ramp)[:total]
    warmup = len(ramp)
    steps = np.arange(total - warmup)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(math.pi * steps / max(len(steps), 1)))
    return np.concatenate((ramp, cosine))


def scaled_lr(lr: float, batch_size: int, world_size: int) -> float:
    """DINO's linear scaling rule: the lr is given for a total batch of 256."""
    return lr * batch_size * world_size / 256.0


def param_groups(model: nn.Module) -> List[Dict]:
    """Two AdamW groups: weights (decayed) and biases and norm parameters, i.e. every tensor with
    one dimension (not decayed). Frozen parameters are left out."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or param.ndim == 1 else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float) -> None:
    """Scale each parameter's gradient to a norm of at most `clip`, parameter by parameter (not
    the global norm, as DINO does). The scale stays on the device: no host sync per parameter."""
    for param in model.parameters():
        if param.grad is None:
            continue
        coef = clip / (param.grad.detach().norm(2) + 1e-6)
        param.grad.detach().mul_(torch.clamp(coef, max=1.0))


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_last_layer: int) -> None:
    """Drop the gradients of every head's `last_layer` during the first freeze_last_layer epochs:
    the prototypes stay at their initialisation while the rest of the network settles, which
    DINO found keeps training from collapsing early."""
    if epoch >= freeze_last_layer:
        return
    for name, param in model.named_parameters():
        if "last_layer" in name:
            param.grad = None


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)


def head_norm_gap(heads: Iterable[nn.Module]) -> torch.Tensor:
    """| sum ||theta_head1||^2 - sum ||theta_head2||^2 |: CLeVER's regulariser over every
    parameter of the two heads (frozen ones included, as a plain sum over the modules)."""
    head1, head2 = list(heads)
    square_sum = lambda head: sum(p.pow(2).sum() for p in head.parameters())
    return (square_sum(head1) - square_sum(head2)).abs()
