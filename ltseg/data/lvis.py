"""LVIS v0.5 / v1 and COCO-style (COCO-LT) instance-segmentation datasets.

The JSON is parsed once and converted to flat numpy arrays (CSR layout: per-image offsets into
per-annotation arrays, per-annotation offsets into polygon parts, one float32 coordinate
buffer, one byte buffer for compressed RLEs). No Python object per annotation survives
loading, so forked DataLoader workers share the pages instead of copying them on read.

Crowd annotations are ignored. Degenerate boxes (w or h <= 1 px), polygon parts with fewer
than 3 points and annotations left without any polygon are dropped, counted in
``dataset.skipped`` and logged once per file.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image, ImageOps

from ltseg.data.category_stats import CategoryStats
from ltseg.data.masks import MIN_POLYGON_COORDS, BitMasks, PolygonMasks
from ltseg.data.transforms import DetectionTransform

logger = logging.getLogger(__name__)

MIN_BOX_SIDE = 1.0  # boxes with w or h <= this (pixels) are degenerate
SKIP_MESSAGES = {
    "degenerate_box": f"annotations with a degenerate box (w or h <= {MIN_BOX_SIDE:g} px)",
    "short_polygon": "polygon parts with fewer than 3 points (or an odd number of coordinates)",
    "no_segmentation": "annotations without a usable segmentation",
}


class CorruptImageError(OSError):
    """An image file exists but cannot be decoded (or disagrees with its annotation).

    The trainer may catch it, count it and skip the sample.
    """

    def __init__(self, file: str, image_id: int | None = None, reason: str = ""):
        self.file, self.image_id = str(file), image_id
        if image_id is None:  # rebuilt from a message (DataLoader worker re-raise)
            super().__init__(str(file))
        else:
            super().__init__(f"{file}: cannot read image id {image_id}" + (f" ({reason})" if reason else ""))


def sample_seed(seed: int, *keys: int) -> int:
    """Mix a base seed and integer keys (rank, stream position, ...) into one 63-bit seed."""
    x = int(seed) & 0xFFFFFFFFFFFFFFFF
    for k in keys:
        x = (x ^ (int(k) + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def _csr(lists: list[list], dtype) -> tuple[np.ndarray, np.ndarray]:
    """List of lists -> (flat values, offsets ``(len + 1,)``)."""
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(v) for v in lists])
    flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=dtype, count=int(offsets[-1]))
    return flat, offsets


def _image_file_name(img: dict, source: str) -> str:
    """Image path relative to ``image_root``.

    ``file_name`` when present (COCO, COCO-LT, LVIS v0.5, the synthetic set), COCO-2014 names
    (``COCO_val2014_000000xxxxxx.jpg``) cut to the 2017 name; otherwise (LVIS v1) ``coco_url``'s
    ``<split folder>/<file>``, so v1's ``image_root`` is the COCO root (detectron2's rule).
    """
    name = img.get("file_name")
    if name:
        return name[-16:] if name.startswith("COCO_") else name
    url = img.get("coco_url")
    if url:
        return "/".join(url.split("/")[-2:])
    raise ValueError(f"{source}: image {img.get('id')} has neither 'file_name' nor 'coco_url'")


def load_annotation_json(path: str | Path) -> dict:
    """Read and shape-check an LVIS/COCO annotation file (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: annotation file is empty")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: annotation file is empty (expected an object with images, "
                         "annotations, categories)")
    if "categories" not in data:
        raise ValueError(f"{path}: no 'categories' list in annotation file")
    if not data.get("images"):
        raise ValueError(f"{path}: no images in annotation file")
    return data


