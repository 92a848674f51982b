"""Inverse-frequency re-weighted softmax CE (SimCal's "LR" baseline)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ltseg.data.category_stats import CategoryStats
from ltseg.losses.base import LossContext, register_loss
from ltseg.losses.common import SoftmaxLoss

NORMALIZE = ("num_rois", "weights")


@register_loss("reweight")
class InverseFrequencyCE(SoftmaxLoss):
    """``L = Σ_i w_{y_i} CE_i / D``, ``w_j = clamp(n_ref / N_j, w_min, w_max)``, ``w_C = bg_weight``.

    N_j = training instance count (0 gives ``w_max``). ``D = R`` (``normalize="num_rois"``,
    mmdetection's ``avg_factor``) or ``Σ_i w_{y_i}`` (``"weights"``, torch's weighted mean).

    Args:
        n_ref: reference count N (100).
        bg_weight: weight of background RoIs (1.0).
        w_min, w_max: clamp range (0.1, 10).
        normalize: ``num_rois`` | ``weights``.
    """

    def __init__(self, n_ref: float = 100.0, bg_weight: float = 1.0, w_min: float = 0.1,
                 w_max: float = 10.0, normalize: str = "num_rois") -> None:
        super().__init__()
        if normalize not in NORMALIZE:
            raise ValueError(f"InverseFrequencyCE: normalize must be one of {NORMALIZE}, got '{normalize}'")
        self.n_ref, self.bg_weight = n_ref, bg_weight
        self.w_min, self.w_max = w_min, w_max
        self.normalize = normalize

    def class_weights(self, stats: CategoryStats) -> Tensor:
        """``(C+1,)`` float64, background last."""
        w = (self.n_ref / stats.instance_count.double()).clamp(self.w_min, self.w_max)
        return torch.cat([w, w.new_tensor([self.bg_weight])])

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        if z.shape[0] == 0:
            return z.sum() * 0.0
        w = self.class_tensor(ctx.stats, "w", z, self.class_weights)[ctx.labels]
        total = (w * F.cross_entropy(z, ctx.labels, reduction="none")).sum()
        return total / (w.sum() if self.normalize == "weights" else z.shape[0])
