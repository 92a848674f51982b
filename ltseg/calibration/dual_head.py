"""SimCal dual-head inference (Eq. 2): per class, the calibrated or the original head's score.

``select``: ``p[:, z] = p_cal[:, z]`` if class ``z`` is a tail class by the rule below, else
``p_orig[:, z]``; the background column always comes from the original head (D-SIM-2);
rows are not renormalised. ``avg`` (SimCal Table 5's alternative): ``(p_orig + p_cal) / 2``
on every column.

Tail rule on ``N_z`` = training instance count: ``paper`` ``N_z <= T`` (T = 300), ``code``
``N_z < T`` (the released code, T = 100 on LVIS).
"""
from __future__ import annotations

import logging
import warnings

import torch
from torch import Tensor

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = {"paper": 300, "code": 100}
COMBINE_MODES = ("select", "avg")


def calibrated_classes(instance_count: Tensor, threshold: int | None = None, rule: str = "paper") -> Tensor:
    """``(C,)`` bool: classes whose score comes from the calibrated head.

    Warns when ``threshold`` lies outside the range of instance counts, i.e. every class
    would take its score from one head.
    """
    if rule not in DEFAULT_THRESHOLD:
        raise ValueError(f"dual head: unknown rule '{rule}', expected one of {sorted(DEFAULT_THRESHOLD)}")
    t = DEFAULT_THRESHOLD[rule] if threshold is None else threshold
    counts = torch.as_tensor(instance_count, dtype=torch.int64)
    use_cal = counts <= t if rule == "paper" else counts < t
    if counts.numel() and (bool(use_cal.all()) or not bool(use_cal.any())):
        head = "calibrated" if bool(use_cal.all()) else "original"
        msg = (f"dual head: T={t} ({rule} rule) is outside the range of training instance counts "
               f"[{int(counts.min())}, {int(counts.max())}]: every class takes its score from the {head} head")
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
    return use_cal


def combine_scores(p_orig: Tensor, p_cal: Tensor, use_cal: Tensor, combine: str = "select") -> Tensor:
    """Combine two ``(R, C+1)`` probability tensors (last column background) into one."""
    if p_orig.shape != p_cal.shape or p_orig.dim() != 2 or p_orig.shape[1] != use_cal.numel() + 1:
        raise ValueError(
            f"dual head: scores {tuple(p_orig.shape)} / {tuple(p_cal.shape)} do not match "
            f"{use_cal.numel()} classes + background"
        )
    if combine == "avg":
        return (p_orig + p_cal) / 2
    if combine != "select":
        raise ValueError(f"dual head: unknown combine '{combine}', expected one of {COMBINE_MODES}")
    column = torch.cat([use_cal.to(p_orig.device), use_cal.new_zeros(1).to(p_orig.device)])
    return torch.where(column, p_cal, p_orig)
