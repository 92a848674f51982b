"""Cascade R-CNN heads: stage targets, per-stage losses, forward/backward, inference averaging."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from ltseg.losses.base import ClassificationLoss
from ltseg.modeling import build_model
from ltseg.modeling.cascade import CascadeROIHeads
from ltseg.modeling.roi_heads import match_proposals
from tests.modeling.modeling_testlib import make_batch, make_stats, model_cfg

C = 4


class TemperedCE(ClassificationLoss):
    """Softmax CE whose test-time scores use ``softmax(z / T)`` (marks which loss scored a stage)."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def num_logits(self, num_classes):
        return num_classes + 1

    def forward(self, logits, ctx):
        return F.cross_entropy(self.check_inputs(logits, ctx), ctx.labels)

    def scores(self, logits):
        return F.softmax(logits.float() / self.temperature, dim=-1)


def tiny_cascade(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = model_cfg("tiny_cascade", **overrides)
    return build_model(cfg, TemperedCE(), make_stats(C))


def test_config_selects_cascade_with_own_loss_per_stage():
    model = tiny_cascade()
    heads = model.roi_heads
    assert isinstance(heads, CascadeROIHeads) and heads.num_stages == 3
    assert len({id(x) for x in heads.stage_losses}) == 3
    assert [m.fg_iou for m in heads.matchers] == [0.5, 0.6, 0.7]
    assert [m.bg_iou for m in heads.matchers] == [0.5, 0.6, 0.7]
    assert [c.weights for c in heads.box_coders] == [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    assert all(p.bbox_pred.out_features == 4 for p in heads.box_predictors)
    assert heads.stage_loss_weights == [1.0, 0.5, 0.25]
    assert len(heads.mask_heads) == 1


def test_stage_targets_respect_iou_thresholds_hand_boxes():
    heads = tiny_cascade().roi_heads
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    # IoU with gt: 0.55, 0.65, 0.75, 0.45 (shrunk boxes: IoU = side^2 / 100^2)
    sides = torch.tensor([0.55, 0.65, 0.75, 0.45]).sqrt() * 100
    boxes = torch.stack([torch.zeros(4), torch.zeros(4), sides, sides], 1)
    torch.testing.assert_close(box_iou(gt, boxes)[0], torch.tensor([0.55, 0.65, 0.75, 0.45]))
    targets = [{"boxes": gt, "labels": torch.tensor([2])}]
    expect = {0: [2, 2, 2, C], 1: [C, 2, 2, C], 2: [C, C, 2, C]}
    for k, labels in expect.items():
        samples = match_proposals([boxes], targets, heads.matchers[k], C)
        assert samples.labels.tolist() == labels


def test_training_stage_targets_respect_iou_thresholds():
    model = tiny_cascade()
    model.train()
    heads = model.roi_heads
    seen = []
    original = heads.classification_loss

    def spy(logits, samples, targets, loss=None):
        seen.append(samples)
        return original(logits, samples, targets, loss)

    heads.classification_loss = spy
    images, sizes, targets = make_batch(C, size=(128, 128), num_images=2)
    model(images, sizes, targets)
    assert len(seen) == 3
    for k, (samples, thr) in enumerate(zip(seen, (0.5, 0.6, 0.7))):
        fg = samples.labels < C
        ious = []
        for i, t in enumerate(targets):
            props = samples.proposals[i]
            ious.append(box_iou(props, t["boxes"]).max(1).values)
        iou = torch.cat(ious)
        assert bool((iou[fg] >= thr).all()) and bool((iou[~fg] < thr).all()), f"stage {k}"
        assert fg.any(), f"stage {k} has no foreground (gt boxes are proposals)"
        if k == 0:
            assert samples.labels.numel() <= 2 * 128
        # labels are the matched gt's class
        gt_labels = torch.cat([t["labels"][box_iou(p, t["boxes"]).argmax(1)]
                               for p, t in zip(samples.proposals, targets)])
        assert torch.equal(samples.labels[fg], gt_labels[fg])


def test_forward_backward_losses_and_stage_weights():
    images, sizes, targets = make_batch(C, size=(128, 128), num_images=2)
    losses = {}
    for weights in ([1.0, 0.5, 0.25], [1.0, 1.0, 1.0]):
        model = tiny_cascade(**{"roi_heads.stage_loss_weights": weights})
        model.train()
        g = torch.Generator().manual_seed(0)
        model.set_sampling_generator(g)
        losses[weights[1]] = model(images, sizes, targets)
    out = losses[0.5]
    assert set(out) == {"loss_rpn_cls", "loss_rpn_box", "loss_mask",
                        *(f"s{k}_loss_{n}" for k in range(3) for n in ("cls", "box"))}
    for k, w in enumerate([1.0, 0.5, 0.25]):
        for n in ("cls", "box"):
            torch.testing.assert_close(out[f"s{k}_loss_{n}"], w * losses[1.0][f"s{k}_loss_{n}"])
    total = sum(out.values())
    assert torch.isfinite(total)
    total.backward()


def test_backward_reaches_every_stage():
    model = tiny_cascade()
    model.train()
    images, sizes, targets = make_batch(C, size=(128, 128), num_images=2)
    sum(model(images, sizes, targets).values()).backward()
    heads = model.roi_heads
    for k in range(3):
        assert heads.box_predictors[k].cls_score.weight.grad.abs().sum() > 0
        assert heads.box_predictors[k].bbox_pred.weight.grad.abs().sum() > 0
    assert heads.mask_head.predictor.weight.grad.abs().sum() > 0


def test_mask_on_all_stages():
    model = tiny_cascade(**{"roi_heads.mask_on_all_stages": True})
    model.train()
    images, sizes, targets = make_batch(C, size=(128, 128), num_images=2)
    out = model(images, sizes, targets)
    assert {f"s{k}_loss_mask" for k in range(3)} <= set(out) and "loss_mask" not in out
    assert len(model.roi_heads.mask_heads) == 3


def test_inference_averages_stage_scores_through_each_stage_loss():
    model = tiny_cascade()
    heads = model.roi_heads
    for k, t in enumerate((1.0, 2.0, 4.0)):
        heads.stage_losses[k].temperature = t
    model.eval()
    images, sizes, _ = make_batch(C, size=(128, 128), num_images=2)
    with torch.no_grad():
        features = model.fpn(model.backbone(images))[: model.num_pooled_levels]
        proposals, _ = model.rpn(features, sizes)
        inputs, pooled, scores, boxes = heads.stage_scores(features, proposals, sizes)
        for k, t in enumerate((1.0, 2.0, 4.0)):
            logits = heads.box_predictors[k](heads.box_heads[k](pooled[k]))[0]
            torch.testing.assert_close(scores[k], F.softmax(logits / t, dim=-1))
        # stage k+1 runs on stage k's regressed boxes
        deltas = heads.box_predictors[0](heads.box_heads[0](pooled[0]))[1]
        refined = heads.box_coders[0].decode(deltas, torch.cat(inputs[0]))
        assert not torch.equal(torch.cat(inputs[1]), torch.cat(inputs[0]))
        torch.testing.assert_close(torch.cat(inputs[1]),
                                   torch.cat([b.clamp(min=0, max=128) for b in refined.split([len(p) for p in proposals])]))
        expected = heads.detect(boxes, (scores[0] + scores[1] + scores[2]) / 3, inputs[-1], sizes)
        got = heads.inference(features, proposals, sizes)
    for e, g in zip(expected, got):
        assert len(e["scores"]) > 0
        torch.testing.assert_close(g["scores"], e["scores"])
        torch.testing.assert_close(g["boxes"], e["boxes"])
        assert torch.equal(g["labels"], e["labels"])
        assert g["mask_probs"].shape[0] == len(g["scores"])


def test_model_inference_outputs_rle():
    model = tiny_cascade()
    model.eval()
    images, sizes, _ = make_batch(C, size=(128, 128), num_images=2)
    with torch.no_grad():
        out = model(images, sizes, orig_sizes=[(256, 256)] * 2)
    assert len(out) == 2 and len(out[0]["masks"]) == len(out[0]["scores"]) <= 300
    assert isinstance(out[0]["masks"][0]["counts"], str)


def test_bad_config():
    with pytest.raises(ValueError, match="class-agnostic"):
        tiny_cascade(**{"roi_heads.box_head.class_agnostic": False})
    with pytest.raises(ValueError, match="stage_loss_weights has 2 entries for 3 stages"):
        tiny_cascade(**{"roi_heads.stage_loss_weights": [1.0, 0.5]})
