import math

import pytest
import torch

from ltseg.modeling.anchors import AnchorGenerator
from ltseg.modeling.rpn import RPN


def _rpn(beta=1.0 / 9):
    rpn = RPN(4, AnchorGenerator([[32]], [1.0], [16]), smooth_l1_beta=beta, post_nms_topk_test=10)
    for p in rpn.head.parameters():
        torch.nn.init.zeros_(p)
    return rpn


def _losses(rpn, gt_boxes):
    feats = [torch.randn(1, 4, 4, 4)]
    targets = [{"boxes": gt_boxes, "labels": torch.zeros(len(gt_boxes), dtype=torch.int64)}]
    rpn.train()
    _, losses = rpn(feats, [(64, 64)], targets, torch.Generator().manual_seed(0))
    return {k: v.detach() for k, v in losses.items()}


def test_rpn_losses_exact_anchor():
    # anchor 5 = location (1, 1): centre (16, 16) -> box (0, 0, 32, 32); zero head -> logits 0, deltas 0
    losses = _losses(_rpn(), torch.tensor([[0.0, 0.0, 32.0, 32.0]]))
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.tensor(math.log(2.0)))
    assert losses["loss_rpn_box"].item() == 0.0


def test_rpn_box_loss_shifted_gt():
    # gt 4 px right of anchor (0,0,32,32): IoU 28/36 >= 0.7 -> the only positive, dx = 4/32.
    # Anchor (16,0,48,32) overlaps 20 px (IoU 0.45: ignored); the other 14 are negatives.
    losses = _losses(_rpn(beta=0.0), torch.tensor([[4.0, 0.0, 36.0, 32.0]]))
    torch.testing.assert_close(losses["loss_rpn_box"], torch.tensor(0.125 / 15))
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.tensor(math.log(2.0)))


def test_rpn_no_ground_truth():
    losses = _losses(_rpn(), torch.zeros(0, 4))
    assert losses["loss_rpn_box"].item() == 0.0
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.tensor(math.log(2.0)))


def test_rpn_proposals_clipped_and_capped():
    rpn = RPN(4, AnchorGenerator([[32]], [0.5, 1.0, 2.0], [16]), post_nms_topk_test=10).eval()
    with torch.no_grad():
        proposals, losses = rpn([torch.randn(2, 4, 4, 4)], [(64, 64), (50, 40)])
    assert losses == {}
    assert len(proposals) == 2 and all(0 < len(p) <= 10 for p in proposals)
    assert float(proposals[1][:, 2].max()) <= 40 and float(proposals[1][:, 3].max()) <= 50
    assert float(proposals[1].min()) >= 0


def test_rpn_training_requires_targets():
    with pytest.raises(ValueError, match="training needs targets"):
        _rpn().train()([torch.randn(1, 4, 4, 4)], [(64, 64)])
