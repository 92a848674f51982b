"""AP1..AP4 instance-count bins from TRAINING counts, and the per-category table."""
import warnings

import numpy as np
import pytest

from ltseg.evaluation import LVISEvaluator, evaluate_results
from ltseg.evaluation.bins import BIN_PRESETS, bin_ap, bin_edges
from ltseg.evaluation.cases import make_case
from tests.evaluation.eval_helpers import dump
from tests.lvis_oracle import official_eval


@pytest.fixture(scope="module")
def case():
    gt, res = make_case(21, num_images=12, num_categories=16, size=(200, 240))
    train_counts = {c["id"]: n for c, n in zip(gt["categories"], [0, 3, 9, 10, 50, 99, 100, 999, 1000,
                                                                   5000, 7, 12, 400, 8000, 20, 1])}
    return gt, res, train_counts


def test_bins_use_training_counts_and_match_per_category_official_ap(case, tmp_path):
    gt, res, counts = case
    train = {"categories": [{"id": c, "instance_count": n, "image_count": max(n // 2, 1)}
                            for c, n in counts.items()]}
    m = LVISEvaluator(gt, "segm", train_stats=dump(tmp_path / "train.json", train), workers=1).evaluate(res)
    prec = official_eval(gt, res, "segm").eval["precision"][:, :, :, 0]
    ids = sorted(counts)
    ap_k = np.array([np.mean(p[p > -1]) if (p > -1).any() else -1 for p in prec.transpose(2, 0, 1)])
    np.testing.assert_array_equal(m.per_category["AP"], ap_k)
    n = np.array([counts[c] for c in ids])
    for b, (lo, hi) in enumerate([(0, 10), (10, 100), (100, 1000), (1000, np.inf)]):
        sel = (ap_k > -1) & (n >= lo) & (n < hi)
        assert m[f"AP{b + 1}"] == (np.mean(ap_k[sel]) if sel.any() else -1)
    assert list(m.per_category["train_instance_count"]) == list(n)


def test_counts_from_a_full_training_file_and_coco_lt_preset(case):
    gt, res, counts = case
    anns = [{"id": j, "image_id": j % 3, "category_id": c} for j, c in
            enumerate(c for c, n in counts.items() for _ in range(min(n, 30)))]
    train = {"categories": [{"id": c, "frequency": "f"} for c in counts], "annotations": anns}
    m = LVISEvaluator(gt, "bbox", bins="coco_lt", train_stats=train, workers=1).evaluate(res)
    got = dict(zip(m.per_category["id"], m.per_category["train_instance_count"]))
    assert got == {c: min(n, 30) for c, n in counts.items()}
    assert list(bin_edges("coco_lt")) == [0, 20, 400, 8000, np.inf] == list(BIN_PRESETS["coco_lt"])


def test_fallback_to_gt_counts_warns(case):
    gt, res, _ = case
    with pytest.warns(UserWarning, match="VALIDATION counts"):
        m = LVISEvaluator(gt, "bbox", workers=1).evaluate(res)
    assert list(m.per_category["train_instance_count"]) == [c["instance_count"] for c in
                                                            sorted(gt["categories"], key=lambda c: c["id"])]


def test_missing_train_categories_warn_and_count_zero(case):
    gt, res, counts = case
    train = {"categories": [{"id": c, "instance_count": n} for c, n in list(counts.items())[1:]]}
    with pytest.warns(UserWarning, match="absent from the training statistics"):
        LVISEvaluator(gt, "bbox", train_stats=train)
    with pytest.raises(ValueError, match="has no 'instance_count'"):
        LVISEvaluator(gt, "bbox", train_stats={"categories": [{"id": 1}]})


def test_bin_ap_empty_bin_is_minus_one_and_custom_edges():
    ap = np.array([0.5, -1.0, 0.25, 0.1])
    n = np.array([5, 50, 500, 50])
    assert bin_ap(ap, n, bin_edges("lvis")) == {"AP1": 0.5, "AP2": 0.1, "AP3": 0.25, "AP4": -1.0}
    assert bin_ap(ap, n, bin_edges([0, 100, np.inf])) == {"AP1": np.mean([0.5, 0.1]), "AP2": 0.25}
    with pytest.raises(ValueError, match="ascending"):
        bin_edges([10, 5])
    with pytest.raises(ValueError, match="bins='foo'"):
        bin_edges("foo")


def test_evaluate_results_metric_keys(case):
    gt, res, _ = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = evaluate_results(gt, res)
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
            "AR@300", "ARs@300", "ARm@300", "ARl@300", "AP1", "AP2", "AP3", "AP4"]
    assert list(out) == ["bbox", "segm"] and all(list(m) == keys for m in out.values())
