"""Seesaw loss (Wang et al., LVIS 2020 report / CVPR 2021), as released in mmdetection."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ltseg.losses.base import LossContext, register_loss
from ltseg.losses.common import LossBase, all_reduce_sum
from ltseg.losses.normed_linear import NormedLinear


class _SeesawCE(torch.autograd.Function):
    """Seesaw's two terms on ``z (R, C+2)`` for a constant ``log_s (R, C)``, with the analytic gradient.

    ``[Σ_{fg i} CE(z_i,:C + log_s_i, y_i) + Σ_i CE(z_i,C:, 1[i is background])] / R``; gradient
    ``fg_i (softmax(z_i,:C + log_s_i) - y_i) / R`` and ``(softmax(z_i,C:) - t_i) / R``, written
    straight into one ``(R, C+2)`` tensor. ``log_s`` is overwritten.
    """

    @staticmethod
    def forward(ctx, z: Tensor, labels: Tensor, log_s: Tensor):
        r, c = z.shape[0], log_s.shape[1]
        fg = labels != c
        target = labels.clamp(max=c - 1)
        log_p = F.log_softmax(log_s.add_(z[:, :c]), dim=1)
        log_p_obj = F.log_softmax(z[:, c:], dim=1)
        ctx.save_for_backward(log_p, log_p_obj, labels)
        loss_cls = F.nll_loss(log_p, target, reduction="none")
        loss_obj = F.nll_loss(log_p_obj, (~fg).long(), reduction="sum")
        return (loss_cls * fg).sum() / max(r, 1) + loss_obj / max(r, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        log_p, log_p_obj, labels = ctx.saved_tensors
        r, c = log_p.shape
        fg = labels != c
        scale = grad / max(r, 1)
        out = torch.empty(r, c + 2, dtype=log_p.dtype, device=log_p.device)
        g_cls, g_obj = torch.exp(log_p, out=out[:, :c]), torch.exp(log_p_obj, out=out[:, c:])
        idx, idx_obj = labels.clamp(max=c - 1)[:, None], (~fg).long()[:, None]
        g_cls.scatter_(1, idx, g_cls.gather(1, idx) - 1.0).mul_(fg[:, None] * scale)
        g_obj.scatter_(1, idx_obj, g_obj.gather(1, idx_obj) - 1.0).mul_(scale)
        return out, None, None


@register_loss("seesaw")
class SeesawLoss(LossBase):
    """Seesaw class term on foreground RoIs + 2-way objectness CE on all RoIs, both / R.

    Logits ``(R, C+2)``: C class logits, then ``[object, background]``. For a foreground RoI
    with label i the other class logits get ``z_j + log M_ij + log C_ij`` with mitigation
    ``M_ij = min(N_j/N_i, 1)^p`` (N = cumulative RoI counts, updated with this batch before
    use, clamped to >= 1) and compensation ``C_ij = max(σ_j / max(σ_i, eps), 1)^q``
    (σ = softmax of the detached class logits). ``q = 0`` is the tech report (mitigation only).
    Scores: ``softmax(z_cls)_j · P(object)``, background column ``P(background)``.

    Args:
        p: mitigation exponent (0.8).
        q: compensation exponent (2.0; 0 = tech report).
        eps: floor of σ_i in the compensation ratio (0.01).
        temperature: τ of the normalised linear classifier (20).
        all_reduce: sum the batch counts over DDP processes (the release keeps them per GPU).

    Buffer ``cum_samples (C+1,)`` float64 (last slot = background), sized on first use and
    loadable from a state dict of any size.
    """

    def __init__(self, p: float = 0.8, q: float = 2.0, eps: float = 0.01,
                 temperature: float = 20.0, all_reduce: bool = False) -> None:
        super().__init__()
        if p < 0 or q < 0 or eps <= 0:
            raise ValueError(f"SeesawLoss: need p >= 0, q >= 0, eps > 0; got p={p}, q={q}, eps={eps}")
        self.p, self.q, self.eps = p, q, eps
        self.temperature = temperature
        self.all_reduce = all_reduce
        self.register_buffer("cum_samples", torch.zeros(0, dtype=torch.float64))

    def num_logits(self, num_classes: int) -> int:
        return num_classes + 2

    def make_predictor(self, in_features: int, num_classes: int) -> nn.Module:
        return NormedLinear(in_features, self.num_logits(num_classes), temperature=self.temperature)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "cum_samples")
        if saved is not None and saved.shape != self.cum_samples.shape:
            self.cum_samples = torch.zeros(saved.shape, dtype=torch.float64, device=self.cum_samples.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def update_counts(self, labels: Tensor, num_classes: int, valid: Tensor | None = None) -> Tensor:
        """Add this batch's label counts to ``cum_samples`` (in place) and return it.

        ``valid`` (0-dim bool, on device): count the batch only if true — non-finite logits on
        CUDA, where the input check does not stop the step, leave the counts untouched.
        """
        if self.cum_samples.numel() == 0:
            self.cum_samples = torch.zeros(num_classes + 1, dtype=torch.float64, device=labels.device)
        if self.cum_samples.numel() != num_classes + 1:
            raise ValueError(
                f"SeesawLoss: cum_samples has {self.cum_samples.numel()} entries but the data has "
                f"{num_classes} classes (+1 background); the checkpoint belongs to another dataset"
            )
        ones = self.cum_samples.new_ones(labels.shape)
        batch = self.cum_samples.new_zeros(num_classes + 1).index_add_(0, labels, ones)
        if valid is not None:
            batch.mul_(valid)
        self.cum_samples += all_reduce_sum(batch, self.all_reduce)
        return self.cum_samples

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        c = ctx.num_classes
        labels = ctx.labels
        counts = self.update_counts(labels, c, None if self.checks_eagerly(z.device) else torch.isfinite(z).all())
        idx = labels.clamp(max=c - 1)[:, None]
        if self.q > 0:  # log C_ij = q max(log σ_j - log max(σ_i, eps), 0), σ detached
            log_s = F.log_softmax(z[:, :c].detach(), dim=1)
            log_self = log_s.gather(1, idx).clamp_(min=math.log(self.eps))
            log_s.sub_(log_self).clamp_(min=0.0).mul_(self.q)
        else:
            log_s = z.new_zeros(z.shape[0], c)
        if self.p > 0:  # log M_ij = min(p log N_j - p log N_i, 0)
            p_log_n = (self.p * counts[:c].clamp(min=1.0).log()).to(z.dtype)
            log_s.add_((p_log_n[None, :] - p_log_n[idx]).clamp_(max=0.0))
        return _SeesawCE.apply(z, labels, log_s)

    def scores(self, logits: Tensor) -> Tensor:
        c = logits.shape[1] - 2
        obj = F.softmax(logits[:, c:].float(), dim=1)
        return torch.cat([F.softmax(logits[:, :c].float(), dim=1) * obj[:, :1], obj[:, 1:]], dim=1)
