"""Native LVIS evaluation (bbox, segm): the official lvis-api numbers, vectorised.

Pipeline (each step as lvis-api does it, see docs/evaluation.md):
per-image top-``max_dets`` cap -> known category and ``area > 0`` -> federated filter ->
IoU per (image, category) group -> greedy matching -> accumulation -> summaries.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pycocotools.mask as mask_utils

from . import parallel
from .accumulate import accumulate, per_category, rank_order, summarize
from .bins import bin_ap, bin_edges, train_counts
from .gt import GroundTruth
from .matching import box_iou_pairs, greedy_match, gt_to_rle, measure_masks
from .parallel import default_workers, fork_workers, parallel_map
from .params import AREA_RNG, IOU_THRS, MAX_DETS, REC_THRS
from .results import Detections, load_results
from .rle import MalformedMask, use_native
from .sorting import lexsort

IOU_TYPES = ("bbox", "segm")


@dataclass
class Metrics:
    """Evaluation of one IoU type.

    ``summary``: the LVIS keys plus ``AP1..AP4`` (0-1 scale, -1 where undefined).
    ``per_category``: ``(K,)`` arrays ``id, name, frequency, train_image_count,
    train_instance_count, AP, AP50, AP75, AR``. ``precision (T, R, K, A)``, ``recall (T, K, A)``.
    """

    iou_type: str
    summary: dict
    per_category: dict
    precision: np.ndarray = field(repr=False)
    recall: np.ndarray = field(repr=False)
    bin_edges: np.ndarray = field(repr=False)

    def __getitem__(self, key: str) -> float:
        return self.summary[key]


def _cap(img: np.ndarray, score: np.ndarray, max_dets: int) -> np.ndarray:
    """Indices kept by lvis-api's ``limit_dets_per_image``: top ``max_dets`` per image by a
    stable score sort, applied only to images with more than ``max_dets`` detections."""
    n = len(img)
    if max_dets < 0 or n == 0:
        return np.arange(n)
    over = np.bincount(img)[img] > max_dets
    if not over.any():
        return np.arange(n)
    sub = np.flatnonzero(over)                       # only over-cap images are sorted
    order = sub[lexsort((sub, -score[sub], img[sub]))]
    img_s = img[order]
    rank = np.arange(len(order)) - np.searchsorted(img_s, img_s)
    over[order[rank < max_dets]] = False             # kept: not over the cap after all
    return np.flatnonzero(~over)


def _first_kept(img: np.ndarray, score: np.ndarray, max_dets: int) -> int:
    """Index of lvis-api's first result after the cap (it picks the bbox/segm branch from it)."""
    members = np.flatnonzero(img == img[0])
    if 0 <= max_dets < len(members):
        return int(members[lexsort((members, -score[members]))[0]])
    return 0


