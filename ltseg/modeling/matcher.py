"""Assign predictions (anchors, proposals) to ground truth and sample a balanced minibatch."""
from __future__ import annotations

import torch
from torch import Tensor

FOREGROUND, BACKGROUND, IGNORE = 1, 0, -1


class Matcher:
    """IoU matcher: each prediction takes its best ground truth.

    ``IoU >= fg_iou`` -> foreground, ``IoU < bg_iou`` -> background, in between -> ignored.
    ``allow_low_quality_matches`` also makes every prediction that ties for a ground truth's
    highest IoU foreground (the RPN rule), so each ground truth with any overlap has a match.
    """

    def __init__(self, fg_iou: float, bg_iou: float, allow_low_quality_matches: bool = False):
        if bg_iou > fg_iou:
            raise ValueError(f"Matcher: bg_iou {bg_iou} > fg_iou {fg_iou}")
        self.fg_iou, self.bg_iou = fg_iou, bg_iou
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> tuple[Tensor, Tensor]:
        """``iou (G, N)`` -> ``matched_idx (N,)`` int64 in ``0..G-1`` (0 when G = 0) and
        ``labels (N,)`` int8 in {1 foreground, 0 background, -1 ignore}."""
        num_pred = iou.shape[1]
        if iou.shape[0] == 0:
            zeros = torch.zeros(num_pred, dtype=torch.int64, device=iou.device)
            return zeros, torch.zeros(num_pred, dtype=torch.int8, device=iou.device)
        best_iou, matched_idx = iou.max(dim=0)
        labels = torch.full((num_pred,), IGNORE, dtype=torch.int8, device=iou.device)
        labels[best_iou >= self.fg_iou] = FOREGROUND
        labels[best_iou < self.bg_iou] = BACKGROUND
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            ties = (iou == best_per_gt) & (best_per_gt > 0)
            labels[ties.any(dim=0)] = FOREGROUND
        return matched_idx, labels


class BalancedSampler:
    """Sample ``batch_size_per_image`` indices with at most ``positive_fraction`` foreground."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``labels (N,)`` from ``Matcher`` -> (foreground indices, background indices)."""
        pos = torch.nonzero(labels == FOREGROUND).squeeze(1)
        neg = torch.nonzero(labels == BACKGROUND).squeeze(1)
        num_pos = min(int(self.batch_size_per_image * self.positive_fraction), pos.numel())
        num_neg = min(self.batch_size_per_image - num_pos, neg.numel())
        return _random_subset(pos, num_pos, generator), _random_subset(neg, num_neg, generator)


def _random_subset(idx: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else idx.device
    perm = torch.randperm(idx.numel(), generator=generator, device=device)[:k]
    return idx[perm.to(idx.device)]
