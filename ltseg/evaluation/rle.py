"""Compressed-RLE masks packed in byte buffers, and their areas and IoU.

Masks stay as the COCO ``counts`` strings they arrive as; :func:`measure` decodes each one
once, in the compiled kernel ``_rle.c`` (pycocotools' arithmetic, so the same numbers), or
through pycocotools itself where the kernel was not built (no C compiler at install time).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_utils

try:
    from . import _rle
except ImportError:                      # built without a C compiler: pycocotools fallback
    _rle = None

BACKENDS = ("auto", "native", "pycocotools")


class MalformedMask(ValueError):
    """A mask whose runs do not cover ``height * width`` pixels: ``(which, row)``, ``which`` in
    ``{"detection", "gt"}``, ``row`` indexing the :class:`PackedMasks` given to :func:`measure`."""

    def __init__(self, which: str, row: int):
        super().__init__(which, row)
        self.which, self.row = which, row


@dataclass
class PackedMasks:
    """``N`` masks: row ``n``'s counts string is ``buffers[buf[n]][start[n]:end[n]]`` (ASCII),
    its size ``hw[n]`` = (height, width). Arrays are int64."""

    buffers: tuple
    buf: np.ndarray      # (N,)
    start: np.ndarray    # (N,)
    end: np.ndarray      # (N,)
    hw: np.ndarray       # (N, 2)

    def __len__(self) -> int:
        return len(self.buf)

    def take(self, rows) -> "PackedMasks":
        """The masks ``rows`` (an index array or a slice)."""
        return PackedMasks(self.buffers, self.buf[rows], self.start[rows], self.end[rows],
                           np.ascontiguousarray(self.hw[rows]))

    def dicts(self) -> list:
        """pycocotools RLE dicts ``{"size": [h, w], "counts": bytes}``."""
        bufs = self.buffers
        return [{"size": [h, w], "counts": bytes(bufs[b][s:e])} for b, s, e, h, w in zip(
            self.buf.tolist(), self.start.tolist(), self.end.tolist(), self.hw[:, 0].tolist(),
            self.hw[:, 1].tolist())]

    @classmethod
    def from_dicts(cls, rles: list) -> "PackedMasks":
        """Pack compressed-RLE dicts (``counts`` bytes or str)."""
        counts = [c if isinstance(c, bytes) else c.encode("ascii") for c in (r["counts"] for r in rles)]
        lens = np.fromiter(map(len, counts), np.int64, len(counts))
        end = np.cumsum(lens)
        hw = np.array([r["size"] for r in rles], dtype=np.int64).reshape(-1, 2)
        return cls((b"".join(counts),), np.zeros(len(rles), np.int64), end - lens, end, hw)


def rle_area(rles: list) -> np.ndarray:
    """Pixel counts of pycocotools RLE dicts, float64 ``(n,)``.

    Batched by 255: pycocotools' ``area`` builds a uint8 array of the batch size and overflows
    under NumPy 2 for larger batches.
    """
    return np.concatenate([mask_utils.area(rles[i:i + 255]).astype(np.float64)
                           for i in range(0, len(rles), 255)] or [np.zeros(0)])


def use_native(backend: str = "auto") -> bool:
    """Whether :func:`measure` runs the compiled kernel for ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"mask backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "native" and _rle is None:
        raise ImportError("the compiled mask kernel ltseg.evaluation._rle is not built: reinstall ltseg "
                          "with a C compiler available (pip install -e .)")
    return _rle is not None and backend != "pycocotools"


def measure(dt: PackedMasks, gt: PackedMasks, gt_first: np.ndarray, gt_count: np.ndarray,
            backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Areas of the ``N`` detection masks and their IoU with GT masks, as pycocotools computes them.

    Detection ``d`` meets GT rows ``gt_first[d] : gt_first[d] + gt_count[d]``; rows meeting the
    same GT rows must be consecutive. Returns ``area (N,)`` float64 and ``iou (sum(gt_count),)``
    float64, pairs in row order (-1 where the two masks' sizes differ and their boxes overlap,
    as pycocotools' ``rleIou``). The kernel raises :class:`MalformedMask` on a mask whose runs do
    not cover its size; pycocotools does not check.
    """
    n = len(dt)
    gt_first, gt_count = np.asarray(gt_first, np.int64), np.asarray(gt_count, np.int64)
    if use_native(backend):
        area, iou = np.empty(n), np.empty(int(gt_count.sum()))
        bad = _rle.measure(tuple(dt.buffers), dt.buf, dt.start, dt.end, dt.hw, tuple(gt.buffers), gt.buf,
                           gt.start, gt.end, gt.hw, gt_first, gt_count, area, iou)
        if bad >= 0:
            raise MalformedMask("detection", bad) if bad < n else MalformedMask("gt", bad - n)
        return area, iou
    rles, gts = dt.dicts(), gt.dicts()
    blocks = []
    lo = np.flatnonzero(np.r_[True, (gt_first[1:] != gt_first[:-1]) | (gt_count[1:] != gt_count[:-1])])
    for a, b in zip(lo.tolist(), np.r_[lo[1:], n].tolist()):
        s, c = int(gt_first[a]), int(gt_count[a])
        if c:
            blocks.append(np.asarray(mask_utils.iou(rles[a:b], gts[s:s + c], [0] * c), np.float64).reshape(-1))
    return rle_area(rles), (np.concatenate(blocks) if blocks else np.zeros(0))
