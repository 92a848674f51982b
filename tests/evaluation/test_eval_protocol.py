"""The subtle lvis-api behaviours (spec section 9), each on a hand-built case, against the oracle."""
import numpy as np
import pytest

from ltseg.evaluation.params import AREA_RNG, EPS, IOU_THRS, REC_THRS
from tests.evaluation.eval_helpers import check, det, gt_dict

NEG = [{"id": 1, "neg_category_ids": [2], "not_exhaustive_category_ids": []}]


def test_constants_are_numpys_linspace_doubles():
    assert np.array_equal(IOU_THRS, np.linspace(0.5, 0.95, 10))
    assert np.array_equal(REC_THRS, np.linspace(0.0, 1.0, 101))
    assert IOU_THRS[8] == 0.8999999999999999 and REC_THRS[35] == 0.35000000000000003
    assert EPS == 2.220446049250313e-16 and AREA_RNG[1, 1] == 1024.0


def test_cap_is_across_categories_before_the_federated_filter():
    """Three unrelated-category detections outrank the TP and push it out of a cap of 3."""
    gt = gt_dict([(1, 1, 1, [10, 10, 50, 50])])
    dets = [det(1, 3, [0, 0, 20, 20], 0.9), det(1, 3, [5, 5, 20, 20], 0.9),
            det(1, 3, [9, 9, 20, 20], 0.8), det(1, 1, [10, 10, 50, 50], 0.7)]
    m = check(gt, dets, max_dets=3)
    assert m["bbox"]["AP"] == 0.0
    assert check(gt, dets, max_dets=4)["bbox"]["AP"] == pytest.approx(1, abs=1e-15)


def test_cap_ties_keep_input_order():
    gt = gt_dict([(1, 1, 1, [10, 10, 50, 50])])
    dets = [det(1, 3, [0, 0, 20, 20], 0.5), det(1, 1, [10, 10, 50, 50], 0.5), det(1, 3, [9, 9, 20, 20], 0.5)]
    assert check(gt, dets, max_dets=1)["bbox"]["AP"] == 0.0
    assert check(gt, dets[1:], max_dets=1)["bbox"]["AP"] == pytest.approx(1, abs=1e-15)


def test_zero_area_detection_is_dropped_not_a_false_positive():
    gt = gt_dict([(1, 1, 1, [10, 10, 50, 50])])
    dets = [det(1, 1, [100, 100, 0, 30], 0.99), det(1, 1, [10, 10, 50, 50], 0.5)]
    assert check(gt, dets, iou_types=("bbox",))["bbox"]["AP"] == pytest.approx(1, abs=1e-15)


def test_federated_filter_neg_and_unrelated_categories():
    gt = gt_dict([(1, 1, 1, [10, 10, 50, 50])], images=NEG)
    base = [det(1, 1, [10, 10, 50, 50], 0.5)]
    assert check(gt, base + [det(1, 3, [100, 100, 20, 20], 0.9)])["bbox"]["AP"] == pytest.approx(1, abs=1e-15)  # dropped
    m = check(gt, base + [det(1, 2, [100, 100, 20, 20], 0.9)])                      # neg: FP on c2
    assert m["bbox"].summary["APc"] == -1            # but c2 has no GT, so it is not averaged


def test_not_exhaustive_unmatched_ignored_matched_kept():
    images = [{"id": 1, "neg_category_ids": [], "not_exhaustive_category_ids": [1]}]
    gt = gt_dict([(1, 1, 1, [10, 10, 50, 50])], images=images)
    dets = [det(1, 1, [120, 120, 30, 30], 0.9), det(1, 1, [12, 12, 50, 50], 0.5)]
    m = check(gt, dets)
    assert m["bbox"]["AP50"] == pytest.approx(1, abs=1e-15)              # the unmatched, higher-scored one is ignored


@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_iou_ties_go_to_the_later_gt(order):
    """GTs A and B at equal IoU to D1; D2 duplicates A. AP50 depends on the JSON order."""
    boxes = {1: [0, 0, 40, 40], 2: [20, 0, 40, 40]}                 # A, B
    gt = gt_dict([(a, 1, 1, boxes[a]) for a in order])
    dets = [det(1, 1, [10, 0, 40, 40], 0.9), det(1, 1, boxes[1], 0.8)]
    ap50 = check(gt, dets)["bbox"]["AP50"]
    assert ap50 == pytest.approx(1.0 if order == (1, 2) else 51 / 101, abs=1e-12)  # spec: 1.0 / 0.505


def test_iou_equal_to_threshold_matches():
    gt = gt_dict([(1, 1, 1, [0, 0, 40, 40])])
    m = check(gt, [det(1, 1, [0, 0, 40, 30], 0.9)])                  # IoU exactly 0.75
    assert m["bbox"].precision[5, 0, 0, 0] > 0 and m["bbox"].precision[6, 0, 0, 0] == 0


