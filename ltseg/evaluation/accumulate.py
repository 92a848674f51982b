"""Precision/recall accumulation and the summary metrics, bit-exact with lvis-api.

``N`` kept detections, ``K`` categories, ``A`` area ranges, ``T`` IoU thresholds, ``R`` = 101.
"""
from __future__ import annotations

import numpy as np

from .params import AREA_LBL, EPS, FREQ_LBL, IOU_THRS, MAX_DETS, REC_THRS


def accumulate(cat: np.ndarray, score: np.ndarray, img: np.ndarray, idx: np.ndarray,
               tp: np.ndarray, fp: np.ndarray, num_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-category precision/recall (lvis-api ``accumulate``) without per-category loops.

    Args:
        cat, score, img, idx: ``(N,)`` category index, score, image index, input index.
        tp, fp: ``(N, A, T)`` bool, true / false positive (ignored detections are neither).
        num_gt: ``(K, A)`` non-ignored GT count.

    Returns:
        precision ``(T, R, K, A)`` and recall ``(T, K, A)``, -1 where a category has no GT.

    Detections are ranked by (score desc, image id asc, input order), as the official
    concatenation in image order followed by a stable sort. lvis-api samples the
    suffix-maximum of precision at the first rank whose recall reaches each recall threshold;
    that equals the maximum precision over all ranks whose recall reaches it, which is what
    is computed here from each rank's number of reached thresholds.
    """
    num_k, num_a = num_gt.shape
    num_t, num_r = len(IOU_THRS), len(REC_THRS)
    lanes = num_a * num_t
    ngt_l = np.repeat(num_gt, num_t, axis=1).astype(np.float64)               # (K, L)
    valid_l = ngt_l > 0
    order = np.lexsort((idx, img, -score, cat))
    cat_s = cat[order]
    tp_s = tp[order].reshape(-1, lanes)
    # cumulative counts are exact integers in float64, as lvis-api's cumsum(...).astype(float)
    tp_c = np.cumsum(tp_s, axis=0, dtype=np.float64)                          # (N, L)
    fp_c = np.cumsum(fp[order].reshape(-1, lanes), axis=0, dtype=np.float64)
    start = np.searchsorted(cat_s, np.arange(num_k))                          # first rank per cat
    end = np.searchsorted(cat_s, np.arange(num_k), side="right")
    zero = np.zeros((1, lanes))
    tp_before = np.concatenate([zero, tp_c])[start]                           # (K, L)
    fp_before = np.concatenate([zero, fp_c])[start]
    tp_total = np.concatenate([zero, tp_c])[end] - tp_before
    rec = np.divide(tp_total, ngt_l, out=np.full((num_k, lanes), -1.0), where=valid_l)
    recall = np.ascontiguousarray(rec.reshape(num_k, num_a, num_t).transpose(2, 0, 1))

    # best[t, q, k, a]: max precision over ranks whose recall reaches exactly q thresholds. Within
    # a category precision peaks where the TP count steps up, so only TP ranks can hold a maximum.
    best = np.zeros((num_t, num_r + 1, num_k, num_a))
    best.transpose(2, 3, 0, 1)[~valid_l.reshape(num_k, num_a, num_t)] = -1.0
    rows, lane = np.nonzero(tp_s)
    if len(rows):
        k = cat_s[rows]
        tp_n = tp_c[rows, lane] - tp_before[k, lane]
        fp_n = fp_c[rows, lane] - fp_before[k, lane]
        rc = tp_n / ngt_l[k, lane]
        pr = tp_n / (fp_n + tp_n + EPS)
        reached = np.searchsorted(REC_THRS, rc, side="right")
        a, t = np.divmod(lane, num_t)
        np.maximum.at(best.reshape(-1), ((t * (num_r + 1) + reached) * num_k + k) * num_a + a, pr)
    # precision at recall threshold r = max over ranks that reached more than r thresholds
    rev = best[:, ::-1]
    np.maximum.accumulate(rev, axis=1, out=rev)
    precision = best[:, 1:]
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
