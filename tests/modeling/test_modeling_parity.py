"""Parity with torchvision's Mask R-CNN: same random weights (converted), same images, same
post-processing -> same boxes, scores, labels and masks."""
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from ltseg.modeling import build_model
from ltseg.modeling.convert import convert_torchvision_maskrcnn, load_torchvision_maskrcnn
from ltseg.modeling.postprocess import paste_masks
from tests.modeling.modeling_testlib import LocalCE, make_stats, model_cfg

NUM_CLASSES = 5
SIZES = [(256, 320), (320, 192)]
PROPOSALS = 300
MAX_DETS = 100


def _randomize_norms(model, g):
    """Non-trivial BN statistics, so a wrong BN mapping cannot go unnoticed."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + 0.5 * torch.rand(c, generator=g)
            m.bias.data = 0.1 * torch.randn(c, generator=g)
            m.running_mean.data = 0.1 * torch.randn(c, generator=g)
            m.running_var.data = 0.5 + torch.rand(c, generator=g)


@pytest.fixture(scope="module")
def models_and_outputs():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tv = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1, image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0], box_score_thresh=0.0, box_nms_thresh=0.5, box_detections_per_img=MAX_DETS,
        rpn_pre_nms_top_n_test=PROPOSALS, rpn_post_nms_top_n_test=PROPOSALS,
    )
    _randomize_norms(tv, g)
    tv.transform.resize = lambda image, target=None: (image, target)  # inputs already at size
    tv.eval()
    cfg = model_cfg(
        "mask_rcnn_r50_fpn", **{
            "backbone.norm": "BN", "backbone.freeze_at": 0,
            "roi_heads.pooler.sampling_ratio": 2, "roi_heads.pooler.aligned": False,
            "rpn.pre_nms_topk_test": PROPOSALS, "rpn.post_nms_topk_test": PROPOSALS,
            "roi_heads.test.max_dets": MAX_DETS, "roi_heads.test.topk_candidates": 0,
        })
    ours = build_model(cfg, LocalCE(), make_stats(NUM_CLASSES))
    load_torchvision_maskrcnn(ours, tv.state_dict())
    ours.eval()

    images = [torch.rand(3, h, w, generator=g) * 2 - 1 for h, w in SIZES]
    hp = max(h for h, _ in SIZES)
    wp = max(w for _, w in SIZES)
    batch = torch.zeros(len(images), 3, hp, wp)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[1], : im.shape[2]] = im
    with torch.no_grad():
        tv_out = tv(images)
        dets = ours.detect(batch, SIZES, SIZES)
        full = ours(batch, SIZES, orig_sizes=SIZES)
    return tv_out, dets, full


def _match(tv, det):
    """Index of the torchvision detection for each of ours (same label, nearest box)."""
    dist = (det["boxes"][:, None] - tv["boxes"][None]).abs().amax(-1)
    dist[det["labels"][:, None] != (tv["labels"][None] - 1)] = float("inf")
    return dist.min(dim=1)


def test_parity_detections_meaningful(models_and_outputs):
    tv_out, dets, _ = models_and_outputs
    for tv, det in zip(tv_out, dets):
        assert len(tv["boxes"]) == MAX_DETS  # enough candidates to fill the list
        assert tv["labels"].unique().numel() >= 2 and tv["scores"].std() > 1e-3


def test_parity_boxes_scores_labels(models_and_outputs):
    tv_out, dets, _ = models_and_outputs
    for tv, det in zip(tv_out, dets):
        assert len(det["boxes"]) == len(tv["boxes"])
        dist, j = _match(tv, det)
        assert dist.max() < 1e-3
        assert j.unique().numel() == len(j)  # a bijection
        torch.testing.assert_close(det["scores"], tv["scores"][j], atol=1e-5, rtol=0)
        # same ranking
        assert torch.equal(j, torch.arange(len(j))) or (det["scores"] - tv["scores"]).abs().max() < 1e-5


def test_parity_masks(models_and_outputs):
    tv_out, dets, full = models_and_outputs
    for (h, w), tv, det, out in zip(SIZES, tv_out, dets, full):
        _, j = _match(tv, det)
        pasted = paste_masks(det["mask_probs"], det["boxes"], (h, w))
        tv_masks = tv["masks"][j, 0]
        torch.testing.assert_close(pasted, tv_masks, atol=1e-5, rtol=0)
        decoded = torch.from_numpy(mask_util.decode(out["masks"])).permute(2, 0, 1).bool()
        sure = (tv_masks - 0.5).abs() > 1e-4
        assert torch.equal(decoded[sure], (tv_masks >= 0.5)[sure])
        assert decoded.any() and (~decoded).any()


def test_convert_rejects_unknown_keys():
    with pytest.raises(KeyError, match="unknown torchvision key 'roi_heads.keypoint_head.w'"):
        convert_torchvision_maskrcnn({"roi_heads.keypoint_head.w": torch.zeros(1)})


def test_convert_background_rows():
    c = 3
    state = {"roi_heads.box_predictor.cls_score.weight": torch.arange(c + 1.0)[:, None],
             "roi_heads.box_predictor.bbox_pred.weight": torch.arange(4 * (c + 1.0))[:, None],
             "roi_heads.mask_predictor.mask_fcn_logits.weight": torch.arange(c + 1.0)[:, None, None, None]}
    out = convert_torchvision_maskrcnn(state)
    assert out["roi_heads.box_predictor.cls_score.weight"].flatten().tolist() == [1, 2, 3, 0]
    assert out["roi_heads.box_predictor.bbox_pred.weight"].flatten().tolist() == list(range(4, 16))
    assert out["roi_heads.mask_head.predictor.weight"].flatten().tolist() == [1, 2, 3]
    sig = convert_torchvision_maskrcnn(state, softmax_logits=False)
    assert sig["roi_heads.box_predictor.cls_score.weight"].flatten().tolist() == [1, 2, 3]
