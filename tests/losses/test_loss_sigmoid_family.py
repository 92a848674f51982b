"""BCE, EQL, BEQL, fixed drop, DropLoss, FBS-AEGL: values and gradients vs the spec (float64)."""
import math

import pytest
import torch

from ltseg.losses import (
    FBSAEGL, BackgroundEQL, DropLoss, EqualizationLoss, FixedDropLoss, LossContext, SigmoidBCE,
)
from tests.losses.loss_reference import (
    INSTANCE_COUNT, TAIL, drop_ratio_of, droploss_released, eql_w, sigmoid_loss, small_stats,
)

C = 6
# 8 RoIs: labels 0 (r), 2 (c), 5 (f), 6 = background, 4 (f), bg, 1 (r), bg -> rho = 3/5
LABELS = torch.tensor([0, 2, 5, 6, 4, 6, 1, 6])


def logits(seed=0, r=8, c=C):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(r, c, generator=g, dtype=torch.float64)).requires_grad_()


def noise(seed=1, r=8, c=C):
    return torch.rand(r, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def value_and_grad(loss, z, ctx):
    v = loss(z, ctx)
    (g,) = torch.autograd.grad(v, z)
    return v.detach(), g


def check_against(loss, ref_fn, z, ctx, rtol=1e-12):
    v, g = value_and_grad(loss, z, ctx)
    ref = ref_fn(z)
    (g_ref,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(v, ref.detach(), rtol=rtol, atol=1e-13)
    torch.testing.assert_close(g, g_ref, rtol=rtol, atol=1e-13)


# ---------------------------------------------------------------- hand-computed cases
def test_bce_divides_sum_by_num_rois_not_elements():
    # pitfall 1: zero logits, 2 background RoIs, 3 classes: every term is ln 2 -> 3 ln 2
    stats = small_stats([200, 300, 400], [200, 300, 400])
    z = torch.zeros(2, 3, dtype=torch.float64)
    v = SigmoidBCE()(z, LossContext(torch.tensor([3, 3]), stats))
    assert v.item() == pytest.approx(3 * math.log(2), rel=1e-14)


def test_eql_hand_case_drops_other_tail_classes_on_foreground_only():
    # classes: 0 rare, 1 rare, 2 frequent; zero logits -> each kept term costs ln 2
    stats = small_stats([3, 4, 500], [3, 4, 500])
    z = torch.zeros(2, 3, dtype=torch.float64)
    v = EqualizationLoss()(z, LossContext(torch.tensor([0, 3]), stats))
    # fg row (label 0): keeps class 0 (its label) and 2 (frequent) -> 2 terms; bg row: 3 terms
    assert v.item() == pytest.approx(5 * math.log(2) / 2, rel=1e-14)


def test_bce_and_eql_match_reference():
    stats, z = small_stats(), logits()
    ctx = LossContext(LABELS, stats)
    check_against(SigmoidBCE(), lambda x: sigmoid_loss(x, LABELS, lambda i, j: 1.0), z, ctx)
    check_against(EqualizationLoss(), lambda x: sigmoid_loss(x, LABELS, eql_w(LABELS, TAIL, C)), z, ctx)


def test_eql_image_level_rule_keeps_pos_and_neg_classes():
    stats, z = small_stats(), logits()
    g = torch.Generator().manual_seed(3)
    pos, neg = torch.rand(8, C, generator=g) < 0.3, torch.rand(8, C, generator=g) < 0.3
    base = eql_w(LABELS, TAIL, C)
    ref = lambda x: sigmoid_loss(x, LABELS, lambda i, j: 1.0 if (pos[i, j] or neg[i, j]) else base(i, j))
    check_against(EqualizationLoss(image_level_rule=True), ref, z, LossContext(LABELS, stats, image_pos=pos, image_neg=neg))
    with pytest.raises(ValueError, match="image_pos"):
        EqualizationLoss(image_level_rule=True)(z, LossContext(LABELS, stats))


@pytest.mark.parametrize("threshold", ["exponential", "gompertz"])
def test_eql_soft_threshold_functions(threshold):
    stats, z = small_stats(), logits()
    f = [n / 1000 for n in [1, 5, 20, 50, 200, 400]]
    if threshold == "exponential":
        t = [min(max(1 - (400 * x) ** 2, 0.0), 1.0) for x in f]
    else:
        t = [1 - math.exp(-80 * math.exp(-3000 * x)) for x in f]
    check_against(EqualizationLoss(threshold=threshold), lambda x: sigmoid_loss(x, LABELS, eql_w(LABELS, t, C)), z, LossContext(LABELS, stats))


def test_eql_without_exclusion_function_applies_to_background_rows():
    stats, z = small_stats(), logits()
    ref = lambda x: sigmoid_loss(x, LABELS, lambda i, j: 1.0 - TAIL[j] * (int(LABELS[i]) != j))
    check_against(EqualizationLoss(exclude_background=False), ref, z, LossContext(LABELS, stats))


def test_eql_tail_from_tags_not_raw_lambda():
    # pitfall 4: LVIS v1 yaml λ = 0.00177 marks frequent classes (f < λ) as tail
    stats = small_stats([5, 150, 1000], [5, 150, 1000], num_images=99388)
    assert stats.frequency == ("r", "f", "f") and stats.image_freq[1] < 0.00177
    z = logits(c=3, r=4)
    labels = torch.tensor([0, 3, 2, 2])
    default = EqualizationLoss()(z, LossContext(labels, stats))
    raw = EqualizationLoss(lambda_=0.00177)(z, LossContext(labels, stats))
    ref_tags = sigmoid_loss(z, labels, eql_w(labels, [True, False, False], 3))
    ref_raw = sigmoid_loss(z, labels, eql_w(labels, [True, True, False], 3))
    torch.testing.assert_close(default, ref_tags)
    torch.testing.assert_close(raw, ref_raw)
    assert not EqualizationLoss().image_level_rule  # D-EQL-1: off like the released code


def test_eql_with_empty_tail_is_bce():
    stats, z = small_stats([200] * C, [300] * C), logits()
    ctx = LossContext(LABELS, stats)
    torch.testing.assert_close(EqualizationLoss()(z, ctx), SigmoidBCE()(z, ctx), rtol=1e-15, atol=0)


# ---------------------------------------------------------------- BEQL
@pytest.mark.parametrize("b", [2.0, 4.0, 8.0])
def test_beql_matches_reference(b):
    stats, z = small_stats(), logits()
    fgw = eql_w(LABELS, TAIL, C)
    zd = z.detach()

    def w(i, j):
        if int(LABELS[i]) != C:
            return fgw(i, j)
        return 1.0 - TAIL[j] * min(-math.log(torch.sigmoid(zd[i, j]).item()) / math.log(b), 1.0)

    check_against(BackgroundEQL(log_base=b), lambda x: sigmoid_loss(x, LABELS, w), z, LossContext(LABELS, stats))


def test_beql_undetached_weight_gradcheck_and_same_value():
    stats, z = small_stats(), logits()
    ctx = LossContext(LABELS, stats)
    attached = BackgroundEQL(log_base=3.0, detach_weight=False)
    torch.testing.assert_close(attached(z, ctx), BackgroundEQL(log_base=3.0)(z, ctx))
    assert torch.autograd.gradcheck(lambda x: attached(x, ctx), (z,))


def test_beql_limits():
    stats, z = small_stats(), logits()
    ctx = LossContext(LABELS, stats)
    # b -> inf: EQL exactly; large b: close
    torch.testing.assert_close(BackgroundEQL(log_base=math.inf)(z, ctx), EqualizationLoss()(z, ctx), rtol=1e-15, atol=0)
    assert abs(BackgroundEQL(log_base=1e30)(z, ctx) - EqualizationLoss()(z, ctx)) < 0.1
    # b -> 1+: every tail-class background term dropped == fixed drop with r = 1
    torch.testing.assert_close(
        BackgroundEQL(log_base=1 + 1e-12)(z, ctx),
        FixedDropLoss(drop_ratio=1.0)(z, LossContext(LABELS, stats, noise=noise())), rtol=1e-14, atol=0,
    )


# ---------------------------------------------------------------- fixed drop / DropLoss
@pytest.mark.parametrize("r", [0.25, 0.5, 0.9])
def test_fixed_drop_matches_reference(r):
    stats, z, u = small_stats(), logits(), noise()
    fgw = eql_w(LABELS, TAIL, C)
    w = lambda i, j: fgw(i, j) if int(LABELS[i]) != C else (1.0 if not TAIL[j] or u[i, j] <= 1 - r else 0.0)
    check_against(FixedDropLoss(drop_ratio=r), lambda x: sigmoid_loss(x, LABELS, w), z, LossContext(LABELS, stats, noise=u))


def test_droploss_matches_released_code_and_elementwise_reference():
    stats, z, u = small_stats(), logits(), noise()
    tail = torch.tensor(TAIL)
    ctx = LossContext(LABELS, stats, noise=u)
    check_against(DropLoss(), lambda x: droploss_released(x, LABELS, tail, u), z, ctx)
    rho = drop_ratio_of(LABELS, TAIL, C)
    fgw = eql_w(LABELS, TAIL, C)
    w = lambda i, j: fgw(i, j) if int(LABELS[i]) != C else (1.0 if not TAIL[j] or u[i, j] <= rho else 0.0)
    check_against(DropLoss(), lambda x: sigmoid_loss(x, LABELS, w), z, ctx)


def test_droploss_paper_variant_drops_frequent_background_terms():
    stats, z, u = small_stats(), logits(), noise()
    rho = drop_ratio_of(LABELS, TAIL, C)
    fgw = eql_w(LABELS, TAIL, C)

    def w(i, j):
        if int(LABELS[i]) != C:
            return fgw(i, j)
        return float(u[i, j] <= (rho if TAIL[j] else 1 - rho))

    check_against(DropLoss(variant="paper"), lambda x: sigmoid_loss(x, LABELS, w), z, LossContext(LABELS, stats, noise=u))


def test_fixed_drop_with_one_minus_rho_is_droploss():
    labels = torch.tensor([0, 2, 5, 4, 6, 6, 1, 4, 5, 4, 6, 6])  # fg: 0 2 5 4 1 4 5 4 -> rho = 3/8
    stats, z = small_stats(), logits(r=12)
    u = noise(r=12)
    assert drop_ratio_of(labels, TAIL, C) == 0.375
    ctx = LossContext(labels, stats, noise=u)
    torch.testing.assert_close(FixedDropLoss(drop_ratio=0.625)(z, ctx), DropLoss()(z, ctx), rtol=1e-15, atol=0)


def test_droploss_without_foreground_is_bce():
    labels = torch.full((8,), C)
    stats, z = small_stats(), logits()
    for variant in ("code", "paper"):
        ctx = LossContext(labels, stats, noise=noise())
        torch.testing.assert_close(DropLoss(variant=variant)(z, ctx), SigmoidBCE()(z, ctx), rtol=1e-15, atol=0)


def test_droploss_keep_probability_is_rho_and_frequent_always_kept():
    # pitfall 2: zero logits, every kept term costs ln 2; count kept terms over many RoIs
    stats = small_stats()
    labels = torch.tensor([0, 2, 4, 5] + [C] * 4000)  # rho = 2/4 = 0.5
    z = torch.zeros(len(labels), C, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    kept = DropLoss()(z, LossContext(labels, stats, generator=gen)) * len(labels) / math.log(2)
    # fg rows (EQL): label 0 keeps {0, 4, 5}, label 2 keeps {2, 4, 5}, labels 4 / 5 keep {4, 5} + no tail
    fg_terms = 3 + 3 + 2 + 2
    bg_kept = kept.item() - fg_terms
    freq_terms = 4000 * 2
    tail_rate = (bg_kept - freq_terms) / (4000 * 4)
    assert abs(tail_rate - 0.5) < 0.02  # 16000 Bernoulli(0.5): sd 0.004
    # frequent terms are never dropped: with rho -> tiny, kept bg terms >= all frequent terms
    labels = torch.tensor([0] + [4] * 99 + [C] * 500)
    z = torch.zeros(len(labels), C, dtype=torch.float64)
    kept = DropLoss()(z, LossContext(labels, stats, generator=gen)) * len(labels) / math.log(2)
    fg_terms = 3 + 99 * 2
    assert kept.item() - fg_terms >= 500 * 2 - 1e-6


def test_noise_tie_rules():
    # pitfall 9: DropLoss / fixed drop keep on equality, FBS-AEGL drops on equality
    stats = small_stats()
    labels = torch.tensor([0, 4, C, C])  # rho = 0.5
    z = torch.zeros(4, C, dtype=torch.float64)
    u = torch.full((4, C), 0.5, dtype=torch.float64)
    bce = SigmoidBCE()(z, LossContext(labels, stats))
    eqlv = EqualizationLoss()(z, LossContext(labels, stats))
    torch.testing.assert_close(DropLoss()(z, LossContext(labels, stats, noise=u)), eqlv)  # all bg kept
    torch.testing.assert_close(FixedDropLoss(drop_ratio=0.5)(z, LossContext(labels, stats, noise=u)), eqlv)
    fbs = FBSAEGL(gamma=0.0, mu=0.0)(z, LossContext(labels, stats, noise=u))
    # fg rows all kept (6 + 6 terms), bg rows keep only the 2 frequent classes each
    assert fbs.item() == pytest.approx((12 + 4) * math.log(2) / 4, rel=1e-14)
    assert bce.item() == pytest.approx(24 * math.log(2) / 4, rel=1e-14)


def test_all_reduce_without_process_group_is_noop():
    stats, z, u = small_stats(), logits(), noise()
    ctx = LossContext(LABELS, stats, noise=u)
    torch.testing.assert_close(DropLoss(all_reduce=True)(z, ctx), DropLoss()(z, ctx), rtol=0, atol=0)
    torch.testing.assert_close(FBSAEGL(all_reduce=True)(z, ctx), FBSAEGL()(z, ctx), rtol=0, atol=0)


# ---------------------------------------------------------------- FBS-AEGL
@pytest.mark.parametrize("variant", ["eq10", "text"])
@pytest.mark.parametrize("gamma,mu", [(0.7, 0.7), (0.9, 0.3)])
def test_fbs_aegl_matches_reference(variant, gamma, mu):
    stats, z, u = small_stats(), logits(), noise()
    p = torch.sigmoid(z.detach())
    rho = drop_ratio_of(LABELS, TAIL, C)
    wf = [(1 - gamma) / (1 - gamma ** n) for n in INSTANCE_COUNT]

    def w(i, j):
        label = int(LABELS[i])
        if label == j:
            return wf[j]
        gate = wf[j] * float(p[i, j] >= mu)
        if label != C:
            return gate
        sigma = rho if TAIL[j] else (1 - rho if variant == "text" else 2.0)
        return gate * float(u[i, j] < sigma)

    loss = FBSAEGL(gamma=gamma, mu=mu, variant=variant)
    assert FBSAEGL(freq_variant=variant).variant == variant
    check_against(loss, lambda x: sigmoid_loss(x, LABELS, w), z, LossContext(LABELS, stats, noise=u))


def test_fbs_aegl_limits():
    stats, z, u = small_stats(), logits(), noise()
    ctx = LossContext(LABELS, stats, noise=u)
    # γ -> 0: WF -> 1
    torch.testing.assert_close(FBSAEGL(gamma=1e-12, mu=0.0)(z, ctx), FBSAEGL(gamma=0.0, mu=0.0)(z, ctx), rtol=1e-10, atol=0)
    # γ = 0, μ = 0: BCE on foreground rows + DropLoss's background Bernoulli (strict <)
    rho = drop_ratio_of(LABELS, TAIL, C)
    w = lambda i, j: 1.0 if int(LABELS[i]) != C else float(not TAIL[j] or u[i, j] < rho)
    check_against(FBSAEGL(gamma=0.0, mu=0.0), lambda x: sigmoid_loss(x, LABELS, w), z, ctx)
    # no tail classes, γ = 0, μ = 0: plain BCE
    flat = small_stats([200] * C, [300] * C)
    torch.testing.assert_close(
        FBSAEGL(gamma=0.0, mu=0.0)(z, LossContext(LABELS, flat, noise=u)), SigmoidBCE()(z, LossContext(LABELS, flat)),
        rtol=1e-15, atol=0,
    )
    # μ > 1: only the label terms of foreground rows remain, weighted by WF
    wf = [(1 - 0.7) / (1 - 0.7 ** n) for n in INSTANCE_COUNT]
    w = lambda i, j: wf[j] if int(LABELS[i]) == j else 0.0
    check_against(FBSAEGL(mu=1.5), lambda x: sigmoid_loss(x, LABELS, w), z, ctx)


def test_fbs_aegl_without_foreground_keeps_all_background_terms():
    labels = torch.full((8,), C)
    stats, z = small_stats(), logits()
    ctx = LossContext(labels, stats, noise=noise())
    torch.testing.assert_close(FBSAEGL(gamma=0.0, mu=0.0)(z, ctx), SigmoidBCE()(z, ctx), rtol=1e-15, atol=0)


# ---------------------------------------------------------------- heads
def test_prior_probability_bias_and_sigmoid_scores():
    # pitfall 8: the C-output sigmoid heads start at sigmoid(b) = 0.001
    for loss in (SigmoidBCE(), EqualizationLoss(), BackgroundEQL(), FixedDropLoss(), DropLoss(), FBSAEGL()):
        assert loss.num_logits(C) == C
        assert loss.init_bias() == pytest.approx(-6.906754778648554, rel=1e-12)
        layer = loss.make_predictor(16, C)
        assert torch.allclose(layer.bias, torch.full((C,), -6.906754778648554))
        s = loss.scores(logits().detach())
        assert s.shape == (8, C + 1) and torch.all(s[:, -1] == 0)
        torch.testing.assert_close(s[:, :C], torch.sigmoid(logits().detach()).float())