def _require(det: Detections, mask: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(mask)
    if len(bad):
        j = int(bad[0])
        raise ValueError(f"{det.name(j)} (image_id={det.image_id[j]}, category_id={det.category_id[j]}): "
                         f"{what}" + (f" [{len(bad)} such detections]" if len(bad) > 1 else ""))


def select(gt: GroundTruth, det: Detections, iou_type: str, max_dets: int = MAX_DETS
           ) -> tuple[np.ndarray, bool]:
    """Detections lvis-api evaluates before its ``0 < area < inf`` filter, ascending, and
    whether their area is the mask area: cap -> branch -> known category -> federated rule.

    For ``segm`` the area is the mask area (detectron2 drops ``bbox`` before segm evaluation);
    for ``bbox`` it is ``w * h``, or the mask area when the (capped) first result has no
    ``bbox``, as lvis-api decides its branch from the first result.
    """
    d_img, d_cat = gt.image_index(det.image_id), gt.cat_index(det.category_id)
    keep = _cap(d_img, det.score, max_dets)
    if iou_type == "segm":
        _require(det, ~det.has_segm, "missing 'segmentation' (required for segm evaluation)")
        mask_area = True
    elif len(keep) and det.has_bbox[_first_kept(d_img, det.score, max_dets)]:
        missing = np.zeros(len(det), bool)
        missing[keep] = ~det.has_bbox[keep]
        _require(det, missing, "missing 'bbox' (the first result has one, so lvis-api requires it on all)")
        mask_area = False
    else:
        _require(det, ~det.has_segm & ~det.has_bbox, "has neither 'bbox' nor 'segmentation'")
        _require(det, ~det.has_segm, "missing 'segmentation' (the first result has no 'bbox')")
        mask_area = True
        missing = np.flatnonzero(~det.has_bbox)
        if len(missing):
            det.bbox[missing] = mask_utils.toBbox(det.rles(missing)).reshape(-1, 4)
            det.has_bbox[missing] = True
    # known category and the federated rule (c in pos(I) or neg(I)); lvis-api filters
    # 0 < area < inf first, but the filters commute and masks are costly to measure
    num_k = gt.num_categories
    keep = keep[d_cat[keep] >= 0]
    key = d_img[keep] * num_k + d_cat[keep]
    keep = keep[np.isin(key, gt.ann_img * num_k + gt.ann_cat) | np.isin(key, gt.neg_keys)]
    return keep, mask_area


def evaluate_arrays(gt: GroundTruth, det: Detections, iou_type: str, max_dets: int = MAX_DETS,
                    workers: int = 1, mask_backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """precision ``(T, R, K, A)`` and recall ``(T, K, A)`` exactly as lvis-api computes them.

    After the per-image cap, categories are independent: with several ``workers`` each forked
    process evaluates a range of categories (ranges balanced by detection count).
    ``mask_backend``: ``auto`` (the compiled kernel when built), ``native`` or ``pycocotools``.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type={iou_type!r}: expected 'bbox' or 'segm'")
    keep, mask_area = select(gt, det, iou_type, max_dets)
    num_k = gt.num_categories
    pieces = min(fork_workers(workers), len(keep) // parallel.MIN_DETS_PER_WORKER)
    if pieces <= 1:
        return _evaluate_kept(gt, det, keep, mask_area, iou_type, workers, mask_backend)
    cat = gt.cat_index(det.category_id[keep])
    cum = np.cumsum(np.bincount(cat, minlength=num_k))
    bounds = np.unique(np.r_[0, np.searchsorted(cum, np.linspace(0, cum[-1], pieces + 1)[1:-1]) + 1, num_k])
    tasks = [(gt, det, keep[(cat >= a) & (cat < b)], mask_area, iou_type, mask_backend, int(a), int(b))
             for a, b in zip(bounds[:-1], bounds[1:])]
    precision = np.empty((len(IOU_THRS), len(REC_THRS), num_k, len(AREA_RNG)))
    recall = np.empty((len(IOU_THRS), num_k, len(AREA_RNG)))
    for (*_, a, b), (p, r) in zip(tasks, parallel_map(_evaluate_categories, tasks, workers)):
        precision[:, :, a:b], recall[:, a:b] = p, r
    return precision, recall


def _evaluate_categories(task) -> tuple[np.ndarray, np.ndarray]:
    """precision / recall of categories ``a:b`` from the kept detections of those categories."""
    gt, det, keep, mask_area, iou_type, mask_backend, a, b = task
    precision, recall = _evaluate_kept(gt, det, keep, mask_area, iou_type, 1, mask_backend)
    return precision[:, :, a:b].copy(), recall[:, a:b].copy()


def _evaluate_kept(gt: GroundTruth, det: Detections, keep: np.ndarray, mask_area: bool, iou_type: str,
                   workers: int, mask_backend: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`evaluate_arrays` from the detections :func:`select` kept (ascending indices)."""
    num_k = gt.num_categories
    img, cat, score = gt.image_index(det.image_id[keep]), gt.cat_index(det.category_id[keep]), det.score[keep]
    key = img * num_k + cat                          # (image, category) group
    order = lexsort((keep, -score, key))             # groups, then (score desc, input order)
    keep, img, cat, score, key = (a[order] for a in (keep, img, cat, score, key))

    gt_key = gt.ann_img * num_k + gt.ann_cat
    g_order = np.argsort(gt_key, kind="stable")      # groups, JSON order inside
    g_key, g_area = gt_key[g_order], gt.ann_area[g_order]
    lo, hi = AREA_RNG[:, 0], AREA_RNG[:, 1]
    g_ignore = gt.ann_ignore[g_order][:, None] | (g_area[:, None] < lo) | (g_area[:, None] > hi)  # (M, A)

    mask_iou = None
    if mask_area:                                    # areas (and segm IoU) in one pass over the RLEs
        g_first = np.searchsorted(g_key, key)
        g_count = np.searchsorted(g_key, key, side="right") - g_first
        if iou_type == "bbox":
            g_count = np.zeros_like(g_count)
        g_img, hw, segm = gt.ann_img[g_order], gt.image_hw, gt.ann_segm

        def gt_rles(rows):
            return [gt_to_rle(segm[g_order[j]], int(hw[g_img[j], 0]), int(hw[g_img[j], 1]))
                    for j in rows.tolist()]

        try:
            d_area, mask_iou = measure_masks(key, g_first, g_count, det.masks(keep), gt_rles, workers,
                                             mask_backend)
        except MalformedMask as e:
            if e.which == "gt":
                raise ValueError(f"{gt.source}: annotation id={gt.ann_id[g_order[e.row]]}: its RLE runs do "
                                 "not cover the image size") from None
            j = keep[e.row]
            raise ValueError(f"{det.name(j)} (image_id={det.image_id[j]}, category_id={det.category_id[j]}): "
                             f"segmentation RLE runs do not cover its size {det.seg_hw[j].tolist()}") from None
    else:
        d_area = det.bbox[keep, 2] * det.bbox[keep, 3]
    ok = (d_area > 0) & (d_area < np.inf)            # lvis-api's get_ann_ids area filter
    if mask_iou is not None:
        mask_iou = mask_iou[np.repeat(ok, g_count)]
    keep, img, cat, score, key, d_area = (a[ok] for a in (keep, img, cat, score, key, d_area))

    # matching groups: (image, category) with both detections and GT; (det, GT) pairs inside
    groups = np.unique(key)
    groups = groups[np.isin(groups, g_key)]
    g_start = np.searchsorted(g_key, groups)
    g_num = np.searchsorted(g_key, groups, side="right") - g_start
    d_group = np.searchsorted(groups, key).clip(0, max(len(groups) - 1, 0))
    rows = np.flatnonzero(groups[d_group] == key) if len(groups) else np.zeros(0, np.int64)
    r_group = d_group[rows]
    r_rank = rows - np.searchsorted(key, key[rows])
    ng = g_num[r_group]
    pair_start = np.concatenate([[0], np.cumsum(ng)[:-1]]).astype(np.int64)
    if iou_type == "bbox":
        p_det = np.repeat(np.arange(len(rows)), ng)
        p_gt = np.repeat(g_start[r_group] - pair_start, ng) + np.arange(int(ng.sum()))
        iou = box_iou_pairs(det.bbox[keep[rows]][p_det], gt.ann_bbox[g_order][p_gt])
    else:
        iou = mask_iou                               # same layout: rows in order, GTs in order
    match = greedy_match(iou, pair_start, r_group, r_rank, g_num, g_ignore, g_start)  # (D, A, T)

    rank = rank_order(cat, score)                    # rows are in (image, category, score, input) order
    nel = np.isin(key, gt.nel_keys)
    out_ig = (d_area[:, None] < lo) | (d_area[:, None] > hi) | nel[:, None]     # (N, A)
    tp, fp = _tp_fp(match, rows, rank, out_ig, g_ignore, gt.ann_id[g_order])
    g_cat = gt.ann_cat[g_order]
    num_gt = np.stack([np.bincount(g_cat[~g_ignore[:, a]], minlength=num_k) for a in range(len(lo))], 1)
    return accumulate(cat[rank], tp, fp, num_gt)


def _tp_fp(match: np.ndarray, rows: np.ndarray, rank: np.ndarray, out_ig: np.ndarray,
           g_ignore: np.ndarray, g_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """lvis-api's per-(area, threshold) flags as ``(L, N)`` bool in accumulation rank order.

    A match to a GT with id 0 counts as unmatched (lvis-api stores match ids); a matched
    detection inherits the GT's ignore flag; an unmatched one is ignored when ``out_ig``
    (outside the area range, or a not-exhaustive category). ``match (D, A, T)`` covers
    detection rows ``rows``; the others meet no GT.
    """
    n, (num_a, num_t), num_m = len(rank), match.shape[1:], len(g_id)
    pos = np.empty(n, np.int64)
    pos[rank] = np.arange(n)
    # outcome per (area, GT row; last column: unmatched): 0 TP, 1 ignored, 2 counts as unmatched
    outcome = np.full((num_a, num_m + 1), 2, np.uint8)
    outcome[:, :num_m] = np.where(g_ignore.T, 1, np.where(g_id != 0, 0, 2))
    m = match.transpose(1, 2, 0)                                              # (A, T, D)
    state = outcome[np.arange(num_a)[:, None, None], np.where(m >= 0, m, num_m)]
    tp = np.zeros((num_a, num_t, n), bool)
    fp = np.repeat(~out_ig[rank].T[:, None, :], num_t, axis=1)
    tp[:, :, pos[rows]] = state == 0
    fp[:, :, pos[rows]] = (state == 2) & ~out_ig[rows].T[:, None, :]
    return tp.reshape(num_a * num_t, n), fp.reshape(num_a * num_t, n)


class LVISEvaluator:
    """Evaluate LVIS results against one ground truth for one IoU type.

    Args:
        gt: GT JSON path, dict or a loaded :class:`GroundTruth`.
        iou_type: ``"bbox"`` or ``"segm"``.
        max_dets: per-image cap across categories (LVIS: 300).
        bins: ``"lvis"`` ([0,10,100,1000,inf)), ``"coco_lt"`` ([0,20,400,8000,inf)) or edges.
        train_stats: training category counts for the bins (JSON path, dict or CategoryStats).
        workers: processes for parsing and mask IoU (default: usable cores, max 8).
        mask_backend: mask areas and IoU by the compiled kernel (``native``), ``pycocotools``, or
            ``auto`` (the kernel when it was built); the numbers are the same.
    """

    def __init__(self, gt, iou_type: str, max_dets: int = MAX_DETS, bins="lvis", train_stats=None,
                 workers: int | None = None, mask_backend: str = "auto"):
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type={iou_type!r}: expected 'bbox' or 'segm'")
        self.gt = GroundTruth.load(gt)
        self.iou_type, self.max_dets = iou_type, max_dets
        self.edges = bin_edges(bins)
        self.workers = default_workers() if workers is None else workers
        use_native(mask_backend)                     # an unknown or unbuilt backend fails here
        self.mask_backend = mask_backend
        self.train_image_count, self.train_instance_count, self.train_source = \
            train_counts(train_stats, self.gt)

    def load(self, results) -> Detections:
        """Parse results (path | shard paths | list of dicts) for this evaluator's IoU type."""
        det = load_results(results, self.gt, segm=self.iou_type == "segm", workers=self.workers)
        if self.iou_type == "bbox" and len(det) and not det.has_bbox.all():
            # lvis-api derives missing boxes (and areas) from the masks
            det = load_results(results, self.gt, segm=True, workers=self.workers)
        return det

    def evaluate(self, results) -> Metrics:
        """Results (path | shard paths | list of dicts | :class:`Detections`) -> :class:`Metrics`."""
        det = results if isinstance(results, Detections) else self.load(results)
        if len(det) == 0:
            warnings.warn("results are empty: every metric is 0 (or -1 where the official API gives -1)",
                          stacklevel=2)
        precision, recall = evaluate_arrays(self.gt, det, self.iou_type, self.max_dets, self.workers,
                                            self.mask_backend)
        return self.metrics(precision, recall)

    def metrics(self, precision: np.ndarray, recall: np.ndarray, summary: dict | None = None) -> Metrics:
        """:class:`Metrics` from lvis-api-layout arrays (``summary`` defaults to summarising them)."""
        if summary is None:
            summary = summarize(precision, recall, self.gt.cat_freq)
        summary = dict(summary)
        rows = per_category(precision, recall)
        summary.update(bin_ap(rows["AP"], self.train_instance_count, self.edges))
        table = {"id": self.gt.cat_ids, "name": np.array(self.gt.cat_names, dtype=object),
                 "frequency": self.gt.cat_freq, "train_image_count": self.train_image_count,
                 "train_instance_count": self.train_instance_count, **rows}
        return Metrics(self.iou_type, summary, table, precision, recall, self.edges)
