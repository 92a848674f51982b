"""Shared pieces of the loss library: the two head families, targets, tail sets, batch ratios.

Every loss subclasses :class:`SoftmaxLoss` or :class:`SigmoidLoss` (or ``LossBase`` for its
own layout) and implements ``compute(z, ctx)`` on validated logits ``z``; ``forward`` adds the
checks (statistics present and from the training split, shape, finiteness: eager on CPU, a
device-side NaN guard elsewhere) and turns autocast off: half / bfloat16 / float32 logits are
computed in float32, float64 logits stay float64. The sigmoid family, SEQL and Seesaw run as
autograd Functions with analytic gradients (fewer (R, C) passes and temporaries on the hot path).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ltseg.data.category_stats import CategoryStats
from ltseg.losses.base import ClassificationLoss, LossContext, prior_bias


def all_reduce_sum(t: Tensor, enabled: bool) -> Tensor:
    """Sum ``t`` over DDP processes when ``enabled`` and torch.distributed is initialised."""
    if enabled and torch.distributed.is_available() and torch.distributed.is_initialized():
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


class LossBase(ClassificationLoss):
    """Validation, autocast off, a per-device cache of class tensors derived from the stats, and
    a reusable CPU workspace."""

    def __init__(self) -> None:
        super().__init__()
        self._class_cache: dict = {}
        self._workspace: Tensor | None = None

    def compute(self, z: Tensor, ctx: LossContext) -> Tensor:
        raise NotImplementedError

    def forward(self, logits: Tensor, ctx: LossContext) -> Tensor:
        name = type(self).__name__
        if getattr(ctx, "stats", None) is None:
            raise ValueError(f"{name}: LossContext.stats is missing (training CategoryStats required)")
        ctx.stats.require_train(name)
        z = self.check_inputs(logits, ctx)
        if logits.dtype == torch.float64:  # reference tests and gradcheck stay in float64
            z = logits
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.guard_nonfinite(z, self.compute(z, ctx))

    def class_tensor(self, stats: CategoryStats, key: str, like: Tensor, fn) -> Tensor:
        """``fn(stats)`` (a float64 ``(C,)`` tensor) with ``like``'s dtype and device.

        Cached while ``stats`` is the same object, so a training step copies nothing to the device.
        """
        slot = (key, like.device, like.dtype)
        hit = self._class_cache.get(slot)
        if hit is not None and hit[0] is stats:
            return hit[1]
        value = fn(stats).to(device=like.device, dtype=like.dtype)
        self._class_cache[slot] = (stats, value)
        return value

    def workspace(self, like: Tensor) -> Tensor:
        """An uninitialised tensor with ``like``'s shape and dtype, for a temporary that dies
        inside ``compute``. On CPU it is the same memory on every call: a fresh (R, C) tensor
        costs a page fault per 4 KiB there (~10 ms for 8192 x 1203 float32); elsewhere the
        caching allocator makes a fresh one free."""
        if like.device.type != "cpu":
            return torch.empty_like(like)
        if self._workspace is None or self._workspace.dtype != like.dtype:
            self._workspace = like.new_empty(0)
        return self._workspace.resize_(like.shape)

    def tail(self, stats: CategoryStats, like: Tensor, lambda_: float | None = None) -> Tensor:
        """Tail set ``(C,)`` as 0/1 floats: rare+common tags, or ``image_freq < lambda_`` when given."""
        if lambda_ is None:
            return self.class_tensor(stats, "tail", like, lambda s: s.tail.double())
        return self.class_tensor(stats, f"tail<{lambda_!r}", like, lambda s: (s.image_freq < lambda_).double())


class SoftmaxLoss(LossBase):
    """``(R, C+1)`` logits, background last; scores = softmax."""

    def num_logits(self, num_classes: int) -> int:
        return num_classes + 1

    def scores(self, logits: Tensor) -> Tensor:
        return F.softmax(logits.float(), dim=1)


class SigmoidLoss(LossBase):
    """``(R, C)`` logits (no background logit), prior-probability bias; scores = sigmoid + a 0 column.

    Args:
        prior_prob: π of the bias init ``-log((1-π)/π)`` (EQL/DropLoss: 0.001).
    """

    def __init__(self, prior_prob: float = 0.001) -> None:
        super().__init__()
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"{type(self).__name__}: prior_prob must be in (0, 1), got {prior_prob}")
        self.prior_prob = prior_prob

    def num_logits(self, num_classes: int) -> int:
        return num_classes

    def init_bias(self) -> float:
        return prior_bias(self.prior_prob)

    def scores(self, logits: Tensor) -> Tensor:
        probs = torch.sigmoid(logits.float())
        return torch.cat([probs, probs.new_zeros(probs.shape[0], 1)], dim=1)


def label_index(labels: Tensor, num_classes: int) -> Tensor:
    """``(R, 1)`` column of each RoI's label, background clamped onto column ``C-1`` (then masked)."""
    return labels.clamp(max=num_classes - 1)[:, None]


