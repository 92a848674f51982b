"""Seesaw loss: value/gradient vs the mmdetection formula, counts, state dict, predictor, scores."""
import math

import pytest
import torch
import torch.nn.functional as F

from ltseg.losses import LossContext, NormedLinear, SeesawLoss
from tests.losses.loss_reference import seesaw_reference, small_stats

C = 6
LABELS = torch.tensor([0, 2, 5, 6, 4, 6, 1, 6, 5, 5])


def logits(seed=0, r=10):
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(r, C + 2, generator=g, dtype=torch.float64)).requires_grad_()


def with_counts(loss, counts):
    loss.load_state_dict({"cum_samples": torch.tensor(counts, dtype=torch.float64)})
    return loss


@pytest.mark.parametrize("p,q", [(0.8, 2.0), (0.8, 0.0), (0.0, 2.0), (1.5, 1.0)])
def test_seesaw_matches_reference(p, q):
    stats, z = small_stats(), logits()
    start = [0.0, 40.0, 3.0, 0.0, 7.0, 500.0, 900.0]  # class 3 stays unseen: clamped to 1
    loss = with_counts(SeesawLoss(p=p, q=q), start)
    v = loss(z, LossContext(LABELS, stats))
    (g,) = torch.autograd.grad(v, z)
    updated = torch.tensor(start, dtype=torch.float64) + torch.bincount(LABELS, minlength=C + 1)
    torch.testing.assert_close(loss.cum_samples, updated, rtol=0, atol=0)
    cls, obj = seesaw_reference(z, LABELS, updated, p, q, 0.01)
    (g_ref,) = torch.autograd.grad(cls + obj, z)
    torch.testing.assert_close(v.detach(), (cls + obj).detach(), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-13)


def test_counts_are_updated_before_use_and_clamped():
    # pitfall 3: a fresh loss sees this batch's counts; unseen classes count as 1
    stats, z = small_stats(), logits()
    v = SeesawLoss()(z, LossContext(LABELS, stats))
    counts = torch.bincount(LABELS, minlength=C + 1).double()
    cls, obj = seesaw_reference(z, LABELS, counts, 0.8, 2.0, 0.01)
    torch.testing.assert_close(v, cls + obj, rtol=1e-12, atol=1e-13)
    assert counts[3] == 0  # class 3 unseen -> clamped to 1 inside the reference and the loss


def test_q0_is_mitigation_only_and_p0_q0_is_plain_ce():
    stats, z = small_stats(), logits()
    counts = [5.0, 40.0, 3.0, 100.0, 7.0, 500.0, 900.0]
    v = with_counts(SeesawLoss(q=0.0), counts)(z, LossContext(LABELS, stats))
    updated = torch.tensor(counts, dtype=torch.float64) + torch.bincount(LABELS, minlength=C + 1)
    cls, obj = seesaw_reference(z, LABELS, updated, 0.8, 0.0, 0.01)
    torch.testing.assert_close(v, cls + obj, rtol=1e-12, atol=1e-13)
    plain = SeesawLoss(p=0.0, q=0.0)(z, LossContext(LABELS, stats))
    fg = LABELS != C
    expected = (F.cross_entropy(z[fg, :C], LABELS[fg], reduction="sum")
                + F.cross_entropy(z[:, C:], (~fg).long(), reduction="sum")) / len(LABELS)
    torch.testing.assert_close(plain, expected, rtol=1e-13, atol=0)


def test_class_term_on_foreground_divided_by_all_rois_and_objectness_target():
    stats = small_stats()
    z = torch.zeros(4, C + 2, dtype=torch.float64)
    labels = torch.tensor([2, C, C, C])
    v = SeesawLoss(p=0.0, q=0.0)(z, LossContext(labels, stats))
    # one fg RoI: class CE = log C; objectness CE = log 2 for each of the 4 RoIs; all / 4
    assert v.item() == pytest.approx((math.log(C) + 4 * math.log(2)) / 4, rel=1e-14)
    z = torch.zeros(1, C + 2, dtype=torch.float64, requires_grad=True)
    SeesawLoss()(z, LossContext(torch.tensor([1]), stats)).backward()
    assert z.grad[0, C] < 0 < z.grad[0, C + 1]  # target 0 = object


def test_compensation_uses_detached_scores():
    stats, z = small_stats(), logits()
    counts = [5.0, 40.0, 3.0, 100.0, 7.0, 500.0, 900.0]
    v = with_counts(SeesawLoss(), counts)(z, LossContext(LABELS, stats))
    (g,) = torch.autograd.grad(v, z)
    # differentiating through σ would change the gradient: compare with that variant
    updated = torch.tensor(counts, dtype=torch.float64) + torch.bincount(LABELS, minlength=C + 1)
    cls, obj = seesaw_reference(z, LABELS, updated, 0.8, 2.0, 0.01)
    (g_ref,) = torch.autograd.grad(cls + obj, z)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-13)


def test_all_background_and_empty_batches():
    stats = small_stats()
    z = logits(r=5)
    labels = torch.full((5,), C)
    v = SeesawLoss()(z, LossContext(labels, stats))
    expected = F.cross_entropy(z[:, C:], torch.ones(5, dtype=torch.long), reduction="mean")
    torch.testing.assert_close(v, expected, rtol=1e-13, atol=0)
    e = torch.zeros(0, C + 2, requires_grad=True)
    assert SeesawLoss()(e, LossContext(torch.zeros(0, dtype=torch.long), stats)).item() == 0.0


def test_state_dict_any_size_and_mismatch_error():
    stats = small_stats()
    src = SeesawLoss()
    src(logits(), LossContext(LABELS, stats))
    dst = SeesawLoss()
    dst.load_state_dict(src.state_dict())
    torch.testing.assert_close(dst.cum_samples, src.cum_samples)
    assert "cum_samples" in src.state_dict() and src.cum_samples.numel() == C + 1
    wrong = SeesawLoss()
    wrong.load_state_dict({"cum_samples": torch.zeros(4)})
    with pytest.raises(ValueError, match="cum_samples has 4 entries"):
        wrong(logits(), LossContext(LABELS, stats))


def test_all_reduce_without_process_group_is_noop():
    stats, z = small_stats(), logits()
    a, b = SeesawLoss(all_reduce=True), SeesawLoss()
    torch.testing.assert_close(a(z, LossContext(LABELS, stats)), b(z, LossContext(LABELS, stats)), rtol=0, atol=0)


def test_scores_are_class_softmax_times_objectness():
    z = torch.randn(5, C + 2, dtype=torch.float64)
    s = SeesawLoss().scores(z)
    obj = F.softmax(z[:, C:].float(), 1)
    torch.testing.assert_close(s[:, :C], F.softmax(z[:, :C].float(), 1) * obj[:, :1])
    torch.testing.assert_close(s[:, C], obj[:, 1])
    torch.testing.assert_close(s.sum(1), torch.ones(5))


def test_normed_linear_predictor():
    loss = SeesawLoss()
    layer = loss.make_predictor(16, C)
    assert isinstance(layer, NormedLinear) and layer.out_features == C + 2 and layer.temperature == 20.0
    assert torch.all(layer.bias == 0) and abs(layer.weight.std().item() - 0.01) < 0.005
    x = torch.randn(3, 16)
    w = layer.weight / (layer.weight.norm(dim=1, keepdim=True) + 1e-6)
    expected = 20 * (x / (x.norm(dim=1, keepdim=True) + 1e-6)) @ w.T + layer.bias
    torch.testing.assert_close(layer(x), expected)
