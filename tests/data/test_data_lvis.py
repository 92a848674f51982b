import json
import logging
import pickle

import numpy as np
import pytest
import torch

from ltseg.data.category_stats import CategoryStats
from ltseg.data.lvis import CorruptImageError, LVISDataset, _image_file_name
from ltseg.data.masks import BitMasks, PolygonMasks
from ltseg.data.transforms import PIXEL_MEAN, PIXEL_STD, DetectionTransform
from tests.fixtures.lvis_fixture import base_dict, write_fixture
from tests.lvis_oracle import LVIS


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("v1"), "v1")


@pytest.mark.parametrize("version", ["v1", "v0.5", "coco"])
def test_reads_all_formats(tmp_path, version):
    ann, root, data = write_fixture(tmp_path, version)
    ds = LVISDataset(ann, root)
    assert len(ds) == 4 and ds.image_ids.tolist() == [1, 2, 3, 4]
    assert ds.category_ids == (1, 3, 7)                       # contiguous = ascending id order
    assert ds.skipped == {"crowd": 1, "degenerate_box": 1, "short_polygon": 2, "no_segmentation": 1}
    s = ds[0]
    assert s["image"].shape == (3, 48, 64) and s["image"].dtype == torch.float32
    torch.testing.assert_close(s["boxes"], torch.tensor([[4.0, 12, 24, 30], [30, 2, 60, 14], [33, 18, 58, 43]]))
    assert s["labels"].tolist() == [0, 1, 2]                  # crowd annotation 13 ignored
    assert s["orig_size"] == (48, 64) and s["image_size"] == (48, 64) and s["image_id"] == 1
    s2 = ds[1]
    if version == "coco":
        assert s2["neg_category_ids"].numel() == 0 and s2["not_exhaustive_category_ids"].numel() == 0
    else:
        assert s2["neg_category_ids"].tolist() == [2]         # category 7
        assert s2["not_exhaustive_category_ids"].tolist() == [0, 1]
    assert s2["pos_category_ids"].tolist() == [0, 1]
    for key in ("pos_category_ids", "neg_category_ids", "not_exhaustive_category_ids", "labels"):
        assert s2[key].dtype == torch.int64


def test_empty_image_sample(v1):
    ds = LVISDataset(*v1[:2])
    s = ds[2]
    assert s["boxes"].shape == (0, 4) and s["labels"].shape == (0,) and len(s["masks"]) == 0
    assert s["neg_category_ids"].tolist() == [0, 1]
    assert ds.image_labels(2).size == 0


def test_masks_match_official_lvis_api(v1):
    ann, root, data = v1
    ds = LVISDataset(ann, root)
    api = LVIS(str(ann))
    for i, image_id in enumerate(ds.image_ids.tolist()):
        target = ds.raw_target(i)
        kept = [a for a in data["annotations"] if a["image_id"] == image_id and a["id"] not in (13, 41, 42)]
        assert len(kept) == len(target["labels"])
        dense = target["masks"].to_bitmasks().tensor.numpy()
        for k, a in enumerate(kept):
            ref = api.ann_to_mask(api.anns[a["id"]]).astype(bool)
            if a["id"] == 43:                                    # its 2-point part is dropped
                ref = api.ann_to_mask({**api.anns[43], "segmentation": a["segmentation"][:1]}).astype(bool)
            assert np.array_equal(dense[k], ref), a["id"]


def test_mask_types(v1):
    ds = LVISDataset(*v1[:2])
    assert isinstance(ds[0]["masks"], BitMasks)                # has an RLE instance -> dense
    assert isinstance(ds[3]["masks"], PolygonMasks)            # polygons only -> lazy
    assert len(ds[3]["masks"].polygons[1]) == 1                # multi-part annotation lost its short part
    multi = ds.raw_target(0)
    assert multi["masks"].tensor[1].sum() > 0


def test_stats_from_train_file_and_given_to_val(v1):
    ann, root, _ = v1
    train = LVISDataset(ann, root)
    ref = CategoryStats.from_json(ann)
    assert train.stats.category_ids == ref.category_ids
    assert torch.equal(train.stats.image_count, ref.image_count)
    assert train.stats.split == "train"
    val = LVISDataset(ann, root, stats=train.stats)
    assert val.stats is train.stats


def test_sampler_queries(v1):
    ds = LVISDataset(*v1[:2])
    assert [ds.image_labels(i).tolist() for i in range(4)] == [[0, 1, 2], [0, 1], [], [0, 1]]
    np.testing.assert_allclose(ds.aspect_ratios(), [64 / 48, 40 / 60, 1.0, 1.0])
    assert ds.file_name(0) == "train2017/000000000001.png"


def test_file_name_rules():
    both = {"id": 5, "file_name": "COCO_val2014_000000000005.jpg",
            "coco_url": "http://images.cocodataset.org/val2017/000000000005.jpg"}
    assert _image_file_name(both, "f") == "000000000005.jpg"
    assert _image_file_name({"id": 5, "coco_url": both["coco_url"]}, "f") == "val2017/000000000005.jpg"
    assert _image_file_name({"id": 5, "file_name": both["file_name"]}, "f") == "000000000005.jpg"
    assert _image_file_name({"id": 5, "file_name": "a/b.png"}, "f") == "a/b.png"
    with pytest.raises(ValueError, match="f: image 5 has neither"):
        _image_file_name({"id": 5}, "f")


