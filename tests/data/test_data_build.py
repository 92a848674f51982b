import itertools
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ltseg.data.build import build_dataset, build_test_loader, build_train_loader, group_batches, shard_bounds
from ltseg.data.collate import Batch
from ltseg.data.lvis import CorruptImageError
from ltseg.data.samplers import RepeatFactorSampler, TrainingSampler
from tests.fixtures.lvis_fixture import base_dict, write_fixture

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"

# 8 images: ids 1-4 of the fixture plus 4 copies (ids 5-8) -> 4 landscape-or-square, 4 portrait
PORTRAIT = {2, 6, 7, 8}


def eight_images():
    d = base_dict()
    for k, new in enumerate((5, 6, 7, 8)):
        h, w = (40, 30) if new in PORTRAIT else (30, 40)
        d["images"].append({"id": new, "height": h, "width": w, "neg_category_ids": [],
                            "not_exhaustive_category_ids": []})
        d["annotations"].append({"id": 100 + k, "image_id": new, "category_id": 3, "iscrowd": 0,
                                 "segmentation": [[2, 2, 20, 2, 10, 20]], "bbox": [2, 2, 18, 18], "area": 1.0})
    return d


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvis")
    ann, image_root, _ = write_fixture(root, "v1", eight_images())
    cfg = OmegaConf.load(CONF / "lvis_v1.yaml")
    cfg.train.ann_file = cfg.val.ann_file = str(ann)
    cfg.train.image_root = cfg.val.image_root = str(image_root)
    cfg.num_classes = 3
    cfg.min_size_train, cfg.max_size_train = [24, 32, 40], 64
    cfg.min_size_test, cfg.max_size_test = 32, 64
    return cfg


def test_build_dataset_train_and_val(data_cfg):
    train = build_dataset(data_cfg, "train")
    val = build_dataset(data_cfg, "val", stats=train.stats)
    assert val.stats is train.stats and len(train) == 8
    assert train.transform.min_sizes == [24, 32, 40] and train.transform.flip_prob == 0.5
    assert val.transform.min_sizes == [32] and val.transform.flip_prob == 0.0
    assert min(val[0]["image_size"]) == 32
    val2 = build_dataset(data_cfg, "val")                         # stats from the train file
    assert val2.stats.split == "train" and val2.stats.category_ids == train.stats.category_ids


def test_num_classes_mismatch_names_both_numbers(data_cfg):
    cfg = data_cfg.copy()
    cfg.num_classes = 1203
    with pytest.raises(ValueError, match=r"data.num_classes=1203.*ann\.json defines 3 categories"):
        build_dataset(cfg, "train")


def test_unknown_split(data_cfg):
    with pytest.raises(KeyError, match="'test'"):
        build_dataset(data_cfg, "test")


def test_generator_runs_first(tmp_path):
    cfg = OmegaConf.load(CONF / "lvis_v1.yaml")
    cfg.generator = {"_target_": "tests.fixtures.lvis_fixture.write_fixture", "root": str(tmp_path), "version": "coco"}
    cfg.train = {"ann_file": str(tmp_path / "ann.json"), "image_root": str(tmp_path / "images")}
    cfg.num_classes = None
    assert not (tmp_path / "ann.json").exists()
    ds = build_dataset(cfg, "train")
    assert len(ds) == 4 and ds.stats.num_classes == 3


def test_group_batches():
    out = list(group_batches(range(10), 2, key=lambda i: i % 3 == 0))
    assert out == [[1, 2], [0, 3], [4, 5], [7, 8], [6, 9]]


def _loader(data_cfg, seed=0, workers=0, ipg=2, sampler_cls=TrainingSampler):
    ds = build_dataset(data_cfg, "train")
    sampler = sampler_cls(ds, seed=seed)
    return build_train_loader(ds, sampler, ipg, workers, aspect_grouping=True, size_divisibility=32)


def _summary(batch: Batch):
    return batch.image_ids, batch.image_sizes, batch.images.sum().item(), [t["boxes"].tolist() for t in batch.targets]