def sigmoid_targets(labels: Tensor, like: Tensor) -> Tensor:
    """``(R, C)`` one-hot of ``labels`` in ``0..C`` (dtype of ``like (R, C)``); background rows are 0."""
    c = like.shape[1]
    fg = (labels != c).to(like.dtype)[:, None]
    return like.new_zeros(like.shape).scatter_(1, label_index(labels, c), fg)


def foreground(labels: Tensor, num_classes: int) -> Tensor:
    """``(R,)`` bool: EQL's E(r), True for a foreground RoI."""
    return labels != num_classes


def set_label_entries(w: Tensor, labels: Tensor, value: float | bool) -> Tensor:
    """``w[i, labels_i] = value`` for every foreground RoI i (in place unless ``w`` needs grad)."""
    c = w.shape[1]
    idx = label_index(labels, c)
    current = w.gather(1, idx)
    src = torch.where(foreground(labels, c)[:, None], torch.full_like(current, value), current)
    return w.scatter(1, idx, src) if w.requires_grad else w.scatter_(1, idx, src)


def eql_weight(labels: Tensor, t: Tensor) -> Tensor:
    """``1 - E_i T_j (1 - y_ij)`` ``(R, C)`` for ``t (C,)`` (0/1 tail set or a soft T)."""
    fg = foreground(labels, t.numel())[:, None]
    return set_label_entries(torch.where(fg, (1.0 - t)[None, :], 1.0), labels, 1.0)


def owned_noise(ctx: LossContext, like: Tensor, out: Tensor | None = None) -> Tensor:
    """``ctx.uniform_noise(like)`` ``(R, C)`` in ``like``'s dtype, a tensor the caller may overwrite.

    Drawn into the float32 workspace ``out`` when given; injected noise is copied; float64 logits
    (reference tests) get the float32 noise widened exactly.
    """
    u = ctx.uniform_noise(like, out=out if like.dtype == torch.float32 else None)
    return u.to(dtype=like.dtype, copy=u is ctx.noise)


def log_sigmoid_and_scratch(z: Tensor) -> tuple[Tensor, Tensor]:
    """``(log σ(z), scratch)`` for ``z (R, C)`` (detached): ``scratch`` is the ``(R, C)`` workspace
    CPU's log-sigmoid fills anyway, free for a weight or the noise (empty on CUDA; ``out=`` resizes it)."""
    return torch.ops.aten.log_sigmoid_forward(z.detach())


def bernoulli_keep(labels: Tensor, tail: Tensor, noise: Tensor, keep_prob: Tensor) -> Tensor:
    """DropLoss-style keep weights ``(R, C)`` (1.0 / 0.0 in ``noise``'s dtype), written into ``noise``.

    Foreground rows: EQL (keep non-tail classes and the label). Background rows: keep iff
    ``noise_ij <= keep_prob_j`` (``keep_prob (C,)``; > 1 means always kept).
    """
    fg = foreground(labels, tail.numel())[:, None]
    keep = noise.le_(keep_prob[None, :])
    torch.where(fg, (tail == 0).to(keep.dtype)[None, :], keep, out=keep)
    return set_label_entries(keep, labels, 1.0)


