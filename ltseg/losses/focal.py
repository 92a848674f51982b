"""Multi-class softmax focal loss (SimCal's "FL" baseline; LDAM-DRW reference form)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ltseg.losses.base import LossContext, register_loss
from ltseg.losses.common import SoftmaxLoss


@register_loss("focal")
class FocalLoss(SoftmaxLoss):
    """``L = (1/R) Σ_i -(1 - p_iy)^γ log p_iy``, p = softmax over C+1; the factor is differentiated.

    Args:
        gamma: focusing parameter γ >= 0 (2.0); γ = 0 is softmax CE.
    """

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"FocalLoss: gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        if z.shape[0] == 0:
            return z.sum() * 0.0
        log_p = F.log_softmax(z, dim=1).gather(1, ctx.labels[:, None]).squeeze(1)
        return (-(1.0 - log_p.exp()) ** self.gamma * log_p).mean()
