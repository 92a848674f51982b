"""IoU and greedy matching of detections to GT, vectorised across (image, category) groups.

Shapes: ``P`` (det, GT) pairs that share an (image, category) group; ``A`` = 4 area ranges;
``T`` = 10 IoU thresholds. The greedy loop runs over detection *rank* inside a group (at most
the per-image cap), never over detections.
"""
from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils

from .parallel import parallel_map
from .params import IOU_THRS


def box_iou_pairs(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of paired xywh boxes ``(P, 4), (P, 4) -> (P,)``, float64, exactly pycocotools' ``bbIou``."""
    dx, dy, dw, dh = dt.T
    gx, gy, gw, gh = gt.T
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    union = dw * dh + gw * gh - inter
    ok = (w > 0) & (h > 0)
    out = np.zeros(len(dt))
    np.divide(inter, union, out=out, where=ok)
    return out


def gt_to_rle(segm, h: int, w: int) -> dict:
    """A GT ``segmentation`` -> compressed RLE, exactly lvis-api's ``LVIS.ann_to_rle``."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, h, w)
    return segm


def _mask_iou_images(task) -> np.ndarray:
    """Per image: the full (dets x GTs) mask-IoU block, flattened; blocks concatenated."""
    dt_rles, gt_rles, det_bounds, gt_bounds = task
    out = []
    for (da, db), (ga, gb) in zip(det_bounds, gt_bounds):
        ious = mask_utils.iou(dt_rles(da, db), gt_rles(ga, gb), [0] * (gb - ga))
        out.append(np.asarray(ious, dtype=np.float64).reshape(-1))
    return np.concatenate(out) if out else np.zeros(0)


def mask_iou_pairs(pair_det: np.ndarray, pair_gt: np.ndarray, det_img: np.ndarray, gt_img: np.ndarray,
                   dt_rles, gt_rles, workers: int) -> np.ndarray:
    """Mask IoU of the given (det row, GT row) pairs through pycocotools' ``rleIou``.

    ``det_img``/``gt_img`` are sorted image indices of the matching det/GT rows; ``dt_rles(a, b)``
    and ``gt_rles(a, b)`` return the RLE dicts of rows ``a:b``. One ``iou`` call per image.
    """
    imgs = np.unique(det_img)
    da = np.searchsorted(det_img, imgs)
    db = np.searchsorted(det_img, imgs, side="right")
    ga = np.searchsorted(gt_img, imgs)
    gb = np.searchsorted(gt_img, imgs, side="right")
    block = (db - da) * (gb - ga)
    offset = np.concatenate([[0], np.cumsum(block)])
    # balance the images over workers by block size (a rough cost proxy)
    pieces = max(1, min(workers, len(imgs)))
    cut = np.searchsorted(offset[1:], np.linspace(0, offset[-1], pieces + 1)[1:-1])
    groups = np.split(np.arange(len(imgs)), cut + 1) if pieces > 1 else [np.arange(len(imgs))]
    tasks = [(dt_rles, gt_rles, list(zip(da[g].tolist(), db[g].tolist())),
              list(zip(ga[g].tolist(), gb[g].tolist()))) for g in groups if len(g)]
    flat = np.concatenate(parallel_map(_mask_iou_images, tasks, workers)) if tasks else np.zeros(0)
    k = np.searchsorted(imgs, det_img[pair_det])
    return flat[offset[k] + (pair_det - da[k]) * (gb[k] - ga[k]) + (pair_gt - ga[k])]


def greedy_match(iou: np.ndarray, pair_start: np.ndarray, det_group: np.ndarray, det_rank: np.ndarray,
                 group_ng: np.ndarray, gt_ignore: np.ndarray, group_gt_start: np.ndarray) -> np.ndarray:
    """lvis-api's greedy matching for every (area range, IoU threshold) at once.

    Args:
        iou: ``(P,)`` IoU of each det row with each GT of its group, GT in JSON order;
            det row ``d``'s pairs are ``iou[pair_start[d] : pair_start[d] + ng]``.
        pair_start: ``(D,)``; det_group: ``(D,)`` group of each det row; det_rank: ``(D,)``
            position of the det inside its group in (score desc, input order).
        group_ng: ``(G,)`` GT count per group; group_gt_start: ``(G,)`` first GT row of the group.
        gt_ignore: ``(M, A)`` bool, GT ignored for area range ``a``.

    Returns:
        ``(D, A, T)`` int64: matched GT row, or -1.

    Rule (eval.py ``evaluate_img``): a det takes, among the still-unmatched GTs with
    ``IoU >= t``, the non-ignored one of highest IoU (ties: the later GT in JSON order); only
    when there is none, the ignored one chosen the same way.
    """
    num_a, num_t = gt_ignore.shape[1], len(IOU_THRS)
    out = np.full((len(det_group), num_a, num_t), -1, dtype=np.int64)
    if len(det_group) == 0:
        return out
    width = 1 << np.ceil(np.log2(np.maximum(group_ng, 1))).astype(np.int64)   # padded GT count
    for gp in np.unique(width):
        groups = np.flatnonzero(width == gp)
        local = np.full(len(group_ng), -1, dtype=np.int64)
        local[groups] = np.arange(len(groups))
        rows = np.flatnonzero(local[det_group] >= 0)
        ng = group_ng[det_group[rows]]
        j = np.arange(gp)
        valid = j[None, :] < ng[:, None]                                      # (n, gp)
        pidx = pair_start[rows][:, None] + np.minimum(j[None, :], ng[:, None] - 1)
        rows_iou = np.where(valid, iou[pidx], -1.0)                           # (n, gp)
        gvalid = j[None, :] < group_ng[groups][:, None]
        gidx = group_gt_start[groups][:, None] + np.minimum(j[None, :], group_ng[groups][:, None] - 1)
        ign = np.where(gvalid[:, None, :], gt_ignore[gidx].transpose(0, 2, 1), True)  # (g, A, gp)
        matched = np.zeros((len(groups), num_a, num_t, gp), dtype=bool)
        rank = det_rank[rows]
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(rank.max() + 2))
        thr = IOU_THRS[None, None, :, None]
        for r in range(rank.max() + 1):
            sel = by_rank[bounds[r]:bounds[r + 1]]
            g = local[det_group[rows[sel]]]
            x = rows_iou[sel][:, None, None, :]                               # (n, 1, 1, gp)
            cand = (x >= thr) & ~matched[g]                                   # (n, A, T, gp)
            ig = ign[g][:, :, None, :]
            regular = cand & ~ig
            has_regular = regular.any(-1, keepdims=True)
            cand = np.where(has_regular, regular, cand & ig)
            key = np.where(cand, x, -2.0)[..., ::-1]
            pick = gp - 1 - key.argmax(-1)                                    # last max
            hit = cand.any(-1)
            gi, ai, ti = np.nonzero(hit)
            matched[g[gi], ai, ti, pick[gi, ai, ti]] = True
            res = np.where(hit, pick, -1)
            out[rows[sel]] = np.where(res >= 0, group_gt_start[det_group[rows[sel]]][:, None, None] + res, -1)
    return out
