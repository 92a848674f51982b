"""DropLoss (Hsieh et al., AAAI 2021), as released in timy90022/DropLoss."""
from __future__ import annotations

import torch
from torch import Tensor

from ltseg.losses.base import LossContext, register_loss
from ltseg.losses.common import (
    SigmoidLoss, bernoulli_keep, log_sigmoid_and_scratch, owned_noise, sigmoid_bce, tail_ratio,
)

VARIANTS = ("code", "paper")


@register_loss("droploss")
class DropLoss(SigmoidLoss):
    """EQL weights on foreground rows; background terms kept at random by the batch ratio ρ.

    ρ = fraction of this batch's foreground RoIs with a tail label. Background row, tail
    class: kept iff ``noise <= ρ``. Frequent class: always kept (``variant="code"``, the
    released code) or kept iff ``noise <= 1 - ρ`` (``variant="paper"``, Eq. 6-7). A batch
    without foreground RoIs keeps every term (plain BCE, as the code's NaN ρ does).
    ``L = (1/R) Σ_ij w_ij bce(z_ij, y_ij)``.

    Args:
        variant: ``code`` | ``paper``.
        all_reduce: compute ρ over all DDP processes (the authors used per-process ρ).
        lambda_: tail threshold on the image frequency; ``None`` = r/c tags.
        prior_prob: π of the bias init.
    """

    def __init__(
        self,
        variant: str = "code",
        all_reduce: bool = False,
        lambda_: float | None = None,
        prior_prob: float = 0.001,
    ) -> None:
        super().__init__(prior_prob)
        if variant not in VARIANTS:
            raise ValueError(f"DropLoss: variant must be one of {VARIANTS}, got '{variant}'")
        self.variant = variant
        self.all_reduce = all_reduce
        self.lambda_ = lambda_

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        tail = self.tail(ctx.stats, z, self.lambda_)
        rho = tail_ratio(ctx.labels, tail, self.all_reduce)
        keep_tail = torch.nan_to_num(rho, nan=2.0)  # no foreground RoI: keep everything
        keep_freq = torch.nan_to_num(1.0 - rho, nan=2.0) if self.variant == "paper" else 2.0
        keep_prob = tail * keep_tail + (1.0 - tail) * keep_freq
        log_sig, scratch = log_sigmoid_and_scratch(z)
        keep = bernoulli_keep(ctx.labels, tail, owned_noise(ctx, z, out=scratch), keep_prob)
        return sigmoid_bce(z, ctx.labels, keep, log_sig=log_sig)
