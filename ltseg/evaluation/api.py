"""``evaluate_results``: every IoU type in one call, with the output files (CLI and trainer)."""
from __future__ import annotations

import warnings
from pathlib import Path

from .gt import GroundTruth, load_json
from .lvis_eval import IOU_TYPES, LVISEvaluator, Metrics
from .params import MAX_DETS
from .report import plot_bins, plot_per_category, write_metrics_json, write_per_category_csv

BACKENDS = ("native", "official")


def evaluate_results(gt, results, iou_types=IOU_TYPES, train_stats=None, bins="lvis",
                     output_dir=None, backend: str = "native", max_dets: int = MAX_DETS,
                     workers: int | None = None, plots: bool = True, mask_backend: str = "auto"
                     ) -> dict[str, dict[str, float]]:
    """Evaluate ``results`` for each IoU type; returns ``{iou_type: {metric: float}}``.

    Args:
        gt: GT JSON path or dict.
        results: a results JSON path, a list of shard paths (one per rank), or a list of dicts.
        iou_types: subset of ``("bbox", "segm")``.
        train_stats: training counts for the AP1..AP4 bins (see :func:`.bins.train_counts`).
        bins: ``"lvis"``, ``"coco_lt"`` or a list of edges.
        output_dir: when given, writes ``metrics.json``, ``per_category_<type>.csv`` and (with
            ``plots``) ``per_category_ap_<type>.png`` and ``bins_ap.png``.
        backend: ``"native"`` (this package) or ``"official"`` (the lvis package, slow).
        max_dets: per-image cap (LVIS: 300).
        workers: processes for parsing and mask IoU (default: usable cores, max 8).
        plots: with ``output_dir``, also write the PNG plots.
        mask_backend: mask area / IoU by the C kernel (``native``), ``pycocotools``, or ``auto``.
    """
    if isinstance(iou_types, str):
        iou_types = (iou_types,)
    iou_types = tuple(iou_types)
    bad = [t for t in iou_types if t not in IOU_TYPES]
    if bad or not iou_types:
        raise ValueError(f"iou_types={list(iou_types)}: expected a non-empty subset of {list(IOU_TYPES)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {list(BACKENDS)}")
    gt_raw = None
    if backend == "official":
        gt_raw = gt if isinstance(gt, dict) else load_json(gt)
        gt = GroundTruth.from_dict(gt_raw, str(gt) if not isinstance(gt, dict) else "<dict>")
    gt = GroundTruth.load(gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")               # the train_stats warning is given once below
        evaluators = {t: LVISEvaluator(gt, t, max_dets=max_dets, bins=bins, train_stats=train_stats,
                                       workers=workers, mask_backend=mask_backend) for t in iou_types}
    if train_stats is None:
        warnings.warn(f"no train_stats given: instance-count bins use the counts in {gt.source}'s "
                      "categories, which may be VALIDATION counts; pass train_stats=<training json>",
                      stacklevel=2)
    out: dict[str, Metrics] = {}
    if backend == "native":
        det = evaluators["segm" if "segm" in iou_types else "bbox"].load(results)  # parsed once
        if len(det) == 0:
            warnings.warn("results are empty: every metric is 0 (or -1 where the official API gives -1)",
                          stacklevel=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for t in iou_types:
                out[t] = evaluators[t].evaluate(det)
    else:
        from .official import official_evaluate
        dets = _load_result_dicts(results)
        for t in iou_types:
            precision, recall, summary = official_evaluate(gt_raw, dets, t, max_dets)
            out[t] = evaluators[t].metrics(precision, recall, summary)
    metrics = {t: dict(m.summary) for t, m in out.items()}
    if output_dir is not None:
        write_outputs(out, metrics, Path(output_dir), plots)
    return metrics


def write_outputs(out: dict[str, Metrics], metrics: dict, output_dir: Path, plots: bool = True) -> None:
    """metrics.json, per_category_<type>.csv and the plots into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_json(metrics, output_dir / "metrics.json")
    for t, m in out.items():
        write_per_category_csv(m.per_category, output_dir / f"per_category_{t}.csv")
    if plots and out:
        for t, m in out.items():
            plot_per_category(m.per_category, m.bin_edges, output_dir / f"per_category_ap_{t}.png",
                              title=f"per-category {t} AP")
        plot_bins(metrics, next(iter(out.values())).bin_edges, output_dir / "bins_ap.png")


def _load_result_dicts(results) -> list:
    if isinstance(results, (str, Path)):
        results = [results]
    if results and all(isinstance(r, (str, Path)) for r in results):
        dets = []
        for path in results:
            part = load_json(path)
            if not isinstance(part, list):
                raise ValueError(f"{path}: results must be a JSON list of detections")
            dets.extend(part)
        return dets
    return list(results)
