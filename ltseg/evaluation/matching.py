"""IoU and greedy matching of detections to GT, vectorised across (image, category) groups.

Shapes: ``P`` (det, GT) pairs that share an (image, category) group; ``A`` = 4 area ranges;
``T`` = 10 IoU thresholds. The greedy loop runs over detection *rank* inside a group (at most
the per-image cap), never over detections.
"""
from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils

from . import parallel
from .parallel import parallel_map
from .params import IOU_THRS
from .rle import MalformedMask, PackedMasks, measure
from .sorting import lexsort


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


def _measure_masks(task) -> tuple[np.ndarray, np.ndarray]:
    """Areas and IoU blocks of rows ``a:b`` (one worker's share)."""
    dt, gt_rles, a, b, g_start, g_num, backend = task
    first, count = g_start[a:b], g_num[a:b]
    starts, at = np.unique(first[count > 0], return_index=True)     # the GT runs these rows meet
    sizes = count[count > 0][at]
    offset = np.cumsum(sizes) - sizes                                 # each run's place in `need`
    need = np.repeat(starts - offset, sizes) + np.arange(int(sizes.sum()))
    local = np.zeros(len(count), np.int64)                           # first row in `need`
    local[count > 0] = offset[np.searchsorted(starts, first[count > 0])]
    try:
        return measure(dt.take(slice(a, b)), PackedMasks.from_dicts(gt_rles(need)), local, count, backend)
    except MalformedMask as e:                  # rows of this piece -> rows of the whole pass
        raise MalformedMask(e.which, a + e.row if e.which == "detection" else int(need[e.row])) from None


def measure_masks(key: np.ndarray, g_start: np.ndarray, g_num: np.ndarray, dt: PackedMasks, gt_rles,
                  workers: int, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Mask areas of ``N`` detection rows and their mask IoU with the GT of their group.

    Rows are sorted by group ``key``; row ``d`` meets GT rows ``g_start[d]:+g_num[d]``
    (``g_num`` 0: no GT of its (image, category), area only). ``dt`` holds the rows' masks;
    ``gt_rles(rows)`` gives the RLE dicts of the GT ``rows`` (an index array); each piece asks
    only for the GT its rows meet. Returns areas ``(N,)`` float64 and
    the IoU (pycocotools ``rleIou``) of each row with each of its GTs, ``(sum(g_num),)``, rows
    in order (the pair layout :func:`greedy_match` reads). The rows are cut at group boundaries
    into pieces for ``workers`` forked processes; see :func:`ltseg.evaluation.rle.measure`.
    """
    n = len(key)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    pieces = max(1, min(workers, n // parallel.MIN_DETS_PER_WORKER))
    cost = np.cumsum(1 + g_num)
    cut = np.searchsorted(cost, np.linspace(0, cost[-1], pieces + 1)[1:-1])
    cut = np.unique(np.searchsorted(key, key[np.minimum(cut, n - 1)]))     # at group starts
    bounds = np.r_[0, cut[cut > 0], n]
    tasks = [(dt, gt_rles, int(a), int(b), g_start, g_num, backend)
             for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    parts = parallel_map(_measure_masks, tasks, workers)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


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
        ``(D, A, T)`` int32: matched GT row, or -1.

    Rule (eval.py ``evaluate_img``): a det takes, among the still-unmatched GTs with
    ``IoU >= t``, the non-ignored one of highest IoU (ties: the later GT in JSON order); only
    when there is none, the ignored one chosen the same way.
    """
    num_a, num_t = gt_ignore.shape[1], len(IOU_THRS)
    out = np.full((len(det_group), num_a, num_t), -1, dtype=np.int32)
    if len(det_group) == 0:
        return out
    width = 1 << np.ceil(np.log2(np.maximum(group_ng, 1))).astype(np.int64)   # padded GT count
    single = np.flatnonzero(group_ng[det_group] == 1)
    if len(single):
        # one GT: at each threshold the first det (by rank) reaching it takes it, in every area
        rows = single[lexsort((det_rank[single], det_group[single]))]         # group, then rank
        ok = iou[pair_start[rows]][:, None] >= IOU_THRS[None, :]              # (n, T)
        seen = np.cumsum(ok, axis=0)
        first = np.r_[True, det_group[rows][1:] != det_group[rows][:-1]]
        base = np.maximum.accumulate(np.where(first[:, None], seen - ok, 0), axis=0)
        take = ok & (seen - base == 1)
        out[rows] = np.where(take, group_gt_start[det_group[rows]][:, None], -1)[:, None, :]
    for gp in np.unique(width[group_ng > 1]):
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
