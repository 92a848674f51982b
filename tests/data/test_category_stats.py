import json

import pytest
import torch

from ltseg.data.category_stats import CategoryStats, frequency_group


def test_lvis_frequency_rule_boundaries():
    assert [frequency_group(n) for n in (0, 1, 10, 11, 100, 101)] == ["r", "r", "r", "c", "c", "f"]


def test_from_counts_views():
    s = CategoryStats.from_counts([1, 10, 11, 100, 101], [1, 12, 30, 100, 900], 1000, category_ids=[5, 7, 9, 11, 13])
    assert s.num_classes == 5
    assert s.frequency == ("r", "r", "c", "c", "f")
    assert s.tail.tolist() == [True, True, True, True, False]
    assert s.group_index.tolist() == [0, 0, 1, 1, 2]
    torch.testing.assert_close(s.image_freq, torch.tensor([1, 10, 11, 100, 101], dtype=torch.float64) / 1000)
    assert s.index_of(9) == 2
    with pytest.raises(KeyError, match="unknown category id 8"):
        s.index_of(8)
    assert CategoryStats.from_dict(s.to_dict()) == s


def test_from_counts_rejects_inconsistent_counts():
    with pytest.raises(ValueError, match="instance_count"):
        CategoryStats.from_counts([3], [2], 10)
    with pytest.raises(ValueError, match="num_images"):
        CategoryStats.from_counts([1], [1], 0)


def _lvis(annotations, images=3):
    return {
        "images": [{"id": i} for i in range(1, images + 1)],
        "categories": [{"id": 20, "name": "b"}, {"id": 10, "name": "a"}],
        "annotations": annotations,
    }


def test_from_lvis_dict_counts_images_and_instances(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 10},
        {"id": 2, "image_id": 1, "category_id": 10},
        {"id": 3, "image_id": 2, "category_id": 10},
        {"id": 4, "image_id": 2, "category_id": 20},
        {"id": 5, "image_id": 3, "category_id": 20, "iscrowd": 1},
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(_lvis(anns)))
    s = CategoryStats.from_json(path)
    assert s.category_ids == (10, 20)  # ascending ids -> contiguous indices
    assert s.names == ("a", "b")
    assert s.image_count.tolist() == [2, 1]
    assert s.instance_count.tolist() == [3, 1]  # crowd not counted
    assert s.num_images == 3


def test_from_lvis_dict_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="train.json: no 'categories'"):
        CategoryStats.from_lvis_dict({"images": []}, source="train.json")
    with pytest.raises(ValueError, match="annotation 7 has unknown category_id 99"):
        CategoryStats.from_lvis_dict(_lvis([{"id": 7, "image_id": 1, "category_id": 99}]))
    with pytest.raises(ValueError, match="no images"):
        CategoryStats.from_lvis_dict(_lvis([], images=0))


def test_require_train_refuses_val_statistics():
    s = CategoryStats.from_counts([1], [1], 1, split="val")
    with pytest.raises(ValueError, match="'val' split"):
        s.require_train("DropLoss")
