"""FBS-AEGL (Hao et al., CVM 2024): effective-number weights, confidence gating, background Bernoulli.

No public implementation exists; this follows Eq. 4, 8, 9 and 10 literally (docs/losses.md).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ltseg.data.category_stats import CategoryStats
from ltseg.losses.base import LossContext, register_loss
from ltseg.losses.common import (
    SigmoidLoss, foreground, log_sigmoid_and_scratch, owned_noise, set_label_entries, sigmoid_bce, tail_ratio,
)

FREQ_VARIANTS = ("eq10", "text")


@register_loss("fbs_aegl")
class FBSAEGL(SigmoidLoss):
    """``L = (1/R) Σ_ij w_ij bce(z_ij, y_ij)`` with ``WF_j = (1-γ)/(1-γ^{n_j})`` (n = instances, >= 1).

    Foreground RoI, label c: ``w_c = WF_c``, ``w_j = WF_j 1[σ(z_j) >= μ]`` (j ≠ c).
    Background RoI: ``w_j = WF_j 1[σ(z_j) >= μ] wBer_j``; tail j: ``wBer_j = 1[noise_ij < σ_tail]``
    with σ_tail the batch's tail fraction of foreground RoIs (DropLoss ρ); frequent j: 1 (Eq. 10,
    ``variant="eq10"``) or ``1[noise_ij < 1 - σ_tail]`` (``"text"``). No foreground RoI: wBer = 1.

    Args:
        gamma: γ in [0, 1) of the effective number (0.7).
        mu: confidence threshold μ on the detached sigmoid (0.7).
        variant: frequent-class Bernoulli, ``eq10`` | ``text``.
        freq_variant: the spec's name for ``variant``; overrides it when set.
        use_wf: ``False`` sets WF ≡ 1 (the "w/o WF" ablation).
        all_reduce: σ_tail over all DDP processes.
        lambda_: tail threshold on the image frequency; ``None`` = r/c tags.
        prior_prob: π of the bias init.
    """

    def __init__(
        self,
        gamma: float = 0.7,
        mu: float = 0.7,
        variant: str = "eq10",
        freq_variant: str | None = None,
        use_wf: bool = True,
        all_reduce: bool = False,
        lambda_: float | None = None,
        prior_prob: float = 0.001,
    ) -> None:
        super().__init__(prior_prob)
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"FBSAEGL: gamma must be in [0, 1), got {gamma}")
        variant = freq_variant if freq_variant is not None else variant
        if variant not in FREQ_VARIANTS:
            raise ValueError(f"FBSAEGL: variant must be one of {FREQ_VARIANTS}, got '{variant}'")
        self.gamma, self.mu = gamma, mu
        self.variant = variant
        self.use_wf = use_wf
        self.all_reduce = all_reduce
        self.lambda_ = lambda_

    def effective_weight(self, stats: CategoryStats) -> Tensor:
        """``WF (C,)`` float64 from the training instance counts."""
        if not self.use_wf:
            return torch.ones(stats.num_classes, dtype=torch.float64)
        n = stats.instance_count.double().clamp(min=1.0)
        return (1.0 - self.gamma) / (1.0 - self.gamma ** n)

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        tail = self.tail(ctx.stats, z, self.lambda_)
        wf = self.class_tensor(ctx.stats, f"wf{self.gamma!r}{self.use_wf}", z, self.effective_weight)
        rho = tail_ratio(ctx.labels, tail, self.all_reduce)
        sigma_tail = torch.nan_to_num(rho, nan=2.0)  # no foreground RoI: wBer = 1
        sigma_freq = torch.nan_to_num(1.0 - rho, nan=2.0) if self.variant == "text" else 2.0
        sigma = tail * sigma_tail + (1.0 - tail) * sigma_freq
        fg = foreground(ctx.labels, tail.numel())[:, None]
        # log σ(z) for the loss; the noise is drawn into its scratch output (a fresh R x C tensor
        # costs page faults); σ(z) gives the gate 1[σ(z) >= μ] and is reused by the backward.
        # Every mask stays float32: a bool operand sends CPU kernels down a slow casting path.
        log_sig, scratch = log_sigmoid_and_scratch(z)
        sig = torch.sigmoid(z.detach())
        gate = torch.ge(sig, self.mu, out=self.workspace(sig))
        w = owned_noise(ctx, z, out=scratch).lt_(sigma[None, :])
        torch.maximum(w, fg.to(w.dtype), out=w).mul_(gate)  # wBer (1 on foreground rows) · gate
        w = set_label_entries(w, ctx.labels, 1.0).mul_(wf[None, :])
        return sigmoid_bce(z, ctx.labels, w, log_sig=log_sig, sig=sig)
