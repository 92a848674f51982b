"""Instance masks that follow the image through transforms and give per-RoI mask targets.

Two implementations of one interface (docs/interfaces.md):

- ``PolygonMasks``: per instance a list of flat float64 ``[x0, y0, x1, y1, ...]`` arrays in
  pixel coordinates of an ``height x width`` image. Nothing is rasterised until a mask target
  is asked for: ``crop_and_resize`` rasterises each sampled RoI's polygon directly at ``M x M``
  (detectron2's ``rasterize_polygons_within_box``), so training never holds full-image masks.
- ``BitMasks``: a ``(N, H, W)`` bool tensor (RLE segmentations, or anything already dense).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

MIN_POLYGON_COORDS = 6  # a polygon needs at least 3 points


def _index_list(idx, n: int) -> list[int]:
    """Any index (int, slice, list, bool/long tensor or array) -> list of positions in ``0..n-1``."""
    if isinstance(idx, (int, np.integer)):
        return [int(range(n)[idx])]
    if isinstance(idx, slice):
        return list(range(n))[idx]
    arr = idx.cpu().numpy() if isinstance(idx, Tensor) else np.asarray(idx)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"boolean index of shape {arr.shape} for {n} masks")
        return np.nonzero(arr)[0].tolist()
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (arr.max() >= n or arr.min() < -n):
        raise IndexError(f"mask index out of range for {n} masks")
    return (arr % max(n, 1)).tolist()


def _rasterize(polygons: list[np.ndarray], owner: np.ndarray, num: int, h: int, w: int) -> np.ndarray:
    """Union per owner of polygon parts -> ``(num, h, w)`` bool. ``owner`` is sorted."""
    out = np.zeros((num, h, w), dtype=bool)
    if not polygons:
        return out
    rles = mask_util.frPyObjects([p.tolist() for p in polygons], h, w)
    parts = mask_util.decode(rles).astype(bool)  # (h, w, P)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    out[owner[starts]] = np.logical_or.reduceat(parts, starts, axis=2).transpose(2, 0, 1)
    return out


class InstanceMasks:
    """Common interface; see the module docstring."""

    height: int
    width: int

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, idx) -> "InstanceMasks":
        raise NotImplementedError

    def flip_horizontal(self) -> "InstanceMasks":
        raise NotImplementedError

    def resize(self, new_h: int, new_w: int) -> "InstanceMasks":
        raise NotImplementedError

    def crop_and_resize(self, boxes: Tensor, indices: Tensor, size: int) -> Tensor:
        raise NotImplementedError

    def to_bitmasks(self) -> "BitMasks":
        raise NotImplementedError

    def areas(self) -> Tensor:
        raise NotImplementedError

    def bounding_boxes(self) -> Tensor:
        raise NotImplementedError

    def to(self, device) -> "InstanceMasks":
        return self


class PolygonMasks(InstanceMasks):
    """Polygons per instance (each instance: one or more parts), rasterised lazily."""

    def __init__(self, polygons: Sequence[Sequence], height: int, width: int):
        self.polygons: list[list[np.ndarray]] = []
        for i, parts in enumerate(polygons):
            arrs = [np.asarray(p, dtype=np.float64).reshape(-1) for p in parts]
            if not arrs or any(a.size < MIN_POLYGON_COORDS or a.size % 2 for a in arrs):
                raise ValueError(
                    f"PolygonMasks: instance {i} needs >= 1 polygon of >= 3 (x, y) points, "
                    f"got part sizes {[a.size for a in arrs]}"
                )
            self.polygons.append(arrs)
        self.height, self.width = int(height), int(width)

    def __len__(self) -> int:
        return len(self.polygons)

    def __repr__(self) -> str:
        return f"PolygonMasks(num={len(self)}, height={self.height}, width={self.width})"

    @classmethod
    def _wrap(cls, polygons: list[list[np.ndarray]], height: int, width: int) -> "PolygonMasks":
        """Construct from already validated float64 parts (no copy, no checks)."""
        out = cls.__new__(cls)
        out.polygons, out.height, out.width = polygons, int(height), int(width)
        return out

    def __getitem__(self, idx) -> "PolygonMasks":
        return self._wrap([self.polygons[i] for i in _index_list(idx, len(self))], self.height, self.width)

    def _map(self, fn) -> "PolygonMasks":
        return self._wrap([[fn(p) for p in parts] for parts in self.polygons], self.height, self.width)

    def flip_horizontal(self) -> "PolygonMasks":
        def flip(p: np.ndarray) -> np.ndarray:
            q = p.copy()
            q[0::2] = self.width - q[0::2]
            return q
        return self._map(flip)

    def resize(self, new_h: int, new_w: int) -> "PolygonMasks":
        scale = np.array([new_w / self.width, new_h / self.height])

        def scaled(p: np.ndarray) -> np.ndarray:
            return (p.reshape(-1, 2) * scale).reshape(-1)
        return self._wrap([[scaled(p) for p in parts] for parts in self.polygons], new_h, new_w)

    def _flat(self, which: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray]:
        """All parts of instances ``which`` in order, with the position in ``which`` owning each."""
        parts, owner = [], []
        for j, i in enumerate(which):
            parts.extend(self.polygons[i])
            owner.extend([j] * len(self.polygons[i]))
        return parts, np.asarray(owner, dtype=np.int64)

    def crop_and_resize(self, boxes: Tensor, indices: Tensor, size: int) -> Tensor:
        """Targets ``(R, size, size)`` float32 in {0, 1}: instance ``indices[r]`` inside ``boxes[r]``.

        Each polygon is shifted to its box's corner and scaled to ``size x size`` before
        rasterisation (pycocotools), so only the sampled RoIs are ever rasterised.
        """
        r = boxes.shape[0]
        if r == 0:
            return torch.zeros(0, size, size, dtype=torch.float32, device=boxes.device)
        b = boxes.detach().to("cpu", torch.float64).numpy()
        parts, owner = self._flat(indices.cpu().tolist())
        lo = b[owner, :2]                                                     # (P, 2) x0, y0
        scale = size / np.maximum(b[owner, 2:] - b[owner, :2], 0.1)          # (P, 2) per axis
        shifted = [((p.reshape(-1, 2) - lo[k]) * scale[k]).reshape(-1) for k, p in enumerate(parts)]
        masks = _rasterize(shifted, owner, r, size, size)
        return torch.from_numpy(masks).to(device=boxes.device, dtype=torch.float32)

    def to_bitmasks(self) -> "BitMasks":
        parts, owner = self._flat(range(len(self)))
        return BitMasks(torch.from_numpy(_rasterize(parts, owner, len(self), self.height, self.width)))

    def areas(self) -> Tensor:
        """Polygon area (shoelace, parts summed), float64 ``(N,)`` in square pixels."""
        def shoelace(p: np.ndarray) -> float:
            x, y = p[0::2], p[1::2]
            return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
        return torch.tensor([sum(shoelace(p) for p in parts) for parts in self.polygons], dtype=torch.float64)

    def bounding_boxes(self) -> Tensor:
        """Tight xyxy box around all parts, float32 ``(N, 4)``."""
        out = torch.zeros(len(self), 4, dtype=torch.float32)
        for i, parts in enumerate(self.polygons):
            xy = np.concatenate(parts).reshape(-1, 2)
            out[i] = torch.from_numpy(np.r_[xy.min(0), xy.max(0)].astype(np.float32))
        return out


class BitMasks(InstanceMasks):
    """Dense masks, ``tensor (N, H, W)`` bool."""

    def __init__(self, tensor: Tensor):
        tensor = torch.as_tensor(tensor)
        if tensor.dim() != 3:
            raise ValueError(f"BitMasks: expected (N, H, W), got shape {tuple(tensor.shape)}")
        self.tensor = tensor.bool()
        self.height, self.width = int(tensor.shape[1]), int(tensor.shape[2])

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __repr__(self) -> str:
        return f"BitMasks(num={len(self)}, height={self.height}, width={self.width})"

    def __getitem__(self, idx) -> "BitMasks":
        pos = torch.tensor(_index_list(idx, len(self)), dtype=torch.long, device=self.tensor.device)
        return BitMasks(self.tensor[pos])

    def to(self, device) -> "BitMasks":
        return BitMasks(self.tensor.to(device))

    def flip_horizontal(self) -> "BitMasks":
        return BitMasks(self.tensor.flip(-1))

    def resize(self, new_h: int, new_w: int) -> "BitMasks":
        """Nearest-neighbour resize to ``(new_h, new_w)``."""
        if len(self) == 0:
            return BitMasks(self.tensor.new_zeros(0, new_h, new_w))
        x = F.interpolate(self.tensor[:, None].to(torch.uint8), size=(new_h, new_w), mode="nearest")
        return BitMasks(x[:, 0].bool())

    def crop_and_resize(self, boxes: Tensor, indices: Tensor, size: int) -> Tensor:
        """Targets ``(R, size, size)`` float32 in {0, 1} by RoIAlign (aligned) and a 0.5 threshold."""
        r = boxes.shape[0]
        if r == 0:
            return torch.zeros(0, size, size, dtype=torch.float32, device=boxes.device)
        masks = self.tensor.to(boxes.device)[:, None].float()              # (N, 1, H, W), no per-RoI copy
        rois = torch.cat([indices.to(boxes.device, torch.float32)[:, None], boxes.float()], dim=1)
        out = roi_align(masks, rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
        return (out[:, 0] >= 0.5).float()

    def to_bitmasks(self) -> "BitMasks":
        return self

    def areas(self) -> Tensor:
        return self.tensor.flatten(1).sum(1).double()

    def bounding_boxes(self) -> Tensor:
        """Tight xyxy box (``x1 = last column + 1``), zeros for empty masks, float32 ``(N, 4)``."""
        out = torch.zeros(len(self), 4, dtype=torch.float32, device=self.tensor.device)
        if len(self) == 0:
            return out
        cols, rows = self.tensor.any(1), self.tensor.any(2)                  # (N, W), (N, H)
        nonempty = cols.any(1)

        def first_last(v: Tensor) -> tuple[Tensor, Tensor]:
            idx = torch.arange(v.shape[1], device=v.device).expand_as(v)
            first = torch.where(v, idx, v.shape[1]).amin(1)
            last = torch.where(v, idx, -1).amax(1) + 1
            return first.float(), last.float()
        x0, x1 = first_last(cols)
        y0, y1 = first_last(rows)
        box = torch.stack([x0, y0, x1, y1], dim=1)
        out[nonempty] = box[nonempty]
        return out
