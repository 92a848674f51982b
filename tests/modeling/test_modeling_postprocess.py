import json

import pycocotools.mask as mask_util
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from ltseg.modeling.postprocess import detect, encode_masks, paste_masks, rescale_boxes, to_lvis_results


def _masks_and_boxes(n=40, h=70, w=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    wh = torch.rand(n, 2, generator=g) * 60
    wh[:3] = torch.tensor([[0.3, 0.2], [1.0, 1.0], [0.0, 5.0]])  # sub-pixel and degenerate boxes
    boxes = torch.cat([xy, xy + wh], dim=1)  # clipped like detections: the paste box may still overhang
    return masks, torch.minimum(boxes, torch.tensor([w, h, w, h], dtype=torch.float32)), (h, w)


def test_paste_matches_torchvision():
    masks, boxes, size = _masks_and_boxes()
    expected = paste_masks_in_image(masks[:, None], boxes, size, padding=1)[:, 0]
    got = paste_masks(masks, boxes, size)
    assert got.shape == (40, *size)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)  # float32 summation order only
    assert float(expected.sum()) > 100  # the boxes do land in the image


def test_rle_decodes_to_the_pasted_mask():
    masks, boxes, size = _masks_and_boxes(seed=1)
    rles = encode_masks(masks, boxes, size, threshold=0.5, chunk=7)
    assert len(rles) == 40 and all(isinstance(r["counts"], str) and r["size"] == list(size) for r in rles)
    decoded = torch.from_numpy(mask_util.decode(rles)).permute(2, 0, 1).bool()
    assert torch.equal(decoded, paste_masks(masks, boxes, size) >= 0.5)


def test_detect_threshold_nms_and_cap():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10], [50.0, 50, 60, 60]])[:, None].expand(3, 2, 4)
    scores = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.0, 0.4, 0.6]])  # background last
    b, s, lab = detect(boxes, scores, (100, 100), score_thresh=0.0, nms_thresh=0.5)
    # class 0: box 1 suppressed by box 0; box 2 has score exactly 0 (not > 0); class 1: three boxes,
    # box 1 (IoU 0.82 with box 0) suppressed by box 0
    assert s.tolist() == [0.6000000238418579, 0.4000000059604645, 0.30000001192092896]
    assert lab.tolist() == [0, 1, 1]
    assert torch.equal(b[0], boxes[0, 0])
    # the cap keeps the 2 best (RoI, class) pairs, 0.6 and 0.5 of class 0; NMS then drops 0.5
    b, s, lab = detect(boxes, scores, (100, 100), topk_candidates=2)
    assert s.tolist() == [0.6000000238418579]
    b, s, lab = detect(boxes, scores, (100, 100), max_dets=1)
    assert len(s) == 1


def test_detect_class_agnostic_boxes_and_clipping():
    boxes = torch.tensor([[[-5.0, -5.0, 30.0, 200.0]]])
    scores = torch.tensor([[0.2, 0.7, 0.1]])
    b, s, lab = detect(boxes, scores, (100, 50))
    assert lab.tolist() == [1, 0]
    assert b.tolist() == [[0.0, 0.0, 30.0, 100.0]] * 2


def test_rescale_boxes():
    b = rescale_boxes(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (100, 200), (50, 400))
    assert b.tolist() == [[20.0, 10.0, 60.0, 20.0]]


def test_to_lvis_results_loads_in_the_official_api(tmp_path):
    from tests.lvis_oracle import LVIS, LVISResults

    masks, boxes, size = _masks_and_boxes(n=5, seed=2)
    boxes = boxes.clamp(0, 60) + torch.tensor([0.0, 0.0, 5.0, 5.0])
    out = {"boxes": boxes, "scores": torch.linspace(0.9, 0.1, 5), "labels": torch.tensor([0, 1, 1, 0, 1]),
           "masks": encode_masks(masks, boxes, size)}
    results = to_lvis_results([out], [7], category_ids=[3, 9])
    assert [r["category_id"] for r in results] == [3, 9, 9, 3, 9]
    x0, y0, x1, y1 = boxes[0].tolist()
    assert results[0]["bbox"] == [x0, y0, x1 - x0, y1 - y0]
    gt = {"images": [{"id": 7, "height": size[0], "width": size[1], "neg_category_ids": [],
                      "not_exhaustive_category_ids": []}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 1, 10, 10], "area": 100,
                           "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]]}],
          "categories": [{"id": 3, "name": "a", "frequency": "f"}, {"id": 9, "name": "b", "frequency": "r"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    res_path = tmp_path / "results.json"
    res_path.write_text(json.dumps(results))
    loaded = LVISResults(LVIS(str(path)), str(res_path))
    assert len(loaded.get_ann_ids()) == 5