class LVISDataset(torch.utils.data.Dataset):
    """LVIS-format dataset; samples follow docs/interfaces.md ("A training sample").

    Args:
        ann_file: LVIS v0.5/v1 or COCO-style JSON.
        image_root: folder the images' file names are relative to.
        stats: training ``CategoryStats`` (fixes the contiguous indices); ``None`` = compute from
            this file (use only for the training split).
        transform: ``DetectionTransform``; ``None`` = normalise only.
        seed: base seed of the per-sample transform generator when indexed by a plain int.

    ``dataset[i]`` or ``dataset[(i, seed)]``: the second form passes the transform's seed
    explicitly (the train loader does this so scale jitter and flips are reproducible).
    """

    def __init__(self, ann_file: str | Path, image_root: str | Path, stats: CategoryStats | None = None,
                 transform: DetectionTransform | None = None, seed: int = 0):
        self.ann_file = str(ann_file)
        self.image_root = str(image_root)
        self.transform = transform if transform is not None else DetectionTransform()
        self.seed = int(seed)
        data = load_annotation_json(ann_file)
        self.stats = stats if stats is not None else CategoryStats.from_lvis_dict(data, "train", self.ann_file)
        self._load(data)

    # ------------------------------------------------------------------ loading
    def _load(self, data: dict) -> None:
        src = self.ann_file
        cat_index = {cid: k for k, cid in enumerate(self.stats.category_ids)}
        unknown = sorted({int(c["id"]) for c in data["categories"]} - set(cat_index))
        if unknown:
            raise ValueError(f"{src}: categories {unknown[:10]} are not in the training categories "
                             f"({self.stats.num_classes} classes)")
        images = data["images"]
        img_index = {}
        for i, img in enumerate(images):
            missing = [k for k in ("id", "height", "width") if k not in img]
            if missing:
                raise ValueError(f"{src}: image {img.get('id', f'#{i}')} has no {missing}")
            if img["id"] in img_index:
                raise ValueError(f"{src}: duplicate image id {img['id']}")
            img_index[img["id"]] = i
        self.image_ids = np.array([img["id"] for img in images], dtype=np.int64)
        self._hw = np.array([[img["height"], img["width"]] for img in images], dtype=np.int64)
        names = [_image_file_name(img, src).encode() for img in images]
        self._names = np.frombuffer(b"".join(names), dtype=np.uint8).copy()
        self._name_off = np.r_[0, np.cumsum([len(n) for n in names])].astype(np.int64)

        def contiguous(img: dict, key: str) -> list[int]:
            ids = img.get(key, [])
            bad = [c for c in ids if c not in cat_index]
            if bad:
                raise ValueError(f"{src}: image {img['id']} lists unknown category ids {bad[:10]} in '{key}'")
            return sorted(cat_index[c] for c in ids)
        self._neg, self._neg_off = _csr([contiguous(im, "neg_category_ids") for im in images], np.int64)
        self._nex, self._nex_off = _csr([contiguous(im, "not_exhaustive_category_ids") for im in images], np.int64)

        per_image: list[list[int]] = [[] for _ in images]
        anns = data.get("annotations", [])
        self.skipped = {"crowd": 0, "degenerate_box": 0, "short_polygon": 0, "no_segmentation": 0}
        skipped_ids: dict[str, list] = {k: [] for k in self.skipped}

        def skip(kind: str, ann_id) -> None:
            self.skipped[kind] += 1
            skipped_ids[kind].append(ann_id)

        boxes, labels, parts, rles = [], [], [], []
        for ann in anns:
            a_id = ann.get("id")
            if ann.get("image_id") not in img_index:
                raise ValueError(f"{src}: annotation {a_id} has unknown image_id {ann.get('image_id')}")
            if ann.get("category_id") not in cat_index:
                raise ValueError(f"{src}: annotation {a_id} has unknown category_id {ann.get('category_id')}")
            if ann.get("iscrowd", 0):
                skip("crowd", a_id)
                continue
            if len(ann.get("bbox") or ()) != 4:
                raise ValueError(f"{src}: annotation {a_id} has no [x, y, w, h] 'bbox'")
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= MIN_BOX_SIDE or h <= MIN_BOX_SIDE:
                skip("degenerate_box", a_id)
                continue
            segm = ann.get("segmentation")
            if isinstance(segm, list):
                ok = [p for p in segm if len(p) >= MIN_POLYGON_COORDS and len(p) % 2 == 0]
                for _ in range(len(segm) - len(ok)):
                    skip("short_polygon", a_id)
                if not ok:
                    skip("no_segmentation", a_id)
                    continue
                parts.append(ok)
                rles.append(None)
            elif isinstance(segm, dict):
                hw = [int(v) for v in self._hw[img_index[ann["image_id"]]]]
                if [int(v) for v in segm.get("size", hw)] != hw:
                    raise ValueError(f"{src}: annotation {a_id} has RLE size {segm.get('size')}, "
                                     f"but image {ann['image_id']} is {hw}")
                rle = mask_util.frPyObjects(segm, *hw) if isinstance(segm["counts"], list) else segm
                counts = rle["counts"]
                rles.append(counts.encode() if isinstance(counts, str) else bytes(counts))
                parts.append([])
            else:
                skip("no_segmentation", a_id)
                continue
            per_image[img_index[ann["image_id"]]].append(len(boxes))
            boxes.append((x, y, x + w, y + h))
            labels.append(cat_index[ann["category_id"]])

        order, self._ann_off = _csr(per_image, np.int64)          # annotations grouped by image
        self._boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[order]
        self._labels = np.asarray(labels, dtype=np.int64)[order]
        parts = [parts[k] for k in order]
        rles = [rles[k] for k in order]
        self._part_off = np.r_[0, np.cumsum([len(p) for p in parts])].astype(np.int64)
        self._coords, self._coord_off = _csr(list(itertools.chain.from_iterable(parts)), np.float32)
        self._is_rle = np.array([r is not None for r in rles], dtype=bool)
        rle_bytes = [r or b"" for r in rles]
        self._rle = np.frombuffer(b"".join(rle_bytes), dtype=np.uint8).copy()
        self._rle_off = np.r_[0, np.cumsum([len(r) for r in rle_bytes])].astype(np.int64)
        for kind, what in SKIP_MESSAGES.items():
            if self.skipped[kind]:
                logger.warning("%s: dropped %d %s, e.g. in annotation ids %s", src, self.skipped[kind], what,
                               skipped_ids[kind][:5])

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def category_ids(self) -> tuple[int, ...]:
        return self.stats.category_ids

    def file_name(self, i: int) -> str:
        return bytes(self._names[self._name_off[i]: self._name_off[i + 1]]).decode()

    def image_labels(self, i: int) -> np.ndarray:
        """Sorted unique contiguous labels annotated in image ``i`` (``(k,)`` int64)."""
        return np.unique(self._labels[self._ann_off[i]: self._ann_off[i + 1]])

    def aspect_ratios(self) -> np.ndarray:
        """Width / height per image, float64 ``(N,)``."""
        return self._hw[:, 1] / self._hw[:, 0]

    def num_instances(self, i: int) -> int:
        return int(self._ann_off[i + 1] - self._ann_off[i])

    # ------------------------------------------------------------------ samples
    def load_image(self, i: int) -> torch.Tensor:
        """RGB ``(3, H, W)`` uint8; ``FileNotFoundError`` / ``CorruptImageError`` name file and id."""
        path = os.path.join(self.image_root, self.file_name(i))
        image_id = int(self.image_ids[i])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: image file for image id {image_id} not found "
                                    f"(annotation file {self.ann_file})")
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                arr = np.asarray(im, dtype=np.uint8)
        except Exception as e:  # PIL raises many types for truncated / non-image files
            raise CorruptImageError(path, image_id, f"{type(e).__name__}: {e}") from e
        h, w = (int(v) for v in self._hw[i])
        if arr.shape[:2] != (h, w):
            raise CorruptImageError(path, image_id, f"decoded size {arr.shape[:2]} differs from the "
                                    f"annotation's {(h, w)}")
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def raw_target(self, i: int) -> dict:
        """Boxes (xyxy, original pixels), labels and masks of image ``i`` before transforms."""
        a0, a1 = int(self._ann_off[i]), int(self._ann_off[i + 1])
        h, w = (int(v) for v in self._hw[i])
        polys = []
        for a in range(a0, a1):
            p0, p1 = self._part_off[a], self._part_off[a + 1]
            polys.append([self._coords[self._coord_off[p]: self._coord_off[p + 1]].astype(np.float64)
                          for p in range(p0, p1)])
        masks = PolygonMasks._wrap(polys, h, w)
        if self._is_rle[a0:a1].any():      # any RLE instance: the whole image goes dense
            dense = torch.zeros(a1 - a0, h, w, dtype=torch.bool)
            for k, a in enumerate(range(a0, a1)):
                if self._is_rle[a]:
                    rle = {"size": [h, w], "counts": bytes(self._rle[self._rle_off[a]: self._rle_off[a + 1]])}
                    dense[k] = torch.from_numpy(mask_util.decode(rle).astype(bool))
                else:
                    dense[k] = PolygonMasks._wrap([polys[k]], h, w).to_bitmasks().tensor[0]
            masks = BitMasks(dense)
        return {
            "boxes": torch.from_numpy(self._boxes[a0:a1].copy()),
            "labels": torch.from_numpy(self._labels[a0:a1].copy()),
            "masks": masks,
        }

    def __getitem__(self, key) -> dict:
        i, seed = key if isinstance(key, tuple) else (key, sample_seed(self.seed, key))
        i = int(i)
        image = self.load_image(i)
        target = self.raw_target(i)
        h, w = image.shape[-2:]
        generator = torch.Generator().manual_seed(int(seed)) if self.transform.is_random else None
        image, target = self.transform(image, target, generator)
        n0, n1 = self._neg_off[i], self._neg_off[i + 1]
        e0, e1 = self._nex_off[i], self._nex_off[i + 1]
        return {
            "image": image,
            **target,
            "image_id": int(self.image_ids[i]),
            "orig_size": (int(h), int(w)),
            "image_size": (int(image.shape[-2]), int(image.shape[-1])),
            "pos_category_ids": torch.from_numpy(self.image_labels(i)),
            "neg_category_ids": torch.from_numpy(self._neg[n0:n1].copy()),
            "not_exhaustive_category_ids": torch.from_numpy(self._nex[e0:e1].copy()),
        }

    def __repr__(self) -> str:
        return (f"LVISDataset({self.ann_file!r}, images={len(self)}, instances={len(self._labels)}, "
                f"classes={self.stats.num_classes})")
