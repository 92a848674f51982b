"""Fixed drop ratio (DropLoss paper baseline): DropLoss with a constant keep probability."""
from __future__ import annotations

from torch import Tensor

from ltseg.losses.base import LossContext, register_loss
from ltseg.losses.common import SigmoidLoss, bernoulli_keep, log_sigmoid_and_scratch, owned_noise, sigmoid_bce


@register_loss("drop_fixed")
class FixedDropLoss(SigmoidLoss):
    """Foreground rows: EQL weights; background rows: tail class kept iff ``noise <= 1 - r``.

    Frequent classes are always kept. ``L = (1/R) Σ_ij w_ij bce(z_ij, y_ij)``.

    Args:
        drop_ratio: r in [0, 1], the probability of dropping a tail-class background term.
        lambda_: tail threshold on the image frequency; ``None`` = r/c tags.
        prior_prob: π of the bias init.
    """

    def __init__(self, drop_ratio: float = 0.5, lambda_: float | None = None, prior_prob: float = 0.001) -> None:
        super().__init__(prior_prob)
        if not 0.0 <= drop_ratio <= 1.0:
            raise ValueError(f"FixedDropLoss: drop_ratio must be in [0, 1], got {drop_ratio}")
        self.drop_ratio = drop_ratio
        self.lambda_ = lambda_

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        tail = self.tail(ctx.stats, z, self.lambda_)
        keep_prob = tail * (1.0 - self.drop_ratio) + (1.0 - tail) * 2.0  # frequent: always kept
        log_sig, scratch = log_sigmoid_and_scratch(z)
        keep = bernoulli_keep(ctx.labels, tail, owned_noise(ctx, z, out=scratch), keep_prob)
        return sigmoid_bce(z, ctx.labels, keep, log_sig=log_sig)
