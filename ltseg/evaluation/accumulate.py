"""Precision/recall accumulation and the summary metrics, bit-exact with lvis-api.

``N`` kept detections, ``K`` categories, ``A`` area ranges, ``T`` IoU thresholds, ``R`` = 101.
"""
from __future__ import annotations

import numpy as np

from .params import AREA_LBL, EPS, FREQ_LBL, IOU_THRS, MAX_DETS, REC_THRS
from .sorting import lexsort


def rank_order(cat: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Accumulation order of detections given in (image, category, score desc, input order):
    category, then score desc, ties keeping that order, i.e. (image id asc, input order), as
    lvis-api's concatenation of per-image results in image order followed by a stable sort."""
    return lexsort((-score, cat))


def accumulate(cat: np.ndarray, tp: np.ndarray, fp: np.ndarray, num_gt: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-category precision/recall (lvis-api ``accumulate``) without per-category loops.

    Args:
        cat: ``(N,)`` category index of each detection, in :func:`rank_order`.
        tp, fp: ``(L, N)`` bool in the same order, lanes ``L = A * T`` (area-major); true /
            false positive (ignored detections are neither).
        num_gt: ``(K, A)`` non-ignored GT count.

    Returns:
        precision ``(T, R, K, A)`` and recall ``(T, K, A)``, -1 where a category has no GT.

    lvis-api samples the suffix maximum of precision at the first rank whose recall reaches
    each recall threshold; that is the maximum precision over the ranks whose recall reaches it,
    and within a category precision peaks where the TP count steps up, so only TP ranks are
    visited: their TP count is their position among the category's TPs and their FP count a
    ``searchsorted`` among its FPs (exact integers in float64, as lvis-api's cumsum).
    """
    num_k, num_a = num_gt.shape
    num_t, num_r = len(IOU_THRS), len(REC_THRS)
    lanes, n = tp.shape
    ngt_l = np.repeat(num_gt, num_t, axis=1).astype(np.float64)               # (K, L)
    start = np.searchsorted(cat, np.arange(num_k))                            # first rank per cat

    lane, row = np.nonzero(tp)                                                # lane-major, rank asc
    k = cat[row]
    run = lane * num_k + k                                                    # sorted
    tp_n = (np.arange(len(run)) - np.searchsorted(run, run) + 1).astype(np.float64)
    fp_keys = np.flatnonzero(fp)                                              # lane * N + rank
    fp_n = (np.searchsorted(fp_keys, lane * n + row)
            - np.searchsorted(fp_keys, lane * n + start[k])).astype(np.float64)
    tp_total = np.bincount(run, minlength=lanes * num_k).reshape(lanes, num_k).T.astype(np.float64)
    valid = num_gt > 0
    rec = np.divide(tp_total, ngt_l, out=np.full((num_k, lanes), -1.0), where=ngt_l > 0)
    recall = np.ascontiguousarray(rec.reshape(num_k, num_a, num_t).transpose(2, 0, 1))

    # best[t, q, k, a]: max precision over TP ranks whose recall reaches exactly q thresholds
    best = np.zeros((num_t, num_r + 1, num_k, num_a))
    if len(run):
        rc = tp_n / ngt_l[k, lane]
        pr = tp_n / (fp_n + tp_n + EPS)
        reached = np.searchsorted(REC_THRS, rc, side="right")
        a, t = np.divmod(lane, num_t)
        np.maximum.at(best.reshape(-1), ((t * (num_r + 1) + reached) * num_k + k) * num_a + a, pr)
    # precision at recall threshold r = max over ranks that reached more than r thresholds
    rev = best[:, ::-1]
    np.maximum.accumulate(rev, axis=1, out=rev)
    precision = best[:, 1:]
    precision[:, :, ~valid] = -1.0
    return precision, recall


def _mean_valid(s: np.ndarray) -> float:
    v = s[s > -1]
    return -1.0 if len(v) == 0 else float(np.mean(v))


def summarize(precision: np.ndarray, recall: np.ndarray, freq: np.ndarray) -> dict:
    """The LVIS summary metrics, indexed exactly as lvis-api ``_summarize`` (for bit-exact means).

    The AR keys say ``@300`` whatever the cap: lvis-api labels them with its fixed
    ``Params.max_dets`` (the cap itself lives in ``LVISResults``).
    """
    max_dets = MAX_DETS
    groups = [[k for k, f in enumerate(freq) if f == g] for g in FREQ_LBL]

    def ap(iou_thr=None, area="all", group=None):
        aidx = [AREA_LBL.index(area)]
        s = precision
        if iou_thr is not None:
            s = s[np.where(iou_thr == IOU_THRS)[0]]
        s = s[:, :, groups[group], aidx] if group is not None else s[:, :, :, aidx]
        return _mean_valid(s)

    def ar(area="all"):
        return _mean_valid(recall[:, :, [AREA_LBL.index(area)]])

    out = {"AP": ap(), "AP50": ap(iou_thr=0.50), "AP75": ap(iou_thr=0.75),
           "APs": ap(area="small"), "APm": ap(area="medium"), "APl": ap(area="large"),
           "APr": ap(group=0), "APc": ap(group=1), "APf": ap(group=2),
           f"AR@{max_dets}": ar()}
    for area in ("small", "medium", "large"):
        out[f"AR{area[0]}@{max_dets}"] = ar(area)
    return out


def per_category(precision: np.ndarray, recall: np.ndarray) -> dict[str, np.ndarray]:
    """Per-category AP, AP50, AP75, AR (area all); -1 for categories without GT. ``(K,)`` each.

    ``AP_k = np.mean(precision[:, :, k, all][> -1])`` (SimCal's ``_summarize_per_cate``). A
    category with GT fills all its entries, so this is a mean over one contiguous row per
    category (the same pairwise summation as the 1-D mean), computed for all rows at once.
    """
    def mean_k(s: np.ndarray) -> np.ndarray:           # s: (..., K) -> (K,)
        rows = np.ascontiguousarray(s.reshape(-1, s.shape[-1]).T)
        valid = rows > -1
        out = rows.mean(axis=1)
        full = valid.all(1)
        out[~valid.any(1)] = -1.0
        for k in np.flatnonzero(valid.any(1) & ~full):   # partial rows: never for LVIS arrays
            out[k] = float(np.mean(rows[k][valid[k]]))
        return out

    return {"AP": mean_k(precision[:, :, :, 0]), "AP50": mean_k(precision[0, :, :, 0]),
            "AP75": mean_k(precision[5, :, :, 0]), "AR": mean_k(recall[:, :, 0])}
