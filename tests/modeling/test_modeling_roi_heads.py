import pytest
import torch
import torch.nn.functional as F

from ltseg.data.masks import BitMasks, PolygonMasks
from ltseg.modeling.mask_head import MaskHead
from ltseg.modeling.matcher import BalancedSampler, Matcher
from ltseg.modeling.roi_heads import RoISamples, image_label_masks, mask_targets, match_proposals

H = W = 100
GT = [10.0, 20.0, 50.0, 60.0]


def _rect_masks():
    t = torch.zeros(1, H, W, dtype=torch.bool)
    t[0, 20:60, 10:50] = True
    x0, y0, x1, y1 = GT
    poly = PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]]], H, W)
    return {"tensor": t, "bitmasks": BitMasks(t), "polygons": poly}


@pytest.mark.parametrize("kind", ["tensor", "bitmasks", "polygons"])
def test_mask_targets_crop_to_roi(kind):
    masks = _rect_masks()[kind]
    # RoI 0 = the gt box; RoI 1 = the gt box extended 40 px to the right (left half is object)
    boxes = torch.tensor([GT, [10.0, 20.0, 90.0, 60.0]])
    samples = RoISamples([boxes], torch.tensor([0, 0]), torch.tensor([GT, GT]), torch.tensor([0, 0]),
                         torch.tensor([0, 0]), 1)
    out = mask_targets([{"masks": masks}], samples, torch.tensor([0, 1]), 28)
    assert out.shape == (2, 28, 28) and out.dtype == torch.float32
    assert bool((out[0] == 1).all())
    assert bool((out[1][:, :14] == 1).all()) and bool((out[1][:, 14:] == 0).all())


def test_match_proposals_labels_and_background():
    props = [torch.tensor([GT, [0.0, 0.0, 5.0, 5.0], [12.0, 20.0, 50.0, 60.0]]), torch.tensor([[0.0, 0, 10, 10]])]
    targets = [{"boxes": torch.tensor([GT]), "labels": torch.tensor([3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    s = match_proposals(props, targets, Matcher(0.5, 0.5), num_classes=4)
    assert s.labels.tolist() == [3, 4, 3, 4]
    assert s.image_index.tolist() == [0, 0, 0, 1]
    assert s.foreground.tolist() == [0, 2]
    torch.testing.assert_close(s.gt_boxes[0], torch.tensor(GT))
    sampled = match_proposals(props, targets, Matcher(0.5, 0.5), 4, BalancedSampler(2, 0.5),
                              torch.Generator().manual_seed(0))
    assert [len(p) for p in sampled.proposals] == [2, 1]
    assert sorted(sampled.labels.tolist()) == [3, 4, 4]


def test_image_label_masks():
    targets = [{"labels": torch.tensor([1, 1]), "pos_category_ids": torch.tensor([2]),
                "neg_category_ids": torch.tensor([0])},
               {"labels": torch.tensor([3])}]
    pos, neg = image_label_masks(targets, torch.tensor([0, 1, 1]), 4)
    assert pos.tolist() == [[False, True, True, False], [False, False, False, True], [False, False, False, True]]
    assert neg.tolist() == [[True, False, False, False], [False] * 4, [False] * 4]


def test_mask_head_gathers_the_class_logits():
    torch.manual_seed(0)
    head = MaskHead(8, num_classes=5, num_conv=2, conv_dim=8).double()
    torch.nn.init.normal_(head.predictor.weight)
    torch.nn.init.normal_(head.predictor.bias)
    x = torch.randn(6, 8, 14, 14, dtype=torch.float64)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    full = head.predictor(F.relu(head.deconv(head.convs(x))))  # (R, C, 28, 28), plain deconvolution
    torch.testing.assert_close(head(x, labels), full[torch.arange(6), labels], rtol=1e-12, atol=1e-12)
    agnostic = MaskHead(8, num_classes=5, num_conv=1, conv_dim=8, class_agnostic=True)
    assert agnostic(x.float(), labels).shape == (6, 28, 28)




def test_zero_rois_decode_and_select_keep_their_shapes():
    from ltseg.modeling.box_coder import BoxCoder
    from ltseg.modeling.roi_heads import StandardROIHeads

    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    boxes = StandardROIHeads.predict_boxes(None, torch.zeros(0, 4 * 7), [torch.zeros(0, 4)], coder)
    assert boxes.shape == (0, 7, 4)
