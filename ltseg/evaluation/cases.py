"""Seeded generator of LVIS-format evaluation cases (ground truth + results) for tests and benchmarks.

A case exercises every behaviour the official evaluator is subtle about: tied scores, images
without annotations, categories without GT, ``neg``/``not_exhaustive`` sets, detections outside
an image's pos/neg sets, more than ``max_dets`` detections on an image, multi-part polygons,
compressed and uncompressed RLE ground truth, tiny and zero-area boxes, empty masks and GT
areas exactly on the range edges (1024, 9216).
"""
from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils


def _polygon(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float,
             w: int, h: int) -> list[float]:
    """A star-shaped polygon, flat ``[x0, y0, x1, y1, ...]``, clipped to the image."""
    n = int(rng.integers(5, 11))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(0.6, 1.0, n)
    xs = np.clip(cx + rx * rad * np.cos(ang), 0, w)
    ys = np.clip(cy + ry * rad * np.sin(ang), 0, h)
    return np.round(np.stack([xs, ys], 1).reshape(-1), 2).tolist()


def _poly_area(p: list[float]) -> float:
    x, y = np.asarray(p[0::2]), np.asarray(p[1::2])
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _bounds(polys: list[list[float]]) -> list[float]:
    xs = np.concatenate([np.asarray(p[0::2]) for p in polys])
    ys = np.concatenate([np.asarray(p[1::2]) for p in polys])
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]


def _uncompressed(rle: dict) -> dict:
    """Compressed RLE -> uncompressed (``counts`` as a list of run lengths)."""
    m = mask_utils.decode(rle).reshape(-1, order="F")
    change = np.flatnonzero(np.diff(m)) + 1
    bounds = np.concatenate([[0], change, [m.size]])
    runs = np.diff(bounds).tolist()
    if m[0] == 1:
        runs = [0] + runs
    return {"size": list(rle["size"]), "counts": runs}


