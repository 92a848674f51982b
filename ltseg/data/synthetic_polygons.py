"""Exact binary mask -> COCO/LVIS polygons, for the synthetic dataset.

The polygons run along pixel edges (integer corner coordinates, pixel ``(r, c)`` covers
``[c, c+1] x [r, r+1]``), so ``pycocotools.mask.frPyObjects`` rasterises them back to exactly
the input mask: the annotation's mask, area and box all describe the same pixels.

COCO polygons cannot hold holes (several polygons are unioned), so a mask with holes (a ring,
or an object with a smaller one on top) is first cut along pixel columns until no piece has a
hole; the pieces' polygons union back to the mask. Foreground is 4-connected: pixels touching
only at a corner go to separate polygons.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)


def mask_to_polygons(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[list[int]]:
    """``mask (h, w) bool`` -> list of flat ``[x0, y0, x1, y1, ...]`` int polygons.

    ``offset = (x, y)`` is added to every vertex (the mask's top-left corner in the image).
    Each polygon is clockwise on screen (y down), has >= 4 vertices and no repeated vertex run.
    """
    mask = np.asarray(mask, dtype=bool)
    polygons: list[list[int]] = []
    for piece, col0 in _hole_free_pieces(mask, 0):
        for loop in _trace(piece):
            xy = np.asarray(loop, dtype=np.int64)
            xy[:, 0] += col0 + offset[0]
            xy[:, 1] += offset[1]
            polygons.append(xy.reshape(-1).tolist())
    return polygons


def _hole_free_pieces(mask: np.ndarray, col0: int) -> list[tuple[np.ndarray, int]]:
    """Cut ``mask`` at pixel columns until no piece has a hole; pieces keep their column offset."""
    if not mask.any():
        return []
    padded = np.pad(~mask, 1, constant_values=True)
    labels, _ = ndimage.label(padded, structure=_EIGHT)  # background is 8-connected
    holes = (labels > 0) & (labels != labels[0, 0])
    if not holes.any():
        return [(mask, col0)]
    cut = int(np.nonzero(holes.any(axis=0))[0][0]) - 1  # leftmost hole column, unpadded
    left, right = mask[:, :cut], mask[:, cut:]
    return _hole_free_pieces(left, col0) + _hole_free_pieces(right, col0 + cut)


def _runs(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of True along axis 1: (line index, first, last+1) arrays."""
    padded = np.zeros((edges.shape[0], edges.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = edges
    d = padded[:, 1:] - padded[:, :-1]
    line, start = np.nonzero(d == 1)
    _, stop = np.nonzero(d == -1)
    return line, start, stop


def _trace(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Clockwise corner loops of a hole-free mask; one loop per 4-connected component."""
    m = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=bool)
    m[1:-1, 1:-1] = mask  # corner (x, y) of m maps to (x - 1, y - 1) of mask
    segments: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}

    def add(x0, y0, x1, y1):
        for a, b, c, d in zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist()):
            segments.setdefault((a, b), []).append((a, b, c, d))

    top = m[1:] & ~m[:-1]      # (H-1, W): corner row y = i + 1, pixel column c, heading +x
    bottom = m[:-1] & ~m[1:]   # heading -x
    y, s, e = _runs(top)
    add(s, y + 1, e, y + 1)
    y, s, e = _runs(bottom)
    add(e, y + 1, s, y + 1)
    left = (m[:, 1:] & ~m[:, :-1]).T    # corner column x = j + 1, heading -y
    right = (m[:, :-1] & ~m[:, 1:]).T   # heading +y
    x, s, e = _runs(left)
    add(x + 1, e, x + 1, s)
    x, s, e = _runs(right)
    add(x + 1, s, x + 1, e)

    loops = []
    while segments:
        start = next(v for v, out in segments.items() if len(out) == 1)  # never a saddle
        seg = _pop(segments, start, None)
        loop = []
        while True:
            loop.append((seg[0] - 1, seg[1] - 1))
            end = (seg[2], seg[3])
            if end == start:
                break
            seg = _pop(segments, end, (seg[2] - seg[0], seg[3] - seg[1]))
        loops.append(loop)
    return loops


def _pop(segments: dict, vertex: tuple[int, int], heading: tuple[int, int] | None) -> tuple:
    """Take the segment leaving ``vertex``; at a saddle turn right (keeps 4-connectivity)."""
    out = segments[vertex]
    if len(out) == 1 or heading is None:
        seg = out.pop(0)
    else:
        right = (-_sign(heading[1]), _sign(heading[0]))
        k = next(i for i, o in enumerate(out)
                 if (_sign(o[2] - o[0]), _sign(o[3] - o[1])) == right)
        seg = out.pop(k)
    if not out:
        del segments[vertex]
    return seg


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)