def weighted_bce(z: Tensor, y: Tensor, w: Tensor | None = None) -> Tensor:
    """``Σ_ij w_ij bce(z_ij, y_ij) / R`` through autograd (plain BCE; a weight that needs its gradient)."""
    r = max(z.shape[0], 1)
    if w is not None and w.requires_grad:
        return (F.binary_cross_entropy_with_logits(z, y, reduction="none") * w).sum() / r
    return F.binary_cross_entropy_with_logits(z, y, weight=w, reduction="sum") / r


class _SigmoidBCESum(torch.autograd.Function):
    """``Σ_ij w_ij bce(z_ij, y_ij)`` for a constant ``w``, with the analytic gradient ``w (σ(z) - y)``.

    The one-hot ``y`` is never built (its R entries are patched), the weight is applied in
    place, and only ``z``, ``labels`` and ``w`` are kept for the backward pass. Same element
    values, products and reduction order as ``binary_cross_entropy_with_logits(z, y, w, "sum")``.
    """

    @staticmethod
    def forward(ctx, z: Tensor, labels: Tensor, w: Tensor | None, log_sig: Tensor | None, sig: Tensor | None):
        c = z.shape[1]
        idx, fg = label_index(labels, c), foreground(labels, c)[:, None]
        elem = F.logsigmoid(z) if log_sig is None else log_sig
        ls_y = elem.gather(1, idx)
        torch.sub(z, elem, out=elem)  # bce(z, 0) = z - log σ(z)
        elem.scatter_(1, idx, torch.where(fg, ls_y.neg_(), elem.gather(1, idx)))  # bce(z, 1) = -log σ(z)
        if w is not None:
            elem.mul_(w)
        ctx.save_for_backward(z, labels, w)
        ctx.sig = sig
        return elem.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        z, labels, w = ctx.saved_tensors
        g = torch.sigmoid(z) if ctx.sig is None else ctx.sig
        ctx.sig = None  # consumed: a second backward (retain_graph) recomputes it
        c = z.shape[1]
        idx, fg = label_index(labels, c), foreground(labels, c)[:, None]
        p_y = g.gather(1, idx)
        g.scatter_(1, idx, torch.where(fg, p_y - 1.0, p_y)).mul_(grad)
        if w is not None:
            g.mul_(w)
        return g, None, None, None, None


def sigmoid_bce(z: Tensor, labels: Tensor, w: Tensor | None = None, *,
                log_sig: Tensor | None = None, sig: Tensor | None = None) -> Tensor:
    """``Σ_ij w_ij bce(z_ij, y_ij) / R`` — the sigmoid family's reduction — for a constant ``w``.

    Args:
        z: ``(R, C)`` logits; ``labels (R,)`` in ``0..C`` (``y`` = their one-hot, background rows 0).
        w: constant weights broadcastable to ``(R, C)`` (e.g. a 0/1 keep mask), or None.
        log_sig: ``logsigmoid(z)`` ``(R, C)`` if the caller already has it (overwritten).
        sig: ``sigmoid(z)`` ``(R, C)`` if the caller already has it (overwritten by the backward).
    """
    if w is not None and w.requires_grad:
        raise ValueError("sigmoid_bce: w must be constant; use weighted_bce to differentiate through it")
    return _SigmoidBCESum.apply(z, labels, w, log_sig, sig) / max(z.shape[0], 1)


def tail_ratio(labels: Tensor, tail: Tensor, all_reduce: bool = False) -> Tensor:
    """DropLoss ρ: fraction of foreground RoIs whose label is tail (0-dim; NaN without fg RoIs).

    Counted on device (no host sync); with ``all_reduce`` summed over DDP processes first.
    """
    c = tail.numel()
    fg = labels != c
    tail_ext = torch.cat([tail, tail.new_zeros(1)])
    counts = torch.stack([fg.sum().to(tail.dtype), tail_ext[labels].sum()])
    counts = all_reduce_sum(counts, all_reduce)
    return counts[1] / counts[0]
