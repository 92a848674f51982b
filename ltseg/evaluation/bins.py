"""Instance-count bins AP1..AP4 (SimCal) from TRAINING instance counts.

``AP_bin`` = mean of the per-category AP over categories with GT whose training instance count
``n`` lies in ``[lo, hi)``; -1 for an empty bin. Categories in ascending id order, float64.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from .gt import GroundTruth, load_json

BIN_PRESETS = {"lvis": (0, 10, 100, 1000, math.inf), "coco_lt": (0, 20, 400, 8000, math.inf)}


def bin_edges(bins) -> np.ndarray:
    """``"lvis"`` | ``"coco_lt"`` | ascending edges (``inf`` allowed) -> ``(B + 1,)`` float64."""
    if isinstance(bins, str):
        if bins not in BIN_PRESETS:
            raise ValueError(f"bins={bins!r}: expected one of {sorted(BIN_PRESETS)} or a list of edges")
        bins = BIN_PRESETS[bins]
    edges = np.array([float(b) for b in bins], dtype=np.float64)
    if len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins={list(bins)}: need at least two strictly ascending edges")
    return edges


def train_counts(train_stats, gt: GroundTruth) -> tuple[np.ndarray, np.ndarray, str]:
    """Training ``(image_count, instance_count)`` per GT category ``(K,)``, and where they came from.

    ``train_stats``: a JSON path (a training annotation file, or ``{"categories": [...]}`` with
    ``instance_count``), such a dict, or an object with ``category_ids`` / ``image_count`` /
    ``instance_count`` (``ltseg.data.CategoryStats``). ``None`` falls back to the GT file's own
    category counts, with a warning: those are usually validation counts.
    """
    if train_stats is None:
        warnings.warn(f"no train_stats given: instance-count bins use the counts in {gt.source}'s "
                      "categories, which may be VALIDATION counts; pass train_stats=<training json>",
                      stacklevel=3)
        return gt.cat_image_count.copy(), gt.cat_instance_count.copy(), gt.source
    if hasattr(train_stats, "instance_count") and hasattr(train_stats, "category_ids"):
        ids = np.asarray(list(train_stats.category_ids), dtype=np.int64)
        img = np.asarray(train_stats.image_count, dtype=np.int64)
        ins = np.asarray(train_stats.instance_count, dtype=np.int64)
        source = f"CategoryStats(split={getattr(train_stats, 'split', '?')})"
    else:
        source = "<dict>" if isinstance(train_stats, dict) else str(train_stats)
        d = train_stats if isinstance(train_stats, dict) else load_json(Path(train_stats))
        if not isinstance(d, dict) or not isinstance(d.get("categories"), list):
            raise ValueError(f"train_stats {source}: expected a JSON object with a 'categories' list")
        cats = d["categories"]
        ids = np.array([c["id"] for c in cats], dtype=np.int64)
        if all("instance_count" in c for c in cats):
            ins = np.array([c["instance_count"] for c in cats], dtype=np.int64)
            img = np.array([c.get("image_count", 0) for c in cats], dtype=np.int64)
        elif isinstance(d.get("annotations"), list):
            pos = {int(c): k for k, c in enumerate(ids)}
            ann_cat = np.array([pos.get(a["category_id"], -1) for a in d["annotations"]], dtype=np.int64)
            ann_img = np.array([a["image_id"] for a in d["annotations"]], dtype=np.int64)
            keep = ann_cat >= 0
            ins = np.bincount(ann_cat[keep], minlength=len(ids)).astype(np.int64)
            pairs = np.unique(np.stack([ann_cat[keep], ann_img[keep]], 1), axis=0)
            img = np.bincount(pairs[:, 0], minlength=len(ids)).astype(np.int64) if len(pairs) else \
                np.zeros(len(ids), np.int64)
        else:
            bad = next(c.get("id") for c in cats if "instance_count" not in c)
            raise ValueError(f"train_stats {source}: category id {bad} has no 'instance_count' and "
                             "the file has no 'annotations' to count")
    order = np.argsort(ids)
    ids, img, ins = ids[order], img[order], ins[order]
    pos = np.searchsorted(ids, gt.cat_ids).clip(0, max(len(ids) - 1, 0))
    found = ids[pos] == gt.cat_ids if len(ids) else np.zeros(len(gt.cat_ids), bool)
    if not found.all():
        missing = gt.cat_ids[~found]
        warnings.warn(f"train_stats {source}: {len(missing)} GT categories (e.g. id {missing[0]}) are "
                      "absent from the training statistics; counted as 0 training instances",
                      stacklevel=3)
    return (np.where(found, img[pos], 0).astype(np.int64),
            np.where(found, ins[pos], 0).astype(np.int64), source)


def bin_ap(ap_k: np.ndarray, instance_count: np.ndarray, edges: np.ndarray) -> dict[str, float]:
    """``{"AP1": ..., ...}``: mean per-category AP per bin; ``ap_k == -1`` (no GT) excluded."""
    out = {}
    for b in range(len(edges) - 1):
        sel = (ap_k > -1) & (instance_count >= edges[b]) & (instance_count < edges[b + 1])
        out[f"AP{b + 1}"] = float(np.mean(ap_k[sel])) if sel.any() else -1.0
    return out
