"""SimCal on a frozen model: heads, Eq. 1 loss on balanced proposals, orig/cal/dual predictions."""
import pytest
import torch
import torch.nn.functional as F

from ltseg.calibration.bilevel import select_balanced_proposals
from ltseg.calibration.simcal import SimCal, build_calibration_loss, lr_factor, resolve_stages
from ltseg.calibration.loop import freeze
from ltseg.data.category_stats import CategoryStats
from ltseg.losses import SoftmaxCE
from ltseg.modeling import build_model
from tests.modeling.modeling_testlib import make_batch, model_cfg

C = 4
STATS = CategoryStats.from_counts([3, 5, 40, 200], [4, 9, 350, 2000], num_images=300)


def frozen(name, loss=None, seed=0):
    torch.manual_seed(seed)
    name, _, variant = name.partition("+")
    overrides = {"roi_heads.test.max_dets": 60, "rpn.post_nms_topk_test": 100}
    if variant == "htc_lite":
        overrides["roi_heads.context.enabled"] = True
    cfg = model_cfg(name, **overrides)
    model = build_model(cfg, loss or SoftmaxCE(), STATS)
    freeze(model)
    return model


def batch(seed=0):
    return make_batch(C, size=(128, 128), num_images=2, seed=seed)


def simcal_for(model, head="3fc_ft", loss="ce", stages=None, **dual):
    n = getattr(model.roi_heads, "num_stages", 1)
    return SimCal(model, STATS, head, build_calibration_loss(loss), resolve_stages(stages, n), 64,
                  {"combine": "select", "rule": "paper", "threshold": 300, **dual})


def assert_same_outputs(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["scores"], y["scores"], rtol=0, atol=0)
        torch.testing.assert_close(x["boxes"], y["boxes"], rtol=0, atol=0)
        assert torch.equal(x["labels"], y["labels"]) and x["masks"] == y["masks"]


@pytest.mark.parametrize("name", ["tiny", "tiny_cascade", "tiny_cascade+htc_lite"])
def test_orig_is_the_model_and_3fc_ft_starts_from_it(name):
    model = frozen(name)
    simcal = simcal_for(model)
    images, sizes, _ = batch()
    orig_sizes = [(200, 200), (128, 128)]
    with torch.no_grad():
        reference = model(images, sizes, orig_sizes=orig_sizes)
    out = simcal.predict(model, images, sizes, orig_sizes)
    assert len(reference[0]["scores"]) > 0
    assert_same_outputs(out["orig"], reference)
    assert_same_outputs(out["cal"], reference)     # 3fc_ft = copy of the trained fcs + classifier
    assert_same_outputs(out["dual"], reference)


def test_2fc_rand_differs_and_dual_extremes():
    model = frozen("tiny_cascade")
    images, sizes, _ = batch()
    with pytest.warns(UserWarning, match="from the calibrated head"):
        all_cal = simcal_for(model, "2fc_rand", threshold=10_000)
    with pytest.warns(UserWarning, match="from the original head"):
        no_cal = simcal_for(model, "2fc_rand", threshold=0)
    no_cal.load_state_dict(all_cal.state_dict())
    a = all_cal.predict(model, images, sizes, sizes)
    b = no_cal.predict(model, images, sizes, sizes)
    assert not torch.equal(a["cal"][0]["scores"], a["orig"][0]["scores"])
    assert_same_outputs(a["dual"], a["cal"])
    assert_same_outputs(b["dual"], b["orig"])


def test_dual_mixes_per_class():
    model = frozen("tiny_cascade")
    simcal = simcal_for(model, "2fc_rand", threshold=9)  # classes 0, 1 calibrated (N <= 9)
    assert simcal.use_cal.tolist() == [True, True, False, False]
    images, sizes, _ = batch()
    p = simcal.score_variants(model, images, sizes)[3]
    assert not torch.allclose(p["cal"], p["orig"])
    assert torch.equal(p["dual"][:, :2], p["cal"][:, :2])
    assert torch.equal(p["dual"][:, 2:], p["orig"][:, 2:])      # classes 2, 3 and background
    simcal.combine = "avg"
    p = simcal.score_variants(model, images, sizes)[3]
    torch.testing.assert_close(p["dual"], (p["orig"] + p["cal"]) / 2)


@pytest.mark.parametrize("name", ["tiny", "tiny_cascade", "tiny_cascade+htc_lite"])
def test_loss_is_ce_mean_over_balanced_proposals(name):
    model = frozen(name)
    simcal = simcal_for(model)
    images, sizes, targets = batch()
    drawn = torch.tensor([int(t["labels"][0]) for t in targets])
    loss, info = simcal.loss(model, images, sizes, targets, drawn, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    rois = simcal.stage_rois(model, images, sizes, targets, g)
    rh = model.roi_heads
    if hasattr(rh, "context_vectors"):  # cascade: RoI features as the model pools them (+ HTC-Lite context)
        with torch.no_grad():
            features = model.fpn(model.backbone(images))[: model.num_pooled_levels]
            for pooled, samples in rois:
                ctx = rh.context_vectors(features)
                torch.testing.assert_close(pooled, rh.pool(features, samples.proposals, ctx))
    expected = 0.0
    for k in simcal.stages:
        pooled, samples = rois[k]
        keep = select_balanced_proposals(samples.labels, samples.image_index, drawn, C, g)
        labels = samples.labels[keep]
        fg = labels < C
        assert info[f"s{k}_fg"] == int(fg.sum()) > 0
        assert int((~fg).sum()) == min(int(fg.sum()), int((samples.labels == C).sum()))
        assert bool((labels[fg] == drawn[samples.image_index[keep][fg]]).all())
        logits = simcal.heads[str(k)](pooled[keep]).double()
        expected = expected + (-F.log_softmax(logits, 1).gather(1, labels[:, None]).squeeze(1)).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in simcal.heads.parameters())


@pytest.mark.parametrize("loss", ["focal", "reweight", "margin"])
def test_decoupled_losses(loss):
    model = frozen("tiny")
    simcal = simcal_for(model, "3fc_ft", loss)
    assert type(simcal.losses["0"]).__name__ != "SoftmaxCE"
    images, sizes, targets = batch()
    drawn = torch.tensor([int(t["labels"][0]) for t in targets])
    value, _ = simcal.loss(model, images, sizes, targets, drawn, torch.Generator().manual_seed(0))
    assert torch.isfinite(value) and value > 0
    value.backward()


def test_3fc_ft_with_a_differently_shaped_classifier_gets_a_fresh_one():
    model = frozen("tiny", build_calibration_loss("seesaw"))
    simcal = simcal_for(model, "3fc_ft", "ce")
    head, box_head = simcal.heads["0"], model.roi_heads.box_head
    assert head.classifier.out_features == C + 1
    assert all(torch.equal(a, b) for a, b in zip(head.trunk.state_dict().values(), box_head.state_dict().values()))


def test_stage_selection_and_bad_inputs():
    model = frozen("tiny_cascade")
    assert list(simcal_for(model, stages=[2]).heads) == ["2"]
    with pytest.raises(ValueError, match=r"stages=\[3\]: the model has stages 0..2"):
        resolve_stages([3], 3)
    with pytest.raises(ValueError, match=r"calibration.loss='nope'.*available: .*focal"):
        build_calibration_loss("nope")
    with pytest.raises(ValueError, match="unknown head '4fc'"):
        simcal_for(model, "4fc")


def test_lr_schedule():
    assert [lr_factor(e, [8, 11], 0.1) for e in (1, 7, 8, 10, 11, 12)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
