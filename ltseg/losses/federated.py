"""Federated sigmoid loss (detectron2 ``use_fed_loss``; Zhou et al., LVIS challenge 2021)."""
from __future__ import annotations

import torch
from torch import Tensor

from ltseg.data.category_stats import CategoryStats
from ltseg.losses.base import LossContext, prior_bias, register_loss
from ltseg.losses.common import LossBase, sigmoid_bce


@register_loss("federated")
class FederatedLoss(LossBase):
    """Sigmoid BCE restricted to a sampled class set F: ``L = (1/R) Σ_i Σ_{j<C, j∈F} bce(z_ij, y_ij)``.

    F = the batch's labels (background included, so it takes a slot) plus classes drawn without
    replacement with probability ∝ ``image_count^freq_weight_power`` until ``|F| = num_classes_fed``.
    The draw is ``topk(w / Exp(1))`` — exactly ``torch.multinomial(w, k, replacement=False)``
    with the same generator (``ctx.generator``, else the global RNG), computed without a host sync.
    Logits ``(R, C+1)`` as in detectron2 (the last column is never trained).

    Args:
        num_classes_fed: |F| (50).
        freq_weight_power: exponent on the image counts (0.5).
        prior_prob: classifier bias init ``-log((1-π)/π)``; ``None`` = detectron2's 0. With 0 the
            loss starts at ``50 log 2`` per RoI, and the tiny model trained from scratch diverges.
    """

    def __init__(self, num_classes_fed: int = 50, freq_weight_power: float = 0.5,
                 prior_prob: float | None = 0.01) -> None:
        super().__init__()
        if prior_prob is not None and not 0.0 < prior_prob < 1.0:
            raise ValueError(f"FederatedLoss: prior_prob must be in (0, 1) or null, got {prior_prob}")
        self.num_classes_fed = num_classes_fed
        self.freq_weight_power = freq_weight_power
        self.prior_prob = prior_prob

    def init_bias(self) -> float:
        return 0.0 if self.prior_prob is None else prior_bias(self.prior_prob)

    def num_logits(self, num_classes: int) -> int:
        return num_classes + 1

    def scores(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits.float())

    def class_weights(self, stats: CategoryStats) -> Tensor:
        """``image_count^power`` in float32 as detectron2 computes it (the draw depends on it)."""
        return (stats.image_count.float() ** self.freq_weight_power).double()

    def sample_classes(self, labels: Tensor, stats: CategoryStats, generator=None) -> Tensor:
        """``(C,)`` bool mask of F for this batch (no host sync)."""
        c = stats.num_classes
        present = torch.zeros(c + 1, dtype=torch.bool, device=labels.device).index_fill_(0, labels, True)
        weight = self.class_tensor(stats, "w", torch.empty(0, device=labels.device), self.class_weights)
        prob = torch.cat([weight, weight.new_zeros(1)]).masked_fill(present, 0.0)
        gen_device = generator.device if generator is not None else prob.device
        noise = torch.empty(c + 1, device=gen_device).exponential_(1.0, generator=generator)
        key = prob / noise.to(prob.device)
        order = key.argsort(descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(0, order, torch.arange(c + 1, device=order.device))
        sampled = (rank < self.num_classes_fed - present.sum()) & (prob > 0)
        return (present | sampled)[:c]

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        c = ctx.num_classes
        chosen = self.sample_classes(ctx.labels, ctx.stats, ctx.generator)
        return sigmoid_bce(z[:, :c], ctx.labels, chosen.to(z.dtype)[None, :])
