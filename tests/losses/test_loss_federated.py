"""Federated loss: the detectron2 class draw reproduced without a host sync; value and gradient."""
import math

import pytest
import torch

from ltseg.losses import FederatedLoss, LossContext, SigmoidBCE
from tests.losses.loss_reference import federated_classes_detectron2, sigmoid_loss, small_stats

C = 100


def big_stats(zero_classes=()):
    g = torch.Generator().manual_seed(0)
    img = torch.randint(1, 400, (C,), generator=g)
    img[list(zero_classes)] = 0
    return small_stats(img, img * 2, num_images=5000)


def test_same_classes_as_detectron2_with_the_same_seed():
    stats = big_stats()
    labels = torch.tensor([3, 3, 17, 42, C, C, 99])
    weight = stats.image_count.float() ** 0.5
    for seed in range(5):
        torch.manual_seed(seed)
        ref = federated_classes_detectron2(labels, 50, C, weight)
        torch.manual_seed(seed)
        mask = FederatedLoss().sample_classes(labels, stats)
        expected = torch.zeros(C + 1, dtype=torch.bool)
        expected[ref] = True
        assert torch.equal(mask, expected[:C])
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        torch.testing.assert_close(
            FederatedLoss().sample_classes(labels, stats, g1), FederatedLoss().sample_classes(labels, stats, g2))


def test_background_takes_one_of_the_slots():
    # pitfall 6: with background RoIs 49 foreground classes remain, without them 50
    stats = big_stats()
    gen = torch.Generator().manual_seed(1)
    assert FederatedLoss().sample_classes(torch.tensor([1, 2, C]), stats, gen).sum() == 49
    assert FederatedLoss().sample_classes(torch.tensor([1, 2]), stats, gen).sum() == 50


def test_value_and_gradient_match_reference():
    stats = big_stats()
    labels = torch.tensor([3, 17, C, C, 99, C])
    z = torch.randn(6, C + 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_()
    mask = FederatedLoss().sample_classes(labels, stats, torch.Generator().manual_seed(7))
    v = FederatedLoss()(z, LossContext(labels, stats, generator=torch.Generator().manual_seed(7)))
    (g,) = torch.autograd.grad(v, z)
    ref = sigmoid_loss(z[:, :C], labels, lambda i, j: float(mask[j]))
    (g_ref,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(v.detach(), ref.detach(), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-13)
    assert torch.all(g[:, C] == 0)  # the background column is never trained


def test_all_classes_is_bce_and_zero_count_classes_never_sampled():
    stats = big_stats(zero_classes=range(60))
    labels = torch.tensor([70, C, C])
    z = torch.randn(3, C + 1, dtype=torch.float64)
    loss = FederatedLoss(num_classes_fed=C + 1)
    mask = loss.sample_classes(labels, stats, torch.Generator().manual_seed(0))
    assert mask[60:].all() and not mask[:60].any()  # only classes with images can be drawn
    full = small_stats([200] * C, [200] * C, 5000)
    torch.testing.assert_close(loss(z, LossContext(labels, full)), SigmoidBCE()(z[:, :C], LossContext(labels, full)), rtol=1e-15, atol=0)


def test_head_layout():
    loss = FederatedLoss()
    assert loss.num_logits(C) == C + 1 and loss.init_bias() == pytest.approx(-math.log(99.0), rel=1e-12)
    assert FederatedLoss(prior_prob=None).init_bias() == 0.0
    with pytest.raises(ValueError, match="prior_prob"):
        FederatedLoss(prior_prob=1.0)
    z = torch.randn(4, C + 1)
    torch.testing.assert_close(loss.scores(z), torch.sigmoid(z))
