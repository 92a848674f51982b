import torch

from ltseg.modeling.matcher import BalancedSampler, Matcher


def test_no_ground_truth_is_all_background():
    matched, labels = Matcher(0.5, 0.5)(torch.zeros(0, 7))
    assert matched.tolist() == [0] * 7 and labels.tolist() == [0] * 7


def test_thresholds_and_ignore_band():
    iou = torch.tensor([[0.8, 0.5, 0.35, 0.1, 0.69], [0.1, 0.2, 0.3, 0.25, 0.7]])
    matched, labels = Matcher(0.7, 0.3)(iou)
    assert labels.tolist() == [1, -1, -1, 0, 1]
    assert matched.tolist() == [0, 0, 0, 1, 1]


def test_all_background():
    iou = torch.full((2, 4), 0.2)
    _, labels = Matcher(0.5, 0.5)(iou)
    assert labels.tolist() == [0, 0, 0, 0]


def test_low_quality_matches():
    # gt 1's best prediction (IoU 0.4, tied twice) becomes foreground; gt 2 has no overlap at all
    iou = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.2, 0.4, 0.4, 0.0], [0.0, 0.0, 0.0, 0.0]])
    m = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    matched, labels = m(iou)
    assert labels.tolist() == [1, 1, 1, 0]
    assert matched[:3].tolist() == [0, 1, 1]
    _, plain = Matcher(0.7, 0.3)(iou)
    assert plain.tolist() == [1, -1, -1, 0]


def test_sampler_fraction_and_shortage():
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 5, dtype=torch.int8)
    pos, neg = BalancedSampler(32, 0.25)(labels, torch.Generator().manual_seed(0))
    assert len(pos) == 8 and len(neg) == 24
    assert bool((labels[pos] == 1).all()) and bool((labels[neg] == 0).all())
    assert len(set(pos.tolist())) == 8
    # fewer positives than the quota: the rest are negatives
    pos, neg = BalancedSampler(200, 0.25)(labels, torch.Generator().manual_seed(0))
    assert len(pos) == 10 and len(neg) == 100
    # all background
    pos, neg = BalancedSampler(16, 0.5)(torch.zeros(40, dtype=torch.int8))
    assert len(pos) == 0 and len(neg) == 16


def test_sampler_deterministic_with_generator():
    labels = torch.tensor([1] * 50 + [0] * 500, dtype=torch.int8)
    s = BalancedSampler(64, 0.25)
    a = s(labels, torch.Generator().manual_seed(3))
    b = s(labels, torch.Generator().manual_seed(3))
    c = s(labels, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
