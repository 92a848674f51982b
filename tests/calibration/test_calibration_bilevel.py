import pytest
import torch
from scipy.stats import chisquare

from ltseg.calibration.bilevel import BilevelSampler, select_balanced_proposals


def _sampler(class_images, n=16, m=1, seed=0, **kw):
    return BilevelSampler(class_images, classes_per_step=n, images_per_class=m,
                          generator=torch.Generator().manual_seed(seed), **kw)


def test_class_draw_is_uniform_chi_square():
    # heavily imbalanced image pools: the class draw must ignore pool size
    class_images = [list(range(100))] + [[100 + k] for k in range(9)]
    s = _sampler(class_images, n=16)
    counts = torch.zeros(10)
    for _ in range(2000):
        counts += torch.bincount(s.sample().classes, minlength=10)
    assert counts.sum() == 32000
    assert chisquare(counts.numpy()).pvalue > 1e-3


def test_chi_square_detects_a_biased_draw():
    # sanity of the test itself: image-frequency sampling (biased) fails the same check
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([10.0] + [1.0] * 9)
    counts = torch.bincount(torch.multinomial(p, 32000, replacement=True, generator=g), minlength=10)
    assert chisquare(counts.numpy()).pvalue < 1e-6


def test_draw_with_replacement_and_images_contain_class():
    class_images = [[0, 1], [2], [3, 4, 5]]
    s = _sampler(class_images, n=8, m=2)
    repeated = False
    for _ in range(50):
        d = s.sample()
        assert d.classes.shape == (8,) and d.image_indices.shape == (16,)
        assert torch.equal(d.image_classes, d.classes.repeat_interleave(2))
        for img, k in zip(d.image_indices.tolist(), d.image_classes.tolist()):
            assert img in class_images[k]
        repeated |= d.classes.unique().numel() < 8
    assert repeated  # 8 draws from 3 classes must repeat


def test_images_uniform_within_class():
    s = _sampler([list(range(5))], n=1, m=1)
    counts = torch.bincount(torch.cat([s.sample().image_indices for _ in range(5000)]), minlength=5)
    assert chisquare(counts.numpy()).pvalue > 1e-3


def test_zero_image_classes_excluded_and_reported():
    with pytest.warns(UserWarning, match=r"2 of 4 classes have zero training images.*cat, dog"):
        s = _sampler([[0], [], [1, 2], []], n=64, names=["a", "cat", "b", "dog"])
    assert s.excluded.tolist() == [1, 3]
    for _ in range(20):
        assert set(s.sample().classes.tolist()) <= {0, 2}


def test_no_class_with_images_is_an_error():
    with pytest.raises(ValueError, match="no class has a training image"):
        _sampler([[], []])


def test_from_image_labels_and_bad_label():
    with pytest.warns(UserWarning, match="excluded"):
        s = BilevelSampler.from_image_labels([torch.tensor([0, 0, 2]), torch.tensor([2])], 3,
                                             generator=torch.Generator().manual_seed(0))
    assert [x.tolist() for x in s.class_images] == [[0], [], [0, 1]]
    with pytest.raises(ValueError, match="image 1 has label 5"):
        BilevelSampler.from_image_labels([torch.tensor([0]), torch.tensor([5])], 3)


def test_deterministic_given_generator():
    a = [_sampler([[0, 1], [2, 3]], seed=3).sample().image_indices for _ in range(2)]
    assert torch.equal(a[0], a[1])


def test_proposal_selection_fg_bg_one_to_one():
    C = 5
    g = torch.Generator().manual_seed(0)
    # image 0 drawn for class 1, image 1 for class 3
    labels = torch.tensor([1, 1, 2, C, C, C, C, 3, 1, C, C, C, C, C])
    roi_image = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    idx = select_balanced_proposals(labels, roi_image, torch.tensor([1, 3]), C, generator=g)
    fg, bg = idx[labels[idx] != C], idx[labels[idx] == C]
    assert sorted(fg.tolist()) == [0, 1, 7]          # class 2 in image 0 and class 1 in image 1 dropped
    assert bg.numel() == fg.numel() == 3 and bg.unique().numel() == 3


def test_proposal_selection_bg_shortage_and_ratio_over_many_draws():
    C = 3
    labels = torch.tensor([0, 0, 0, C])
    idx = select_balanced_proposals(labels, torch.zeros(4, dtype=torch.long), torch.tensor([0]), C)
    assert sorted(idx.tolist()) == [0, 1, 2, 3]
    g = torch.Generator().manual_seed(1)
    picked = torch.zeros(12)
    labels = torch.tensor([0] * 2 + [C] * 10)
    for _ in range(3000):
        idx = select_balanced_proposals(labels, torch.zeros(12, dtype=torch.long), torch.tensor([0]), C, generator=g)
        assert (labels[idx] == C).sum() == 2
        picked[idx] += 1
    assert chisquare(picked[2:].numpy()).pvalue > 1e-3  # background drawn uniformly
