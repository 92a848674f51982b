"""Bad input: one clear error naming the first offending entry (index and ids) or file/key."""
import json
import math

import pytest

from ltseg.evaluation import LVISEvaluator, evaluate_results
from tests.evaluation.eval_helpers import det, dump, gt_dict

GT = gt_dict([(1, 1, 1, [10, 10, 40, 40])])


def good():
    return [det(1, 1, [10, 10, 40, 40], 0.9), det(1, 2, [50, 50, 20, 20], 0.8)]


def evaluate(results, iou_type="bbox"):
    return LVISEvaluator(GT, iou_type, train_stats=GT, workers=1).evaluate(results)


def test_results_file_not_a_list(tmp_path):
    path = dump(tmp_path / "r.json", {"image_id": 1})
    with pytest.raises(ValueError, match=r"r\.json: results must be a JSON list"):
        evaluate(path)


def test_results_file_not_json(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('[{"image_id": 1,')
    with pytest.raises(ValueError, match="not valid JSON"):
        evaluate(str(path))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.json"):
        evaluate("nope.json")


@pytest.mark.parametrize("field,value,message", [
    ("image_id", 99, r"\[1\] \(image_id=99, category_id=2, .*unknown image_id"),
    ("category_id", 42, r"\[1\] \(image_id=1, category_id=42, .*unknown category_id"),
    ("score", math.nan, r"\[1\] .*score is NaN"),
    ("bbox", [1.0, 2.0, math.inf, 3.0], r"\[1\] .*non-finite"),
    ("bbox", [1.0, 2.0, 3.0, -1.0], r"\[1\] .*negative width or height"),
])
def test_bad_detection_named_with_index_and_ids(field, value, message, tmp_path):
    res = good()
    res[1][field] = value
    with pytest.raises(ValueError, match=message):
        evaluate(res)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(res))                   # NaN / Infinity literals, as Python writes them
    with pytest.raises(ValueError, match=r"r\.json" + message):
        evaluate(str(path))


def test_first_offending_entry_across_shards(tmp_path):
    a, b = good(), good()
    b[1]["image_id"] = 77
    shards = [dump(tmp_path / "a.json", a), dump(tmp_path / "b.json", b)]
    with pytest.raises(ValueError, match=r"b\.json\[1\] \(image_id=77"):
        evaluate(shards)


def test_missing_keys_and_wrong_types():
    res = good()
    del res[1]["score"]
    with pytest.raises(ValueError, match=r"results\[1\] .*missing 'score'"):
        evaluate(res)
    res = good()
    res[0]["bbox"] = [1, 2, 3]
    with pytest.raises(ValueError, match=r"results\[0\] .*'bbox' must be 4 numbers"):
        evaluate(res)
    with pytest.raises(ValueError, match=r"results\[1\] is a int"):
        evaluate([good()[0], 5])


def test_missing_segmentation_for_segm():
    res = good()
    del res[1]["segmentation"]
    with pytest.raises(ValueError, match=r"results\[1\] \(image_id=1, category_id=2\): missing 'segmentation'"):
        evaluate(res, "segm")


def test_missing_bbox_when_first_result_has_one():
    res = good()
    del res[1]["bbox"]
    with pytest.raises(ValueError, match=r"results\[1\] .*missing 'bbox'"):
        evaluate(res, "bbox")


def test_bad_arguments_and_gt():
    with pytest.raises(ValueError, match="iou_type"):
        LVISEvaluator(GT, "keypoints")
    with pytest.raises(ValueError, match="iou_types"):
        evaluate_results(GT, good(), iou_types=["mask"])
    with pytest.raises(ValueError, match="backend"):
        evaluate_results(GT, good(), backend="fast")
    bad = gt_dict([(1, 1, 1, [10, 10, 40, 40])], cats=[{"id": 1, "frequency": "x"}])
    with pytest.raises(ValueError, match="category id 1 has frequency 'x'"):
        LVISEvaluator(bad, "bbox")
    with pytest.raises(FileNotFoundError, match="gt_missing.json"):
        LVISEvaluator("gt_missing.json", "bbox")
