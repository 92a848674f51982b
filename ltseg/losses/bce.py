"""Sigmoid BCE with C outputs and the prior-probability bias (the EQL / DropLoss baseline)."""
from __future__ import annotations

from torch import Tensor

from ltseg.losses.base import LossContext, register_loss
from ltseg.losses.common import SigmoidLoss, sigmoid_targets, weighted_bce


@register_loss("bce")
class SigmoidBCE(SigmoidLoss):
    """``L = (1/R) Σ_ij bce(z_ij, y_ij)`` on ``(R, C)`` logits; background rows have y = 0."""

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        return weighted_bce(z, sigmoid_targets(ctx.labels, z))
