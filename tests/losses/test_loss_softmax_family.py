"""CE, SEQL, inverse-frequency CE, focal, class-margin CE: values and gradients vs the spec."""
import math

import pytest
import torch
import torch.nn.functional as F

from ltseg.losses import (
    ClassMarginCE, FocalLoss, InverseFrequencyCE, LossContext, SoftmaxCE, SoftmaxEQL,
)
from tests.losses.loss_reference import INSTANCE_COUNT, TAIL, small_stats

C = 6
LABELS = torch.tensor([0, 2, 5, 6, 4, 6, 1, 6])


def logits(seed=0, r=8):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(r, C + 1, generator=g, dtype=torch.float64)).requires_grad_()


def noise(seed=1, r=8):
    return torch.rand(r, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def row_ce(z_row, label, kept=None):
    """-log softmax over the kept columns, written out."""
    cols = range(len(z_row)) if kept is None else kept
    return -z_row[label] + torch.log(sum(torch.exp(z_row[k]) for k in cols))


def check_against(loss, ref_fn, z, ctx, rtol=1e-12):
    v = loss(z, ctx)
    (g,) = torch.autograd.grad(v, z)
    ref = ref_fn(z)
    (g_ref,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(v.detach(), ref.detach(), rtol=rtol, atol=1e-13)
    torch.testing.assert_close(g, g_ref, rtol=rtol, atol=1e-13)


def test_ce_hand_case_and_reference():
    stats = small_stats()
    z = torch.zeros(2, C + 1, dtype=torch.float64)
    assert SoftmaxCE()(z, LossContext(torch.tensor([0, C]), stats)).item() == pytest.approx(math.log(C + 1), rel=1e-14)
    z = logits()
    ref = lambda x: sum(row_ce(x[i], int(LABELS[i])) for i in range(8)) / 8
    check_against(SoftmaxCE(), ref, z, LossContext(LABELS, stats))


def test_background_is_the_last_column():
    # pitfall 5: background = C (detectron2 / mmdet >= 2), not SimCal's 0
    stats = small_stats()
    z = torch.zeros(1, C + 1, dtype=torch.float64, requires_grad=True)
    SoftmaxCE()(z, LossContext(torch.tensor([C]), stats)).backward()
    assert z.grad[0, C] < 0 and torch.all(z.grad[0, :C] > 0)
    s = SoftmaxCE().scores(torch.tensor([[0.0] * C + [5.0]]))
    assert s.shape == (1, C + 1) and s[0, -1] == s.max()


@pytest.mark.parametrize("gamma", [0.9, 0.5, 1.0])
def test_seql_matches_reference(gamma):
    stats, z, u = small_stats(), logits(), noise()

    def ref(x):
        total = 0
        for i in range(8):
            y = int(LABELS[i])
            kept = [k for k in range(C + 1) if k == y or k == C or not (TAIL[k] and u[i, k] <= gamma)]
            total = total + row_ce(x[i], y, kept)
        return total / 8

    check_against(SoftmaxEQL(gamma=gamma), ref, z, LossContext(LABELS, stats, noise=u))


def test_seql_gamma_zero_is_ce_and_gradcheck():
    stats, z, u = small_stats(), logits(), noise()
    ctx = LossContext(LABELS, stats, noise=u)
    torch.testing.assert_close(SoftmaxEQL(gamma=0.0)(z, ctx), SoftmaxCE()(z, ctx), rtol=1e-15, atol=0)
    assert torch.autograd.gradcheck(lambda x: SoftmaxEQL(gamma=0.9)(x, ctx), (z,))


def test_seql_tie_rule_drops_on_equality():
    stats = small_stats()
    z = torch.zeros(1, C + 1, dtype=torch.float64)
    u = torch.full((1, C), 0.9, dtype=torch.float64)
    v = SoftmaxEQL(gamma=0.9)(z, LossContext(torch.tensor([4]), stats, noise=u))
    # kept: label 4, frequent 5, background -> log 3
    assert v.item() == pytest.approx(math.log(3), rel=1e-14)


def test_seql_fp16_large_logits_stay_finite():
    # pitfall 7: masking with -1e7 overflows to -inf in fp16 and gives NaN; -inf + logsumexp does not
    stats = small_stats()
    z16 = (torch.randn(8, C + 1, generator=torch.Generator().manual_seed(0)) * 30).half().requires_grad_()
    big = torch.tensor(-1e7).half()
    assert torch.isinf(big) and torch.isnan(big * 0)  # the released snippet's constant in fp16
    v = SoftmaxEQL(gamma=1.0)(z16, LossContext(LABELS, stats, noise=noise()))
    v.backward()
    assert v.dtype == torch.float32 and torch.isfinite(v) and torch.isfinite(z16.grad).all()
    ref = SoftmaxEQL(gamma=1.0)(z16.detach().double(), LossContext(LABELS, stats, noise=noise()))
    torch.testing.assert_close(v.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalize", ["num_rois", "weights"])
def test_reweight_matches_reference(normalize):
    stats, z = small_stats(), logits()
    w = [min(max(100 / n, 0.1), 10.0) for n in INSTANCE_COUNT] + [0.5]

    def ref(x):
        total = sum(w[int(LABELS[i])] * row_ce(x[i], int(LABELS[i])) for i in range(8))
        return total / (8 if normalize == "num_rois" else sum(w[int(l)] for l in LABELS))

    check_against(InverseFrequencyCE(bg_weight=0.5, normalize=normalize), ref, z, LossContext(LABELS, stats))


def test_reweight_normalisations_differ_and_zero_instances_clamp():
    stats, z = small_stats([0, 5, 20, 50, 200, 400], [0, 9, 30, 80, 500, 900]), logits()
    ctx = LossContext(LABELS, stats)
    a = InverseFrequencyCE()(z, ctx)
    b = InverseFrequencyCE(normalize="weights")(z, ctx)
    assert torch.isfinite(a) and torch.isfinite(b) and abs(a - b) > 1e-3
    assert InverseFrequencyCE().class_weights(stats)[0] == 10.0


@pytest.mark.parametrize("gamma", [0.0, 2.0, 0.5])
def test_focal_matches_reference_and_gradcheck(gamma):
    stats, z = small_stats(), logits()

    def ref(x):
        total = 0
        for i in range(8):
            logp = -row_ce(x[i], int(LABELS[i]))
            total = total - (1 - torch.exp(logp)) ** gamma * logp
        return total / 8

    ctx = LossContext(LABELS, stats)
    check_against(FocalLoss(gamma=gamma), ref, z, ctx)
    assert torch.autograd.gradcheck(lambda x: FocalLoss(gamma=gamma)(x, ctx), (z,))
    if gamma == 0.0:
        torch.testing.assert_close(FocalLoss(gamma=0.0)(z, ctx), SoftmaxCE()(z, ctx), rtol=1e-15, atol=0)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_margin_matches_ldam_reference(scale):
    stats, z = small_stats(), logits()
    m = [1.0 / math.sqrt(math.sqrt(n)) for n in INSTANCE_COUNT]
    m = [x * 0.5 / max(m) for x in m] + [0.0]

    def ref(x):
        total = 0
        for i in range(8):
            y = int(LABELS[i])
            shifted = torch.stack([x[i, k] - (m[y] if k == y else 0.0) for k in range(C + 1)])
            total = total + row_ce(scale * shifted, y)
        return total / 8

    ctx = LossContext(LABELS, stats)
    check_against(ClassMarginCE(scale=scale), ref, z, ctx)
    assert ClassMarginCE().margins(stats)[0].item() == pytest.approx(0.5)
    assert torch.autograd.gradcheck(lambda x: ClassMarginCE(scale=scale)(x, ctx), (z,))
    torch.testing.assert_close(ClassMarginCE(scale=scale).scores(z.detach()), F.softmax(scale * z.detach().float(), 1))


def test_softmax_family_heads_use_zero_bias():
    for loss in (SoftmaxCE(), SoftmaxEQL(), InverseFrequencyCE(), FocalLoss(), ClassMarginCE()):
        assert loss.num_logits(C) == C + 1 and loss.init_bias() == 0.0
        assert torch.all(loss.make_predictor(8, C).bias == 0)
        s = loss.scores(torch.randn(5, C + 1))
        torch.testing.assert_close(s.sum(1), torch.ones(5))


def test_empty_batch_gives_zero_with_gradient():
    stats = small_stats()
    for loss in (SoftmaxCE(), SoftmaxEQL(), InverseFrequencyCE(), FocalLoss(), ClassMarginCE()):
        z = torch.zeros(0, C + 1, requires_grad=True)
        v = loss(z, LossContext(torch.zeros(0, dtype=torch.long), stats, noise=torch.zeros(0, C)))
        v.backward()
        assert v.item() == 0.0 and z.grad.shape == (0, C + 1)
