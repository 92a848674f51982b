"""LVIS ground truth as flat arrays: images, categories, the federated sets and the annotations.

Only the fields the official evaluator reads are kept (see docs/evaluation.md). Annotations
are filtered exactly like lvis-api's ``get_ann_ids(img_ids=all, cat_ids=all)``: known image,
known category, ``0 < area < inf``; their JSON order is kept, it breaks IoU ties.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .params import FREQ_LBL


def load_json(path: str | Path):
    """Parse a JSON file with orjson when available (3-4x faster), else the stdlib."""
    data = Path(path).read_bytes()
    try:
        import orjson
    except ImportError:
        return json.loads(data)
    return orjson.loads(data)


def _positions(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index of each of ``ids`` in the ascending unique ``table`` (int64), -1 where absent.

    A lookup table over ``[table[0], table[-1]]`` when that range is small (LVIS ids are), else
    a binary search.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if len(table) == 0:
        return np.full(len(ids), -1, np.int64)
    lo, hi = int(table[0]), int(table[-1])
    if hi - lo <= 16 * len(table) + 65536:
        lut = np.full(hi - lo + 1, -1, np.int64)
        lut[table - lo] = np.arange(len(table))
        found = lut[np.clip(ids, lo, hi) - lo]
        return np.where((ids >= lo) & (ids <= hi), found, -1)
    idx = np.searchsorted(table, ids).clip(0, len(table) - 1)
    return np.where(table[idx] == ids, idx, -1)


@dataclass
class GroundTruth:
    """Ground truth arrays. ``I`` images, ``K`` categories, ``M`` kept annotations.

    Pair keys encode (image index ``i``, category index ``k``) as ``i * K + k`` (int64).
    """

    source: str
    image_ids: np.ndarray          # (I,) int64, ascending
    image_hw: np.ndarray           # (I, 2) int64 height, width
    cat_ids: np.ndarray            # (K,) int64, ascending
    cat_names: list
    cat_freq: np.ndarray           # (K,) '<U1' in {r, c, f}
    cat_image_count: np.ndarray    # (K,) int64, counts as written in this file (often NOT training)
    cat_instance_count: np.ndarray
    neg_keys: np.ndarray           # sorted pair keys of images' neg_category_ids
    nel_keys: np.ndarray           # sorted pair keys of images' not_exhaustive_category_ids
    ann_id: np.ndarray             # (M,) int64
    ann_img: np.ndarray            # (M,) int64 image index
    ann_cat: np.ndarray            # (M,) int64 category index
    ann_area: np.ndarray           # (M,) float64, the JSON ``area`` field
    ann_bbox: np.ndarray           # (M, 4) float64 xywh
    ann_ignore: np.ndarray         # (M,) bool, optional ``ignore`` field
    ann_segm: list                 # (M,) raw ``segmentation`` objects

    @property
    def num_categories(self) -> int:
        return len(self.cat_ids)

    def image_index(self, image_ids: np.ndarray) -> np.ndarray:
        """Image ids -> image indices; -1 where unknown."""
        return _positions(self.image_ids, image_ids)

    def cat_index(self, cat_ids: np.ndarray) -> np.ndarray:
        """Category ids -> category indices; -1 where unknown."""
        return _positions(self.cat_ids, cat_ids)

    @classmethod
    def load(cls, gt: "str | Path | dict | GroundTruth") -> "GroundTruth":
        if isinstance(gt, GroundTruth):
            return gt
        if isinstance(gt, dict):
            return cls.from_dict(gt, "<dict>")
        path = Path(gt)
        if not path.is_file():
            raise FileNotFoundError(f"ground-truth file not found: {path}")
        data = load_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: an LVIS ground-truth file must hold a JSON object")
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "GroundTruth":
        for key in ("images", "annotations", "categories"):
            if key not in d:
                raise KeyError(f"{source}: ground truth lacks the '{key}' list")
        cats = sorted(d["categories"], key=lambda c: c["id"])
        cat_ids = np.array([c["id"] for c in cats], dtype=np.int64)
        if len(np.unique(cat_ids)) != len(cat_ids):
            raise ValueError(f"{source}: duplicate category ids")
        for c in cats:
            if c.get("frequency") not in FREQ_LBL:
                raise ValueError(f"{source}: category id {c['id']} has frequency "
                                 f"{c.get('frequency')!r}; expected one of 'r', 'c', 'f'")
        imgs = sorted(d["images"], key=lambda im: im["id"])
        image_ids = np.array([im["id"] for im in imgs], dtype=np.int64)
        if len(np.unique(image_ids)) != len(image_ids):
            raise ValueError(f"{source}: duplicate image ids")
        k_num = len(cats)
        cat_pos = {int(c): k for k, c in enumerate(cat_ids)}
        neg, nel = [], []
        for i, im in enumerate(imgs):
            for key, out in (("neg_category_ids", neg), ("not_exhaustive_category_ids", nel)):
                if key not in im:
                    raise KeyError(f"{source}: image id {im['id']} lacks '{key}' "
                                   "(required by the federated LVIS protocol)")
                out.extend(i * k_num + cat_pos[c] for c in im[key] if c in cat_pos)
        out = cls(
            source=source,
            image_ids=image_ids,
            image_hw=np.array([[im.get("height", 0), im.get("width", 0)] for im in imgs],
                              dtype=np.int64).reshape(-1, 2),
            cat_ids=cat_ids,
            cat_names=[str(c.get("name", c["id"])) for c in cats],
            cat_freq=np.array([c["frequency"] for c in cats], dtype="<U1"),
            cat_image_count=np.array([c.get("image_count", 0) for c in cats], dtype=np.int64),
            cat_instance_count=np.array([c.get("instance_count", 0) for c in cats], dtype=np.int64),
            neg_keys=np.unique(np.array(neg, dtype=np.int64)),
            nel_keys=np.unique(np.array(nel, dtype=np.int64)),
            ann_id=np.zeros(0, np.int64), ann_img=np.zeros(0, np.int64), ann_cat=np.zeros(0, np.int64),
            ann_area=np.zeros(0), ann_bbox=np.zeros((0, 4)), ann_ignore=np.zeros(0, bool), ann_segm=[],
        )
        anns = d["annotations"]
        if anns:
            for j, a in enumerate(anns):
                for key in ("id", "image_id", "category_id", "area"):
                    if key not in a:
                        raise KeyError(f"{source}: annotations[{j}] (id={a.get('id')}) lacks '{key}'")
            img = out.image_index(np.array([a["image_id"] for a in anns], dtype=np.int64))
            cat = out.cat_index(np.array([a["category_id"] for a in anns], dtype=np.int64))
            area = np.array([a["area"] for a in anns], dtype=np.float64)
            keep = np.flatnonzero((img >= 0) & (cat >= 0) & (area > 0) & (area < np.inf))
            kept = [anns[j] for j in keep.tolist()]
            out.ann_id = np.array([a["id"] for a in kept], dtype=np.int64)
            out.ann_img, out.ann_cat, out.ann_area = img[keep], cat[keep], area[keep]
            out.ann_bbox = np.array([a.get("bbox", (np.nan,) * 4) for a in kept],
                                    dtype=np.float64).reshape(-1, 4)
            out.ann_ignore = np.array([bool(a.get("ignore", 0)) for a in kept], dtype=bool)
            out.ann_segm = [a.get("segmentation") for a in kept]
        return out
