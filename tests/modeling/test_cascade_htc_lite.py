"""HTC-Lite: the cascade with a global context branch (vector added to RoI features, multi-label loss)."""
import torch
import torch.nn.functional as F

from ltseg.losses import SoftmaxCE
from ltseg.modeling import build_model
from ltseg.modeling.cascade import ContextEncoder, add_context
from tests.modeling.modeling_testlib import make_batch, make_stats, model_cfg

C = 4


def htc_lite(enabled=True, seed=0):
    torch.manual_seed(seed)
    cfg = model_cfg("tiny_cascade", **{"roi_heads.context.enabled": enabled, "roi_heads.context.loss_weight": 2.0})
    return build_model(cfg, SoftmaxCE(), make_stats(C))


def test_off_by_default():
    model = htc_lite(enabled=False)
    assert model.roi_heads.context is None
    model.train()
    images, sizes, targets = make_batch(C, size=(128, 128), num_images=2)
    assert "loss_context" not in model(images, sizes, targets)


def test_context_loss_and_gradients():
    model = htc_lite()
    model.train()
    images, sizes, targets = make_batch(C, size=(128, 128), num_images=2)
    losses = model(images, sizes, targets)
    enc = model.roi_heads.context
    assert isinstance(enc, ContextEncoder) and len(enc.convs) == 4
    with torch.no_grad():
        features = model.fpn(model.backbone(images))[: model.num_pooled_levels]
        _, logits = enc(features)
    present = torch.zeros(2, C)
    for i, t in enumerate(targets):
        present[i, t["labels"]] = 1
    expected = 2.0 * torch.stack([F.binary_cross_entropy_with_logits(logits[i, c], present[i, c])
                                  for i in range(2) for c in range(C)]).mean()
    torch.testing.assert_close(losses["loss_context"], expected)
    sum(losses.values()).backward()
    assert enc.fc.weight.grad.abs().sum() > 0
    assert enc.convs[0][0].weight.grad.abs().sum() > 0


def test_context_vector_is_added_to_box_and_mask_features():
    model = htc_lite()
    model.eval()
    heads = model.roi_heads
    images, sizes, _ = make_batch(C, size=(128, 128), num_images=2)
    boxes = [torch.tensor([[0.0, 0.0, 50.0, 60.0], [10.0, 10.0, 90.0, 70.0]]), torch.tensor([[5.0, 5.0, 40.0, 40.0]])]
    with torch.no_grad():
        features = model.fpn(model.backbone(images))[: model.num_pooled_levels]
        ctx = heads.context_vectors(features)
        assert ctx.shape == (2, features[0].shape[1]) and ctx.abs().sum() > 0
        diff = heads.pool(features, boxes, ctx) - heads.box_pooler(features, boxes)
        want = ctx[torch.tensor([0, 0, 1])][:, :, None, None].expand_as(diff)
        torch.testing.assert_close(diff, want)
        torch.testing.assert_close(add_context(torch.zeros(3, ctx.shape[1], 2, 2), boxes, ctx)[2, :, 1, 1], ctx[1])
        proposals, _ = model.rpn(features, sizes)
        _, pooled, _, _ = heads.stage_scores(features, proposals, sizes)
        torch.testing.assert_close(pooled[0], heads.pool(features, proposals, ctx))
        out = model(images, sizes, orig_sizes=sizes)
    assert len(out[0]["masks"]) == len(out[0]["scores"]) > 0
