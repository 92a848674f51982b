"""Element-wise float64 references written from docs/specs (losses.md), for the loss tests.

Deliberately naive (Python loops over RoIs and classes) so they share no code with ltseg.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ltseg.data.category_stats import CategoryStats

# 6 classes: r, r, c, c, f, f (image counts), instance counts >= image counts, 1000 images
IMAGE_COUNT = [1, 5, 20, 50, 200, 400]
INSTANCE_COUNT = [2, 9, 30, 80, 500, 900]
TAIL = [True, True, True, True, False, False]


def small_stats(image_count=IMAGE_COUNT, instance_count=INSTANCE_COUNT, num_images=1000) -> CategoryStats:
    return CategoryStats.from_counts(image_count, instance_count, num_images)


def bce(z, y):
    """softplus(z) - y z."""
    return F.softplus(z) - y * z


def sigmoid_loss(z, labels, weight):
    """(1/R) Σ_ij weight(i, j) bce(z_ij, y_ij); ``weight`` returns a float or 0-dim tensor."""
    r, c = z.shape
    total = z.new_zeros(())
    for i in range(r):
        for j in range(c):
            y = 1.0 if int(labels[i]) == j else 0.0
            total = total + weight(i, j) * bce(z[i, j], y)
    return total / r


def eql_w(labels, tail, c):
    """EQL weight function 1 - E_i T_j (1 - y_ij)."""
    def w(i, j):
        e = 1.0 if int(labels[i]) != c else 0.0
        y = 1.0 if int(labels[i]) == j else 0.0
        return 1.0 - e * float(tail[j]) * (1.0 - y)
    return w


def drop_ratio_of(labels, tail, c) -> float:
    """ρ = (#fg RoIs with tail label) / (#fg RoIs), or NaN."""
    fg = [int(l) for l in labels if int(l) != c]
    return sum(bool(tail[l]) for l in fg) / len(fg) if fg else float("nan")


def droploss_released(z, labels, tail, noise):
    """DropLoss exactly as timy90022/DropLoss `drop_loss` (tensor form, noise injected)."""
    n_i, n_c = z.shape
    target = z.new_zeros(n_i, n_c + 1)
    target[torch.arange(n_i), labels] = 1
    target = target[:, :n_c]
    weight = z.new_zeros(n_c)
    weight[tail] = 1
    weight = weight.view(1, n_c).expand(n_i, n_c)
    fg_mask = labels != n_c
    ratio = torch.mean(tail[labels[fg_mask]].to(z.dtype))
    fg = fg_mask.to(z.dtype).view(n_i, 1).expand(n_i, n_c)
    bg = 1 - fg
    random = noise.to(z.dtype) * bg
    random = torch.where(random > ratio, torch.ones_like(random), torch.zeros_like(random))
    weight = (random + fg) * weight
    drop_w = 1 - weight * (1 - target)
    cls_loss = F.binary_cross_entropy_with_logits(z, target, reduction="none")
    return torch.sum(cls_loss * drop_w) / n_i


def seesaw_reference(z, labels, counts, p, q, eps):
    """Seesaw (mmdetection formula) with ``counts (C+1,)`` already updated; returns (cls, obj)."""
    r = z.shape[0]
    c = z.shape[1] - 2
    sigma = F.softmax(z[:, :c].detach(), dim=1)
    cls_total = z.new_zeros(())
    obj_total = z.new_zeros(())
    for i in range(r):
        l = int(labels[i])
        obj_target = 1 if l == c else 0
        obj_total = obj_total - F.log_softmax(z[i, c:], dim=0)[obj_target]
        if l == c:
            continue
        adjusted = []
        for j in range(c):
            if j == l:
                adjusted.append(z[i, j])
                continue
            nj, nl = max(float(counts[j]), 1.0), max(float(counts[l]), 1.0)
            m = (nj / nl) ** p if nj < nl else 1.0
            ratio = float(sigma[i, j]) / max(float(sigma[i, l]), eps)
            comp = ratio ** q if ratio > 1.0 else 1.0
            adjusted.append(z[i, j] + math.log(m * comp))
        adjusted = torch.stack(adjusted)
        cls_total = cls_total - F.log_softmax(adjusted, dim=0)[l]
    return cls_total / r, obj_total / r


def federated_classes_detectron2(gt_classes, num_fed, num_classes, weight):
    """detectron2 `get_fed_loss_classes` (global RNG)."""
    unique = torch.unique(gt_classes)
    prob = unique.new_ones(num_classes + 1).float()
    prob[-1] = 0
    if len(unique) < num_fed:
        prob[:num_classes] = weight.float().clone()
        prob[unique] = 0
        sampled = torch.multinomial(prob, num_fed - len(unique), replacement=False)
        return torch.cat([unique, sampled])
    return unique