def make_case(seed: int, num_images: int = 20, num_categories: int = 12, dets_per_image: int = 40,
              max_dets: int = 300, size: tuple[int, int] = (96, 128), gt_per_image: float = 4.0,
              score_decimals: int | None = 2) -> tuple[dict, list[dict]]:
    """Generate ``(gt_dict, results)``.

    Args:
        seed: numpy seed; the same arguments give identical outputs.
        num_images, num_categories: case size. Category ids are ``1..C`` shuffled in the JSON.
        dets_per_image: mean detections per image; every 5th image gets ``max_dets + 20``.
        size: image ``(height, width)``; each image varies around it.
        gt_per_image: mean GT instances per image (every 7th image has none).
        score_decimals: round scores to force ties (``None`` keeps full precision).
    """
    rng = np.random.default_rng(seed)
    cat_ids = rng.permutation(np.arange(1, num_categories + 1)).tolist()
    freq = rng.choice(["r", "c", "f"], num_categories).tolist()
    categories = [{"id": int(c), "name": f"cat_{c}", "frequency": f, "synset": f"cat_{c}.n.01",
                   "image_count": int(rng.integers(1, 200)),
                   "instance_count": int(rng.integers(1, 3000))}
                  for c, f in zip(cat_ids, freq)]
    no_gt_cats = set(cat_ids[: max(1, num_categories // 6)])     # never annotated in this split
    gt_cats = np.array([c for c in cat_ids if c not in no_gt_cats])
    cat_arr = np.array(cat_ids)

    images, anns, results = [], [], []
    ann_id = 1
    for i in range(num_images):
        img_id = int(3 * i + 1 + rng.integers(0, 3))                 # sparse, ascending-ish ids
        h = int(size[0] + rng.integers(-8, 9))
        w = int(size[1] + rng.integers(-8, 9))
        n_gt = 0 if i % 7 == 3 else int(rng.poisson(gt_per_image))
        img_cats = rng.choice(gt_cats, size=n_gt).tolist() if n_gt else []
        img_anns = []
        for c in img_cats:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            rx, ry = rng.uniform(2, w / 3), rng.uniform(2, h / 3)
            kind = rng.random()
            if kind < 0.1:                                          # tiny box, square polygon
                s = float(rng.integers(1, 4))
                x0, y0 = float(int(cx) % (w - 4)), float(int(cy) % (h - 4))
                polys = [[x0, y0, x0 + s, y0, x0 + s, y0 + s, x0, y0 + s]]
            elif kind < 0.15:                                       # area exactly 1024 or 9216
                s = 32.0 if rng.random() < 0.5 else 96.0
                s = min(s, float(min(w, h) - 1))
                polys = [[0.0, 0.0, s, 0.0, s, s, 0.0, s]]
            elif kind < 0.35:                                       # several parts
                polys = [_polygon(rng, cx, cy, rx / 2, ry / 2, w, h),
                         _polygon(rng, rng.uniform(0, w), rng.uniform(0, h), rx / 3, ry / 3, w, h)]
            else:
                polys = [_polygon(rng, cx, cy, rx, ry, w, h)]
            area = float(sum(_poly_area(p) for p in polys))
            bbox = _bounds(polys)
            segm: object = polys
            if kind >= 0.35 and rng.random() < 0.3:                 # RLE ground truth
                rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
                area = float(mask_utils.area(rle))
                if rng.random() < 0.5:
                    segm = _uncompressed(rle)
                else:
                    segm = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            ann = {"id": ann_id, "image_id": img_id, "category_id": int(c), "segmentation": segm,
                   "area": area, "bbox": bbox}
            if kind < 0.15:
                ann["area"] = float(bbox[2] * bbox[3])
            anns.append(ann)
            img_anns.append((ann, polys))
            ann_id += 1
        pos = sorted(set(img_cats))
        others = np.setdiff1d(cat_arr, pos)
        neg = sorted(rng.choice(others, size=min(len(others), int(rng.integers(0, 4))),
                                replace=False).tolist())
        nel = sorted(rng.choice(pos, size=min(len(pos), int(rng.integers(0, 2))),
                                replace=False).tolist()) if pos else []
        images.append({"id": img_id, "height": h, "width": w, "neg_category_ids": neg,
                       "not_exhaustive_category_ids": nel, "file_name": f"{img_id:012d}.jpg"})

        n_det = max_dets + 20 if i % 5 == 2 else int(rng.poisson(dets_per_image))
        polys_out, boxes_out, cats_out = [], [], []
        for d in range(n_det):
            r = rng.random()
            if img_anns and r < 0.55:                               # near a GT (maybe a wrong class)
                ann, polys = img_anns[int(rng.integers(len(img_anns)))]
                jit = rng.normal(0, 0.08 * max(ann["bbox"][2], ann["bbox"][3], 1), 2)
                dpoly = [np.clip(np.asarray(p).reshape(-1, 2) + jit, 0, [w, h]).reshape(-1).round(2).tolist()
                         for p in polys]
                c = ann["category_id"] if rng.random() < 0.8 else int(cat_arr[rng.integers(len(cat_arr))])
            else:                                                   # background, neg or unrelated class
                pool = neg if (neg and rng.random() < 0.5) else cat_arr
                c = int(pool[rng.integers(len(pool))])
                dpoly = [_polygon(rng, rng.uniform(0, w), rng.uniform(0, h),
                                  rng.uniform(1, w / 4), rng.uniform(1, h / 4), w, h)]
            box = _bounds(dpoly)
            if rng.random() < 0.02:                                 # zero-width box
                box[2] = 0.0
            if rng.random() < 0.02:                                 # empty mask (outside the frame)
                dpoly = [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
            polys_out.append(dpoly)
            boxes_out.append(box)
            cats_out.append(c)
        for dpoly, box, c in zip(polys_out, boxes_out, cats_out):
            rle = mask_utils.merge(mask_utils.frPyObjects(dpoly, h, w))
            score = float(rng.random())
            if score_decimals is not None:
                score = round(score, score_decimals)
            results.append({"image_id": img_id, "category_id": c, "bbox": box, "score": score,
                            "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")}})
    order = rng.permutation(len(results))                           # results are not image-sorted
    results = [results[k] for k in order]
    images = [images[k] for k in rng.permutation(len(images))]     # JSON order is not id order
    gt = {"info": {"description": f"ltseg synthetic case seed={seed}"}, "images": images,
          "annotations": anns, "categories": categories, "licenses": []}
    return gt, results