def test_area_1024_counts_as_small_and_medium():
    gt = gt_dict([(1, 1, 1, [0, 0, 32, 32])])
    m = check(gt, [det(1, 1, [0, 0, 32, 32], 0.9)])["bbox"]
    assert m["APs"] == m["APm"] == pytest.approx(1, abs=1e-15) and m["APl"] == -1


def test_accumulation_ties_rank_by_image_id_then_input_order():
    images = [{"id": i, "neg_category_ids": [], "not_exhaustive_category_ids": []} for i in (1, 2)]
    gt = gt_dict([(1, 1, 1, [10, 10, 40, 40]), (2, 2, 1, [10, 10, 40, 40])], images=images)
    dets = [det(2, 1, [10, 10, 40, 40], 0.5), det(1, 1, [100, 100, 40, 40], 0.5)]
    check(gt, dets)


def test_perfect_detector_scores_one_minus_eps_and_no_gt_categories_are_excluded():
    gt = gt_dict([(1, 1, 1, [10, 10, 40, 40]), (2, 1, 2, [60, 60, 40, 40])])
    m = check(gt, [det(1, 1, [10, 10, 40, 40], 0.9), det(1, 2, [60, 60, 40, 40], 0.8)])["bbox"]
    assert m["AP"] == pytest.approx(1, abs=1e-15) and m["APr"] == -1 and (m.precision[:, :, 2] == -1).all()


def test_recall_grid_point_035_is_not_reached_at_7_of_20():
    anns = [(k + 1, 1, 1, [10 * (k % 5) * 4, 40 * (k // 5), 30, 30]) for k in range(20)]
    gt = gt_dict(anns)
    dets = [det(1, 1, anns[k][3], 0.9 - 0.01 * k) for k in range(7)]
    m = check(gt, dets, iou_types=("bbox",))["bbox"]
    assert m.precision[0, 34, 0, 0] > 0 and m.precision[0, 35, 0, 0] == 0


def test_gt_id_zero_is_never_matched():
    gt = gt_dict([(0, 1, 1, [10, 10, 40, 40])])
    m = check(gt, [det(1, 1, [10, 10, 40, 40], 0.9)])["bbox"]
    assert m["AP"] == 0 and m["AR@300"] == 0


def test_ignore_flag_honoured_and_iscrowd_not_read():
    gt = gt_dict([(1, 1, 1, [10, 10, 40, 40]), (2, 1, 1, [100, 100, 40, 40])])
    gt["annotations"][0]["ignore"] = 1
    gt["annotations"][1]["iscrowd"] = 1
    check(gt, [det(1, 1, [10, 10, 40, 40], 0.9), det(1, 1, [100, 100, 40, 40], 0.8),
               det(1, 1, [101, 100, 40, 40], 0.7)])


def test_multi_part_and_odd_length_polygons():
    gt = gt_dict([(1, 1, 1, [10, 10, 90, 90])])
    gt["annotations"][0]["segmentation"] = [[10, 10, 50, 10, 50, 50, 10, 50, 7],
                                            [60, 60, 100, 60, 100, 100, 60, 100]]
    check(gt, [det(1, 1, [10, 10, 40, 40], 0.9), det(1, 1, [60, 60, 40, 40], 0.8),
               det(1, 1, [10, 10, 90, 90], 0.7)], iou_types=("segm",))


def test_rle_ground_truth_compressed_and_uncompressed():
    import pycocotools.mask as mask_utils
    from ltseg.evaluation.cases import _uncompressed
    gt = gt_dict([(1, 1, 1, [10, 10, 40, 40]), (2, 1, 1, [80, 80, 50, 30])])
    rle = mask_utils.frPyObjects(gt["annotations"][0]["segmentation"], 200, 200)[0]
    gt["annotations"][0]["segmentation"] = {"size": [200, 200], "counts": rle["counts"].decode()}
    gt["annotations"][1]["segmentation"] = _uncompressed(
        mask_utils.frPyObjects(gt["annotations"][1]["segmentation"], 200, 200)[0])
    check(gt, [det(1, 1, [12, 10, 40, 40], 0.9), det(1, 1, [80, 85, 50, 30], 0.8)], iou_types=("segm",))


def test_images_without_annotations_and_missing_detections():
    images = [{"id": i, "neg_category_ids": [1], "not_exhaustive_category_ids": []} for i in (3, 5)]
    images[1]["neg_category_ids"] = []
    gt = gt_dict([(1, 5, 1, [10, 10, 40, 40]), (2, 5, 2, [10, 10, 40, 40])], images=images)
    check(gt, [det(3, 1, [10, 10, 40, 40], 0.9), det(5, 1, [10, 10, 40, 40], 0.4)])


def test_missing_federated_keys_raise_naming_the_image():
    from ltseg.evaluation import LVISEvaluator
    gt = gt_dict([(1, 1, 1, [10, 10, 40, 40])], images=[{"id": 7, "not_exhaustive_category_ids": []}])
    with pytest.raises(KeyError, match="image id 7 lacks 'neg_category_ids'"):
        LVISEvaluator(gt, "bbox", train_stats=gt)
