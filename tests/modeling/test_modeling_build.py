import pycocotools.mask as mask_util
import pytest
import torch
from torchvision.models import resnet18

from ltseg.data.masks import BitMasks
from ltseg.modeling import MaskRCNN, build_model
from ltseg.modeling.roi_heads import RoISamples
from tests.modeling.modeling_testlib import LocalCE, RecordingROIHeads, make_batch, make_stats, model_cfg

C = 4


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(model_cfg("tiny"), LocalCE(), make_stats(C))


def test_tiny_forward_backward(tiny):
    images, sizes, targets = make_batch(C, size=(128, 160))
    for t in targets:
        t["masks"] = BitMasks(t["masks"])
    tiny.train()
    tiny.set_sampling_generator(torch.Generator().manual_seed(0))
    tiny.set_iteration(3)
    losses = tiny(images, sizes, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"].item() > 0 and losses["loss_mask"].item() > 0
    tiny.zero_grad()
    sum(losses.values()).backward()
    for name in ["backbone.body.conv1.weight", "fpn.output.0.weight", "rpn.head.objectness.weight",
                 "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight",
                 "roi_heads.mask_head.predictor.weight"]:
        grad = dict(tiny.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_tiny_inference_format(tiny):
    images, sizes, _ = make_batch(C, size=(128, 160), seed=1)
    tiny.eval()
    orig = [(256, 320), (64, 80)]
    with torch.no_grad():
        out = tiny(images, sizes, orig_sizes=orig)
    for o, (h, w) in zip(out, orig):
        k = len(o["scores"])
        assert 0 < k <= 300
        assert o["boxes"].shape == (k, 4) and o["labels"].shape == (k,)
        assert bool((o["labels"] >= 0).all() and (o["labels"] < C).all())
        assert bool((o["scores"][:-1] >= o["scores"][1:]).all())
        assert float(o["boxes"][:, 2].max()) <= w and float(o["boxes"][:, 3].max()) <= h
        assert len(o["masks"]) == k and isinstance(o["masks"][0]["counts"], str)
        assert mask_util.decode(o["masks"]).shape == (h, w, k)


def test_box_regression_loss_by_hand(tiny):
    heads = tiny.roi_heads
    props = torch.tensor([[0.0, 0, 10, 10], [0, 0, 20, 20]])
    samples = RoISamples([props], torch.tensor([2, C]), torch.tensor([[1.0, 0, 11, 10], [0, 0, 1, 1]]),
                         torch.tensor([0, 0]), torch.tensor([0, 0]), C)
    deltas = torch.zeros(2, 4 * C)
    deltas[0, 8] = 0.5  # class 2's dx; target dx = 10 * 1 / 10 = 1
    # smooth-L1 (beta 1/9) of |0.5 - 1| = 0.5 - 1/18, summed, divided by 2 sampled RoIs
    expected = (0.5 - 1 / 18) / 2
    got = heads.box_regression_loss(deltas, samples, heads.box_coder)
    torch.testing.assert_close(got, torch.tensor(expected))


def test_roi_heads_class_from_config():
    cfg = model_cfg("tiny", **{"roi_heads._target_": "tests.modeling.modeling_testlib.RecordingROIHeads"})
    model = build_model(cfg, LocalCE(), make_stats(C))
    assert isinstance(model, MaskRCNN) and isinstance(model.roi_heads, RecordingROIHeads)
    assert RecordingROIHeads.built


def test_num_classes_mismatch():
    with pytest.raises(ValueError, match=r"model.num_classes is 7 but the training dataset has 4"):
        build_model(model_cfg("tiny", num_classes=7), LocalCE(), make_stats(C))
    assert build_model(model_cfg("tiny", num_classes=4), LocalCE(), make_stats(C)).roi_heads.num_classes == 4


def test_missing_weights_path(tmp_path):
    missing = tmp_path / "nope" / "resnet50.pth"
    with pytest.raises(FileNotFoundError, match=r"model.backbone.weights: no file at '.*resnet50.pth'"):
        build_model(model_cfg("mask_rcnn_r50_fpn", **{"backbone.weights": str(missing)}), LocalCE(), make_stats(C))


def test_weights_load_and_freeze(tmp_path):
    torch.manual_seed(1)
    reference = resnet18()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    cfg = model_cfg("tiny", **{"backbone.weights": str(path), "backbone.norm": "FrozenBN", "backbone.freeze_at": 2,
                               "backbone.width": 64})
    model = build_model(cfg, LocalCE(), make_stats(C))
    torch.testing.assert_close(model.backbone.body.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    torch.testing.assert_close(model.backbone.body.bn1.running_var, reference.bn1.running_var)
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad
    assert model.backbone.body.layer2[0].conv1.weight.requires_grad
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"r18.pth': not a torchvision ResNet state dict.*wrong shape \['conv1.weight'\]"):
        build_model(cfg, LocalCE(), make_stats(C))


def test_bad_target_labels(tiny):
    images, sizes, targets = make_batch(C, size=(64, 64))
    targets[1]["labels"] = torch.full_like(targets[1]["labels"], C)
    targets[1]["image_id"] = 42
    tiny.train()
    with pytest.raises(ValueError, match=r"target 1 \(image_id 42\) has labels outside 0..3"):
        tiny(images, sizes, targets)


def test_unknown_norm():
    with pytest.raises(ValueError, match="model.backbone.norm: unknown norm 'SyncBN'"):
        build_model(model_cfg("tiny", **{"backbone.norm": "SyncBN"}), LocalCE(), make_stats(C))


def test_resnet_body_matches_torchvision_layout():
    from torchvision.models import resnet50

    from ltseg.modeling.backbone import ResNetBackbone

    ours = ResNetBackbone(50, "BN").body.state_dict()
    theirs = {k: v for k, v in resnet50().state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    narrow = ResNetBackbone(18, "GN", num_groups=16, width=32)
    assert narrow.out_channels == [32, 64, 128, 256]
    feats = narrow(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 16, 24), (64, 8, 12), (128, 4, 6), (256, 2, 3)]


def test_tiny_train_step_under_autocast(tiny):
    images, sizes, targets = make_batch(C, size=(96, 128))
    tiny.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = tiny(images, sizes, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_4conv1fc_gn_and_class_agnostic_heads():
    torch.manual_seed(0)
    cfg = model_cfg("tiny", **{"roi_heads.box_head.num_conv": 4, "roi_heads.box_head.num_fc": 1,
                               "roi_heads.box_head.norm": "GN", "roi_heads.box_head.class_agnostic": True,
                               "roi_heads.mask_head.class_agnostic": True, "roi_heads.mask_head.norm": "GN"})
    model = build_model(cfg, LocalCE(), make_stats(C))
    heads = model.roi_heads
    assert len(heads.box_head.convs) == 4 and isinstance(heads.box_head.convs[0][1], torch.nn.GroupNorm)
    assert heads.box_predictor.bbox_pred.out_features == 4 and heads.mask_head.predictor.out_channels == 1
    images, sizes, targets = make_batch(C, size=(96, 96))
    losses = model(images, sizes, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    det = model.detect(images, sizes)
    assert det[0]["mask_probs"].shape[1:] == (28, 28) and len(det[0]["boxes"]) > 0
