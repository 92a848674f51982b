"""Class-aware margin softmax CE (SimCal's "CM" baseline; LDAM's margin Δ_j = K / N_j^{1/4})."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ltseg.data.category_stats import CategoryStats
from ltseg.losses.base import LossContext, register_loss
from ltseg.losses.common import SoftmaxLoss


@register_loss("margin")
class ClassMarginCE(SoftmaxLoss):
    """``L = (1/R) Σ_i CE(s (z_i - Δ_{y_i} e_{y_i}), y_i)``, ``Δ_j = K / N_j^{1/4}``, ``Δ_C = 0``.

    N_j = training instance count clamped to >= 1; K = ``max_margin · min_j N_j^{1/4}`` so the
    rarest class has margin ``max_margin`` (LDAM). Scores: ``softmax(s z)``.

    Args:
        max_margin: margin of the rarest class (0.5).
        scale: logit scale s (1; LDAM uses 30 with normalised features).
    """

    def __init__(self, max_margin: float = 0.5, scale: float = 1.0) -> None:
        super().__init__()
        self.max_margin, self.scale = max_margin, scale

    def margins(self, stats: CategoryStats) -> Tensor:
        """``(C+1,)`` float64 Δ, background 0."""
        inv = stats.instance_count.double().clamp(min=1.0) ** -0.25
        delta = inv * (self.max_margin / inv.max())
        return torch.cat([delta, delta.new_zeros(1)])

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        if z.shape[0] == 0:
            return z.sum() * 0.0
        delta = self.class_tensor(ctx.stats, "delta", z, self.margins)[ctx.labels]
        shifted = z.scatter_add(1, ctx.labels[:, None], -delta[:, None])
        return F.cross_entropy(self.scale * shifted, ctx.labels)

    def scores(self, logits: Tensor) -> Tensor:
        return F.softmax(self.scale * logits.float(), dim=1)