def test_compact_storage_and_pickle(v1):
    ds = LVISDataset(*v1[:2])
    for name, value in vars(ds).items():
        assert not isinstance(value, (list, tuple, set)), name
        if isinstance(value, dict):
            assert len(value) <= 4, name
    ds2 = pickle.loads(pickle.dumps(ds))
    assert torch.equal(ds2[0]["image"], ds[0]["image"])


def test_normalisation_and_seeded_transform(v1):
    ann, root, _ = v1
    plain = LVISDataset(ann, root)
    raw = plain.load_image(0).float()
    mean, std = torch.tensor(PIXEL_MEAN).view(3, 1, 1), torch.tensor(PIXEL_STD).view(3, 1, 1)
    torch.testing.assert_close(plain[0]["image"], (raw - mean) / std)
    ds = LVISDataset(ann, root, transform=DetectionTransform([32, 64, 96], 200, 0.5))
    a, b = ds[(0, 123)], ds[(0, 123)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
    sizes = {ds[(0, s)]["image_size"] for s in range(20)}
    assert len(sizes) == 3
    assert torch.equal(ds[0]["image"], ds[0]["image"])        # int index: seed from (dataset seed, index)


# ---------------------------------------------------------------------- bad input
def test_missing_image_file(tmp_path):
    ann, root, _ = write_fixture(tmp_path, "coco")
    (root / "img_2.png").unlink()
    ds = LVISDataset(ann, root)
    with pytest.raises(FileNotFoundError, match=r"img_2\.png.*image id 2"):
        ds[1]


def test_corrupt_image(tmp_path):
    ann, root, _ = write_fixture(tmp_path, "coco")
    (root / "img_3.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    ds = LVISDataset(ann, root)
    with pytest.raises(CorruptImageError, match=r"img_3\.png.*image id 3") as e:
        ds[2]
    assert e.value.image_id == 3 and e.value.file.endswith("img_3.png")
    assert isinstance(e.value, OSError)


def test_image_size_disagrees_with_annotation(tmp_path):
    data = base_dict()
    ann, root, _ = write_fixture(tmp_path, "coco", data)
    data = json.loads(ann.read_text())
    data["images"][3]["height"] = 41
    ann.write_text(json.dumps(data))
    with pytest.raises(CorruptImageError, match=r"img_4\.png.*image id 4.*differs"):
        LVISDataset(ann, root)[3]


def _write_bad(tmp_path, mutate, version="coco"):
    data = base_dict()
    mutate(data)
    return write_fixture(tmp_path, version, data)


def test_json_without_categories(tmp_path):
    ann, root, _ = _write_bad(tmp_path, lambda d: d.pop("categories"))
    with pytest.raises(ValueError, match=r"ann\.json.*'categories'"):
        LVISDataset(ann, root)


def test_unknown_category_id(tmp_path):
    ann, root, _ = _write_bad(tmp_path, lambda d: d["annotations"][4].update(category_id=99))
    with pytest.raises(ValueError, match=r"ann\.json.*annotation 20.*category_id 99"):
        LVISDataset(ann, root)


def test_unknown_image_id(tmp_path):
    ann, root, _ = _write_bad(tmp_path, lambda d: d["annotations"][0].update(image_id=555))
    with pytest.raises(ValueError, match=r"ann\.json.*annotation 10.*image_id 555"):
        LVISDataset(ann, root)


def test_annotation_without_bbox(tmp_path):
    ann, root, _ = _write_bad(tmp_path, lambda d: d["annotations"][1].pop("bbox"))
    with pytest.raises(ValueError, match=r"ann\.json.*annotation 11.*'bbox'"):
        LVISDataset(ann, root)


def test_image_without_size(tmp_path):
    ann, root, _ = write_fixture(tmp_path, "coco")
    data = json.loads(ann.read_text())
    del data["images"][2]["height"]
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"ann\.json.*image 3 has no \['height'\]"):
        LVISDataset(ann, root)


def test_unknown_category_in_neg_set(tmp_path):
    ann, root, _ = _write_bad(tmp_path, lambda d: d["images"][0].update(neg_category_ids=[42]), "v1")
    with pytest.raises(ValueError, match=r"ann\.json.*image 1.*\[42\].*neg_category_ids"):
        LVISDataset(ann, root)


def test_val_category_not_in_train_stats(v1, tmp_path):
    ann, root, _ = v1
    train = LVISDataset(ann, root)
    ann2, root2, _ = _write_bad(tmp_path, lambda d: d["categories"].append({"id": 100, "name": "x"}))
    with pytest.raises(ValueError, match=r"ann\.json.*\[100\].*training categories"):
        LVISDataset(ann2, root2, stats=train.stats)


def test_degenerate_and_short_polygons_logged(tmp_path, caplog):
    ann, root, _ = write_fixture(tmp_path, "coco")
    with caplog.at_level(logging.WARNING, logger="ltseg.data.lvis"):
        ds = LVISDataset(ann, root)
    text = caplog.text
    assert "ann.json" in text and "degenerate box" in text and "[41]" in text
    assert "fewer than 3 points" in text and "42" in text and "43" in text
    assert ds.num_instances(3) == 2


@pytest.mark.parametrize("content,match", [("", "is empty"), ("{}", "is empty"), ("[1, 2", "not valid JSON"),
                                           ('{"categories": [], "images": []}', "no images")])
def test_empty_or_broken_annotation_file(tmp_path, content, match):
    ann = tmp_path / "bad.json"
    ann.write_text(content)
    with pytest.raises(ValueError, match=rf"bad\.json.*{match}"):
        LVISDataset(ann, tmp_path)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        LVISDataset(tmp_path / "nope.json", tmp_path)
