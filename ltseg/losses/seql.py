"""Softmax Equalization Loss (SEQL, Tan et al. CVPR 2020 §3.4 / the author's SoftmaxEQL snippet)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ltseg.losses.base import LossContext, register_loss
from ltseg.losses.common import SoftmaxLoss, owned_noise, set_label_entries


class _MaskedSoftmaxCE(torch.autograd.Function):
    """``(1/R) Σ_i -log softmax(z_i + a_i)[y_i]`` for a constant additive mask ``a`` (0 or -inf).

    ``z (R, K)``, ``labels (R,)``, ``a (R, C)`` on the first C <= K columns. Forward = ``F.cross_entropy``
    of the masked logits; backward = ``(softmax - y) / R`` (exactly 0 on masked logits), from the
    saved masked logits: ``softmax`` is fast on -inf, ``exp`` of -inf log-probabilities is not.
    """

    @staticmethod
    def forward(ctx, z: Tensor, labels: Tensor, a: Tensor):
        c = a.shape[1]
        masked = torch.empty_like(z)
        torch.add(z[:, :c], a, out=masked[:, :c])
        masked[:, c:] = z[:, c:]
        ctx.save_for_backward(masked, labels)
        return F.nll_loss(F.log_softmax(masked, dim=1), labels)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        masked, labels = ctx.saved_tensors
        g = F.softmax(masked, dim=1)
        idx = labels[:, None]
        g.scatter_(1, idx, g.gather(1, idx) - 1.0).mul_(grad / g.shape[0])
        return g, None, None


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
        tail = self.tail(ctx.stats, z, self.lambda_)
        # drop iff tail and noise <= γ (γ in float32, like the noise; -1: a frequent class never drops)
        threshold = torch.where(tail > 0, self.gamma, -1.0).float()
        drop = set_label_entries(owned_noise(ctx, z[:, :c]).le_(threshold[None, :]), ctx.labels, 0.0)
        return _MaskedSoftmaxCE.apply(z, ctx.labels, drop.neg_().log1p_())  # log(1 - drop): 0 or -inf
