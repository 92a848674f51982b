"""Equalization Loss (Tan et al., CVPR 2020), as released in tztztztztz/eql.detectron2."""
from __future__ import annotations

import torch
from torch import Tensor

from ltseg.data.category_stats import CategoryStats
from ltseg.losses.base import LossContext, register_loss
from ltseg.losses.common import SigmoidLoss, eql_weight, set_label_entries, sigmoid_bce

THRESHOLDS = ("step", "exponential", "gompertz")


@register_loss("eql")
class EqualizationLoss(SigmoidLoss):
    """``w_ij = 1 - E_i T_j (1 - y_ij)``, ``L = (1/R) Σ_ij w_ij bce(z_ij, y_ij)``.

    Args:
        threshold: T-function: ``step`` (tail set), ``exponential`` ``clamp(1-(a f)^n, 0, 1)``
            or ``gompertz`` ``1 - a exp(-b exp(-c f))``, with f = training image frequency.
        lambda_: step threshold on f; ``None`` = tail from the r/c tags (recommended).
        exp_a, exp_n: exponential-decay parameters (paper best 400, 2).
        gompertz_a, gompertz_b, gompertz_c: Gompertz parameters (paper best 1, 80, 3000).
        image_level_rule: paper §4.2 — never drop classes in the image's pos/neg sets
            (absent from the released code, so off by default).
        exclude_background: E(r); ``False`` is the "without E(r)" ablation (Table 4).
        prior_prob: π of the bias init.
    """

    def __init__(
        self,
        threshold: str = "step",
        lambda_: float | None = None,
        exp_a: float = 400.0,
        exp_n: float = 2.0,
        gompertz_a: float = 1.0,
        gompertz_b: float = 80.0,
        gompertz_c: float = 3000.0,
        image_level_rule: bool = False,
        exclude_background: bool = True,
        prior_prob: float = 0.001,
    ) -> None:
        super().__init__(prior_prob)
        if threshold not in THRESHOLDS:
            raise ValueError(f"EqualizationLoss: threshold must be one of {THRESHOLDS}, got '{threshold}'")
        self.threshold = threshold
        self.lambda_ = lambda_
        self.exp_a, self.exp_n = exp_a, exp_n
        self.gompertz = (gompertz_a, gompertz_b, gompertz_c)
        self.image_level_rule = image_level_rule
        self.exclude_background = exclude_background

    def t_function(self, stats: CategoryStats) -> Tensor:
        """``T_j`` float64 ``(C,)`` from the training statistics."""
        if self.threshold == "step":
            return stats.tail.double() if self.lambda_ is None else (stats.image_freq < self.lambda_).double()
        f = stats.image_freq
        if self.threshold == "exponential":
            return (1.0 - (self.exp_a * f) ** self.exp_n).clamp(0.0, 1.0)
        a, b, c = self.gompertz
        return 1.0 - a * torch.exp(-b * torch.exp(-c * f))

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        c = ctx.num_classes
        t = self.class_tensor(ctx.stats, "T", z, self.t_function)
        if self.exclude_background:
            w = eql_weight(ctx.labels, t)
        else:
            w = set_label_entries((1.0 - t)[None, :].repeat(z.shape[0], 1), ctx.labels, 1.0)
        if self.image_level_rule:
            if ctx.image_pos is None or ctx.image_neg is None:
                raise ValueError("EqualizationLoss: image_level_rule needs LossContext.image_pos and image_neg")
            w = w.masked_fill(ctx.image_pos.to(z.device) | ctx.image_neg.to(z.device), 1.0)
        return sigmoid_bce(z, ctx.labels, w)
