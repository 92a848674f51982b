"""Precision/recall accumulation and the summary metrics, bit-exact with lvis-api.

``N`` kept detections, ``K`` categories, ``A`` area ranges, ``T`` IoU thresholds, ``R`` = 101.
"""
from __future__ import annotations

import numpy as np

from .params import AREA_LBL, EPS, FREQ_LBL, IOU_THRS, REC_THRS


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
    precision = -np.ones((num_t, num_r, num_k, num_a))
    recall = -np.ones((num_t, num_k, num_a))
    has_gt = num_gt > 0                                                       # (K, A)
    order = np.lexsort((idx, img, -score, cat))
    cat_s = cat[order]
    lanes = num_a * num_t
    tp_c = np.cumsum(tp[order].reshape(-1, lanes), axis=0, dtype=np.int64)   # (N, L)
    fp_c = np.cumsum(fp[order].reshape(-1, lanes), axis=0, dtype=np.int64)
    start = np.searchsorted(cat_s, np.arange(num_k))                          # first rank per cat
    end = np.searchsorted(cat_s, np.arange(num_k), side="right")
    zero = np.zeros((1, lanes), np.int64)
    tp_before = np.concatenate([zero, tp_c])[start]                           # (K, L)
    fp_before = np.concatenate([zero, fp_c])[start]
    tp_total = np.concatenate([zero, tp_c])[end] - tp_before                  # (K, L)
    ngt_l = np.repeat(num_gt, num_t, axis=1).astype(np.float64)               # (K, L)
    valid_l = np.repeat(has_gt, num_t, axis=1)
    rec = np.zeros((num_k, lanes))
    np.divide(tp_total.astype(np.float64), ngt_l, out=rec, where=valid_l)
    recall_kat = np.where(valid_l, rec, -1.0).reshape(num_k, num_a, num_t)
    recall[:] = recall_kat.transpose(2, 0, 1)

    best = np.zeros((num_k, lanes, num_r + 1))        # best[k, l, q]: max precision with q thrs reached
    if len(cat_s):
        tp_f = (tp_c - tp_before[cat_s]).astype(np.float64)
        fp_f = (fp_c - fp_before[cat_s]).astype(np.float64)
        ngt = ngt_l[cat_s]
        ok = valid_l[cat_s]
        rc = np.divide(tp_f, ngt, out=np.zeros_like(tp_f), where=ok)
        pr = tp_f / (fp_f + tp_f + EPS)
        reached = np.searchsorted(REC_THRS, rc.reshape(-1), side="right").reshape(rc.shape)
        flat = (cat_s[:, None] * lanes + np.arange(lanes)[None, :]) * (num_r + 1) + reached
        np.maximum.at(best.reshape(-1), flat[ok], pr[ok])
    # precision at threshold r = max over ranks that reached more than r thresholds
    prec = np.maximum.accumulate(best[:, :, ::-1], axis=2)[:, :, ::-1][:, :, 1:]   # (K, L, R)
    prec = np.where(valid_l[:, :, None], prec, -1.0).reshape(num_k, num_a, num_t, num_r)
    precision[:] = prec.transpose(2, 3, 0, 1)
    return precision, recall


def _mean_valid(s: np.ndarray) -> float:
    v = s[s > -1]
    return -1.0 if len(v) == 0 else float(np.mean(v))


def summarize(precision: np.ndarray, recall: np.ndarray, freq: np.ndarray, max_dets: int = 300) -> dict:
    """The LVIS summary metrics, indexed exactly as lvis-api ``_summarize`` (for bit-exact means)."""
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
    """Per-category AP, AP50, AP75, AR (area all); -1 for categories without GT. ``(K,)`` each."""
    def mean_k(s: np.ndarray) -> np.ndarray:           # s: (..., K) -> (K,)
        s = s.reshape(-1, s.shape[-1])
        valid = s > -1
        cnt = valid.sum(0)
        out = np.full(s.shape[1], -1.0)
        for k in np.flatnonzero(cnt):                 # per category, like SimCal's np.mean
            out[k] = float(np.mean(s[valid[:, k], k]))
        return out

    return {"AP": mean_k(precision[:, :, :, 0]), "AP50": mean_k(precision[0, :, :, 0]),
            "AP75": mean_k(precision[5, :, :, 0]), "AR": mean_k(recall[:, :, 0])}
