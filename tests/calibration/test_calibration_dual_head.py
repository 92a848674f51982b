import pytest
import torch

from ltseg.calibration.dual_head import calibrated_classes, combine_scores

COUNTS = torch.tensor([5, 100, 300, 301, 2000])


def test_rules_on_hand_example():
    assert calibrated_classes(COUNTS).tolist() == [True, True, True, False, False]           # N <= 300
    assert calibrated_classes(COUNTS, rule="code").tolist() == [True, False, False, False, False]  # N < 100
    assert calibrated_classes(COUNTS, 100, "paper").tolist() == [True, True, False, False, False]


def test_select_per_class_and_background_from_original():
    p_orig = torch.tensor([[0.10, 0.20, 0.05, 0.30, 0.15, 0.20]], dtype=torch.float64)
    p_cal = torch.tensor([[0.40, 0.01, 0.02, 0.03, 0.04, 0.50]], dtype=torch.float64)
    p = combine_scores(p_orig, p_cal, calibrated_classes(COUNTS))
    assert torch.equal(p, torch.tensor([[0.40, 0.01, 0.02, 0.30, 0.15, 0.20]], dtype=torch.float64))
    p = combine_scores(p_orig, p_cal, calibrated_classes(COUNTS, rule="code"))
    assert torch.equal(p, torch.tensor([[0.40, 0.20, 0.05, 0.30, 0.15, 0.20]], dtype=torch.float64))


def test_avg():
    p_orig, p_cal = torch.rand(3, 6, dtype=torch.float64), torch.rand(3, 6, dtype=torch.float64)
    p = combine_scores(p_orig, p_cal, calibrated_classes(COUNTS), combine="avg")
    torch.testing.assert_close(p, (p_orig + p_cal) / 2, rtol=0, atol=1e-15)


@pytest.mark.parametrize("t,head", [(1, "original"), (4, "original"), (2000, "calibrated")])
def test_threshold_outside_range_warns(t, head):
    with pytest.warns(UserWarning, match=f"every class takes its score from the {head} head"):
        calibrated_classes(COUNTS, t)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown rule"):
        calibrated_classes(COUNTS, rule="median")
    with pytest.raises(ValueError, match="unknown combine"):
        combine_scores(torch.rand(2, 6), torch.rand(2, 6), torch.ones(5, dtype=torch.bool), "max")
    with pytest.raises(ValueError, match="do not match 4 classes"):
        combine_scores(torch.rand(2, 6), torch.rand(2, 6), torch.ones(4, dtype=torch.bool))
