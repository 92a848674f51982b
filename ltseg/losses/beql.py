"""Background Equalization Loss (BEQL; Hsieh et al., DropLoss paper, AAAI 2021 §3)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ltseg.losses.base import LossContext, register_loss
from ltseg.losses.common import (
    SigmoidLoss, foreground, log_sigmoid_and_scratch, set_label_entries, sigmoid_bce, sigmoid_targets, weighted_bce,
)


@register_loss("beql")
class BackgroundEQL(SigmoidLoss):
    """EQL weights on foreground rows; background rows ``w_ij = 1 - T_j min(-log_b σ(z_ij), 1)``.

    ``L = (1/R) Σ_ij w_ij bce(z_ij, y_ij)``. b → ∞ is EQL, b → 1⁺ drops every tail-class
    background term.

    Args:
        log_base: b > 1 (paper best 4).
        detach_weight: treat w as a constant (default); ``False`` back-propagates through it.
        lambda_: tail threshold on the image frequency; ``None`` = r/c tags.
        prior_prob: π of the bias init.
    """

    def __init__(
        self,
        log_base: float = 4.0,
        detach_weight: bool = True,
        lambda_: float | None = None,
        prior_prob: float = 0.001,
    ) -> None:
        super().__init__(prior_prob)
        if not log_base > 1.0:
            raise ValueError(f"BackgroundEQL: log_base must be > 1, got {log_base}")
        self.log_base = log_base
        self.detach_weight = detach_weight
        self.lambda_ = lambda_

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        tail = self.tail(ctx.stats, z, self.lambda_)
        fg = foreground(ctx.labels, tail.numel())[:, None]
        if not self.detach_weight:
            neg_log_b = (F.logsigmoid(z) * (-1.0 / math.log(self.log_base))).clamp(max=1.0)
            w_bg = torch.addcmul(z.new_ones(()), tail[None, :], neg_log_b, value=-1.0)
            w = set_label_entries(torch.where(fg, (1.0 - tail)[None, :], w_bg), ctx.labels, 1.0)
            return weighted_bce(z, sigmoid_targets(ctx.labels, z), w)
        # constant weight: log σ(z) is computed once, for the weight and the loss; fg rows get 1 - T_j
        log_sig, scratch = log_sigmoid_and_scratch(z)
        w = torch.mul(log_sig, -1.0 / math.log(self.log_base), out=scratch).clamp_(max=1.0).masked_fill_(fg, 1.0)
        w = set_label_entries(w.mul_(tail[None, :]).neg_().add_(1.0), ctx.labels, 1.0)
        return sigmoid_bce(z, ctx.labels, w, log_sig=log_sig)
