import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from ltseg.data.masks import BitMasks, PolygonMasks

H, W = 48, 64
SQUARE = [10.0, 8.0, 30.0, 8.0, 30.0, 28.0, 10.0, 28.0]           # 20 x 20 at (10, 8)
TRIANGLE = [40.0, 5.0, 60.0, 5.0, 50.0, 40.0]
SMALL = [2.0, 40.0, 8.0, 40.0, 8.0, 46.0, 2.0, 46.0]              # second part of instance 2


def make_polys() -> PolygonMasks:
    return PolygonMasks([[SQUARE], [TRIANGLE], [SQUARE, SMALL]], H, W)


def reference_crop(polys, box, m):
    """detectron2's rasterize_polygons_within_box, written out in float64."""
    out = []
    for p in polys:
        p = np.asarray(p, dtype=np.float64).copy()
        p[0::2] = (p[0::2] - box[0]) * m / max(box[2] - box[0], 0.1)
        p[1::2] = (p[1::2] - box[1]) * m / max(box[3] - box[1], 0.1)
        out.append(p.tolist())
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(out, m, m))).astype(bool)


def iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / max((a | b).sum(), 1)


def test_polygon_crop_matches_detectron2_reference():
    m = make_polys()
    boxes = torch.tensor([[10, 8, 30, 28], [0, 0, 64, 48], [35.5, 2.25, 61, 44], [0, 0, 32, 48]], dtype=torch.float32)
    idx = torch.tensor([0, 0, 1, 2])
    out = m.crop_and_resize(boxes, idx, 28)
    assert out.shape == (4, 28, 28) and out.dtype == torch.float32
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    for r in range(4):
        ref = reference_crop(m.polygons[int(idx[r])], boxes[r].double().tolist(), 28)
        assert np.array_equal(out[r].numpy().astype(bool), ref)
    assert out[0].mean() > 0.95                      # box == polygon: (almost) full
    assert abs(out[1].mean().item() - 400 / (64 * 48)) < 0.03


def test_polygon_and_bitmask_targets_agree():
    m = make_polys()
    b = m.to_bitmasks()
    boxes = torch.tensor([[6, 4, 34, 32], [38, 3, 62, 42], [0, 0, 40, 48]], dtype=torch.float32)
    idx = torch.tensor([0, 1, 2])
    tp, tb = m.crop_and_resize(boxes, idx, 28), b.crop_and_resize(boxes, idx, 28)
    for r in range(3):
        assert iou(tp[r], tb[r]) > 0.9


def test_multipart_union_and_areas():
    m = make_polys()
    b = m.to_bitmasks()
    assert b.tensor.shape == (3, H, W) and b.tensor.dtype == torch.bool
    assert b.tensor[2].sum() > b.tensor[0].sum()
    assert torch.equal(b.tensor[2] & ~b.tensor[0], b.tensor[2] & (torch.arange(H)[:, None] >= 38))
    torch.testing.assert_close(m.areas(), torch.tensor([400.0, 350.0, 436.0], dtype=torch.float64))
    assert torch.allclose(b.areas(), m.areas(), rtol=0.15)


def test_bounding_boxes_both_types():
    m = make_polys()
    expected = torch.tensor([[10, 8, 30, 28], [40, 5, 60, 40], [2, 8, 30, 46]], dtype=torch.float32)
    torch.testing.assert_close(m.bounding_boxes(), expected)
    t = torch.zeros(2, 10, 12, dtype=torch.bool)
    t[0, 2:5, 3:9] = True
    torch.testing.assert_close(BitMasks(t).bounding_boxes(), torch.tensor([[3.0, 2, 9, 5], [0, 0, 0, 0]]))
    assert (m.to_bitmasks().bounding_boxes() - expected).abs().max() <= 2.0  # sharp apex loses ~2 px


@pytest.mark.parametrize("idx", [[2, 0], torch.tensor([2, 0]), torch.tensor([True, False, True]), 1, slice(1, 3)])
def test_indexing_same_type(idx):
    m = make_polys()
    b = m.to_bitmasks()
    pm, bm = m[idx], b[idx]
    assert isinstance(pm, PolygonMasks) and isinstance(bm, BitMasks)
    assert len(pm) == len(bm)
    assert torch.equal(pm.to_bitmasks().tensor, bm.tensor)
    if isinstance(idx, list):
        assert pm.polygons[0] is m.polygons[2]


def test_index_out_of_range():
    with pytest.raises(IndexError):
        make_polys()[[3]]


def test_flip_geometry():
    m = make_polys()
    f = m.flip_horizontal()
    torch.testing.assert_close(f.bounding_boxes()[0], torch.tensor([W - 30.0, 8, W - 10.0, 28]))
    assert np.array_equal(f.flip_horizontal().polygons[1][0], m.polygons[1][0])
    assert iou(f.to_bitmasks().tensor, m.to_bitmasks().flip_horizontal().tensor) > 0.95
    b = m.to_bitmasks()
    assert torch.equal(b.flip_horizontal().tensor, b.tensor.flip(-1))


def test_resize_geometry():
    m = make_polys()
    r = m.resize(96, 32)                         # y x2, x x0.5
    assert (r.height, r.width) == (96, 32)
    torch.testing.assert_close(r.bounding_boxes()[0], torch.tensor([5.0, 16, 15, 56]))
    torch.testing.assert_close(r.areas(), m.areas())
    br = m.to_bitmasks().resize(96, 32)
    assert br.tensor.shape == (3, 96, 32)
    assert iou(br.tensor, r.to_bitmasks().tensor) > 0.85


def test_empty_masks():
    m = PolygonMasks([], H, W)
    assert len(m) == 0
    assert m.to_bitmasks().tensor.shape == (0, H, W)
    assert m.crop_and_resize(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 28).shape == (0, 28, 28)
    assert m.bounding_boxes().shape == (0, 4)
    b = BitMasks(torch.zeros(0, H, W))
    assert b.resize(10, 20).tensor.shape == (0, 10, 20)
    assert b.bounding_boxes().shape == (0, 4)


def test_bad_polygon_rejected():
    with pytest.raises(ValueError, match="instance 1"):
        PolygonMasks([[SQUARE], [[1.0, 2.0, 3.0, 4.0]]], H, W)
    with pytest.raises(ValueError, match="instance 0"):
        PolygonMasks([[]], H, W)
