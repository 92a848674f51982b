"""Softmax Equalization Loss (SEQL, Tan et al. CVPR 2020 §3.4 / the author's SoftmaxEQL snippet)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ltseg.losses.base import LossContext, register_loss
from ltseg.losses.common import SoftmaxLoss


@register_loss("seql")
class SoftmaxEQL(SoftmaxLoss):
    """Softmax CE over the logits that survive ``β_ik T_k (1 - y_ik)``, ``β_ik = 1[noise_ik <= γ]``.

    ``L = (1/R) Σ_i [logsumexp_{k kept} z_ik - z_{i,y_i}]`` on ``(R, C+1)`` logits; the
    background column and the label column are never dropped. Dropped logits are masked
    with ``-inf`` inside the log-sum-exp (no large negative constant: fp16-safe).

    Args:
        gamma: drop probability γ of a tail, non-label logit (paper: 0.9 / 0.95).
        lambda_: tail threshold on the image frequency; ``None`` = r/c tags.
    """

    def __init__(self, gamma: float = 0.9, lambda_: float | None = None) -> None:
        super().__init__()
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"SoftmaxEQL: gamma must be in [0, 1], got {gamma}")
        self.gamma = gamma
        self.lambda_ = lambda_

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        c = ctx.num_classes
        if z.shape[0] == 0:
            return z.sum() * 0.0
        tail = self.tail(ctx.stats, z, self.lambda_) > 0
        drop = z.new_zeros(z.shape, dtype=torch.bool)
        drop[:, :c] = tail[None, :] & (ctx.uniform_noise(z) <= self.gamma)
        drop.scatter_(1, ctx.labels[:, None], False)
        return F.cross_entropy(z.masked_fill(drop, float("-inf")), ctx.labels)
