"""Exact mask -> polygon tracing used by the synthetic dataset."""
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from scipy import ndimage

from ltseg.data.synthetic_polygons import mask_to_polygons

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def _rasterise(polygons, h, w):
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)


def _signed_area(poly):
    x, y = np.asarray(poly[0::2], float), np.asarray(poly[1::2], float)
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_round_trip_exactly_through_pycocotools(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(2, 30, 2))
        mask = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        if seed % 2:
            mask = ndimage.binary_opening(mask)
        ox, oy = (int(v) for v in rng.integers(0, 4, 2))
        polygons = mask_to_polygons(mask, (ox, oy))
        full = np.zeros((h + oy, w + ox), dtype=bool)
        full[oy:, ox:] = mask
        if not mask.any():
            assert polygons == []
            continue
        assert np.array_equal(_rasterise(polygons, h + oy, w + ox), full)
        for poly in polygons:
            assert len(poly) >= 8 and _signed_area(poly) > 0  # clockwise on screen, no holes


def test_ring_with_hole_is_cut_into_hole_free_pieces():
    y, x = np.mgrid[:40, :40]
    r2 = (x - 19.5) ** 2 + (y - 19.5) ** 2
    ring = (r2 < 18 ** 2) & (r2 > 9 ** 2)
    polygons = mask_to_polygons(ring)
    assert len(polygons) >= 2
    assert np.array_equal(_rasterise(polygons, 40, 40), ring)
    assert sum(_signed_area(p) for p in polygons) == ring.sum()


def test_diagonal_neighbours_become_separate_polygons():
    mask = np.array([[1, 0], [0, 1]], dtype=bool)
    polygons = mask_to_polygons(mask)
    assert sorted(polygons) == [[0, 0, 1, 0, 1, 1, 0, 1], [1, 1, 2, 1, 2, 2, 1, 2]]