def test_train_loader_aspect_grouping_and_padding(data_cfg):
    loader = _loader(data_cfg)
    for batch in itertools.islice(loader, 12):
        assert isinstance(batch, Batch) and len(batch) == 2
        portrait = {i in PORTRAIT for i in batch.image_ids}
        assert len(portrait) == 1                                     # never mixed
        assert batch.images.shape[-1] % 32 == 0 and batch.images.shape[-2] % 32 == 0
        for (h, w), t in zip(batch.image_sizes, batch.targets):
            assert t["masks"].height == h and t["masks"].width == w


def test_train_loader_deterministic_and_resumable(data_cfg):
    ref = [_summary(b) for b in itertools.islice(_loader(data_cfg, seed=3), 10)]
    assert [_summary(b) for b in itertools.islice(_loader(data_cfg, seed=3), 10)] == ref
    assert [_summary(b) for b in itertools.islice(_loader(data_cfg, seed=4), 10)] != ref
    a = _loader(data_cfg, seed=3)
    it = iter(a)
    [next(it) for _ in range(4)]
    state = a.state_dict()
    assert state == {"sampler": {"seed": 3, "global_position": 0}, "batches": 4}
    b = _loader(data_cfg, seed=3)
    b.load_state_dict(state)
    assert [_summary(x) for x in itertools.islice(b, 6)] == ref[4:]
    assert b.state_dict()["batches"] == 10


def test_train_loader_same_batches_with_workers(data_cfg):
    ref = [_summary(b) for b in itertools.islice(_loader(data_cfg, seed=5, sampler_cls=RepeatFactorSampler), 5)]
    got = [_summary(b) for b in itertools.islice(_loader(data_cfg, seed=5, workers=2,
                                                         sampler_cls=RepeatFactorSampler), 5)]
    assert got == ref


@pytest.mark.parametrize("workers", [0, 1])
def test_train_loader_survives_corrupt_image(tmp_path, data_cfg, workers):
    cfg = data_cfg.copy()
    ann, image_root, _ = write_fixture(tmp_path, "coco", eight_images())
    (image_root / "img_3.png").write_bytes(b"garbage")
    cfg.train = {"ann_file": str(ann), "image_root": str(image_root)}
    loader = _loader(cfg, ipg=1, workers=workers)
    it = iter(loader)
    seen, errors = [], 0
    for _ in range(16):
        try:
            seen.extend(next(it).image_ids)
        except CorruptImageError as e:
            assert "img_3.png" in str(e) and "image id 3" in str(e)
            errors += 1
    assert errors == 2 and len(seen) == 14 and 3 not in seen        # two epochs of 8
    assert loader.state_dict()["batches"] == 16


def test_test_loader_shards(data_cfg):
    val = build_dataset(data_cfg, "val")
    ids = []
    for rank in range(3):
        shard = [i for b in build_test_loader(val, 2, 0, rank, 3) for i in b.image_ids]
        ids.append(shard)
    assert [len(s) for s in ids] == [2, 3, 3]
    assert sum(ids, []) == val.image_ids.tolist()                     # contiguous, every image once
    b = next(iter(build_test_loader(val, 3)))
    assert len(b) == 3 and b.images.shape[-1] % 32 == 0
    assert b.orig_sizes[0] == (48, 64) and b.image_sizes[0] == (32, 43)


@pytest.mark.parametrize("n,w", [(0, 2), (5, 1), (7, 3), (2, 4)])
def test_shard_bounds_partition(n, w):
    bounds = [shard_bounds(n, r, w) for r in range(w)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(w - 1))
    with pytest.raises(ValueError, match="rank"):
        shard_bounds(n, w, w)


def test_loader_config_keys_present():
    keys = {"name", "train", "val", "generator", "num_classes", "images_per_batch", "test_images_per_batch",
            "num_workers", "size_divisibility", "aspect_grouping", "min_size_train", "max_size_train",
            "min_size_test", "max_size_test", "flip_prob", "bins"}
    for name in ("lvis_v1", "lvis_v0.5", "coco_lt"):
        cfg = OmegaConf.load(CONF / f"{name}.yaml")
        assert keys <= set(cfg), name
        assert torch.tensor(list(cfg.min_size_train)).le(cfg.max_size_train).all()
