"""Softmax cross-entropy over C+1 logits (detectron2's default; also SimCal's calibration loss)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ltseg.losses.base import LossContext, register_loss
from ltseg.losses.common import SoftmaxLoss


@register_loss("ce")
class SoftmaxCE(SoftmaxLoss):
    """``L = (1/R) Σ_i -log softmax(z_i)[labels_i]``; an empty batch gives ``0·Σz``."""

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        if z.shape[0] == 0:
            return z.sum() * 0.0
        return F.cross_entropy(z, ctx.labels, reduction="mean")
