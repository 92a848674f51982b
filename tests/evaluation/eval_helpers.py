"""Shared helpers for the evaluator tests: tiny hand-built cases and the oracle comparison."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils

from ltseg.evaluation import LVISEvaluator
from tests.lvis_oracle import official_eval

H, W = 200, 200


def box_poly(b):
    x, y, w, h = b
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def gt_dict(anns, images=None, cats=None):
    """A GT dict; ``anns`` are (ann_id, image_id, category_id, [x, y, w, h]) box-shaped objects."""
    images = images or [{"id": 1, "neg_category_ids": [], "not_exhaustive_category_ids": []}]
    cats = cats or [{"id": 1, "frequency": "f"}, {"id": 2, "frequency": "c"}, {"id": 3, "frequency": "r"}]
    return {
        "images": [{"height": H, "width": W, **im} for im in images],
        "categories": [{"name": f"c{c['id']}", "instance_count": 5, "image_count": 5, **c} for c in cats],
        "annotations": [{"id": a, "image_id": i, "category_id": c, "bbox": list(map(float, b)),
                         "area": float(b[2] * b[3]), "segmentation": box_poly(b)}
                        for a, i, c, b in anns],
    }


def det(image_id, category_id, box, score):
    rle = mask_utils.frPyObjects(box_poly(box), H, W)[0]
    return {"image_id": image_id, "category_id": category_id, "bbox": list(map(float, box)),
            "score": score, "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}}


def check(gt, dets, iou_types=("bbox", "segm"), max_dets=300, **kw) -> dict:
    """Native vs official on the same inputs: identical precision/recall arrays and summaries."""
    out = {}
    for t in iou_types:
        ev = official_eval(gt, dets, t, max_dets=max_dets)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = LVISEvaluator(gt, t, max_dets=max_dets, workers=kw.get("workers", 1)).evaluate(
                kw.get("results", dets))
        np.testing.assert_array_equal(m.precision, ev.eval["precision"], err_msg=f"{t} precision")
        np.testing.assert_array_equal(m.recall, ev.eval["recall"], err_msg=f"{t} recall")
        for k, v in ev.results.items():
            assert abs(m.summary[k] - float(v)) <= 1e-12, (t, k, m.summary[k], float(v))
        out[t] = m
    return out


def dump(path: Path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)
