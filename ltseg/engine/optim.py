"""Optimizer and learning-rate schedule: SGD with momentum, linear warm-up, multistep decay.

Everything is iteration-based (like detectron2): ``scheduler.step()`` is called once per
training iteration, skipped steps included, so the LR at iteration ``i`` depends on ``i`` only.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

# Parameters of these layers get ``weight_decay_norm`` instead of ``weight_decay``.
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def build_optimizer(model: nn.Module, schedule: Mapping) -> torch.optim.SGD:
    """SGD(momentum, weight decay) over trainable parameters; norm layers use ``weight_decay_norm``.

    Keys of ``schedule``: ``base_lr``, ``momentum`` (0.9), ``weight_decay`` (1e-4),
    ``weight_decay_norm`` (0.0), ``nesterov`` (false).
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES)
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if is_norm else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(schedule["weight_decay"])}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": float(schedule["weight_decay_norm"])})
    return torch.optim.SGD(
        groups,
        lr=float(schedule["base_lr"]),
        momentum=float(schedule["momentum"]),
        nesterov=bool(schedule.get("nesterov", False)),
    )


def warmup_multistep_factor(
    iteration: int, warmup_iters: int, warmup_factor: float, steps: Sequence[int], gamma: float
) -> float:
    """LR multiplier at ``iteration``: linear ramp ``warmup_factor -> 1`` over ``warmup_iters``,
    times ``gamma`` per milestone in ``steps`` already reached (``iteration >= step``)."""
    factor = gamma ** sum(1 for s in steps if iteration >= s)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1.0 - alpha) + alpha
    return factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: Mapping) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration ``LambdaLR`` of :func:`warmup_multistep_factor`.

    Keys: ``warmup_iters``, ``warmup_factor``, ``steps`` (ascending; steps past ``max_iter``
    never apply), ``gamma``.
    """
    steps = [int(s) for s in schedule["steps"]]
    if steps != sorted(steps) or any(s <= 0 for s in steps):
        raise ValueError(f"schedule.steps must be positive and ascending, got {steps}")
    warmup_iters = int(schedule["warmup_iters"])
    warmup_factor = float(schedule["warmup_factor"])
    gamma = float(schedule["gamma"])

    def factor(it: int) -> float:
        return warmup_multistep_factor(it, warmup_iters, warmup_factor, steps, gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
