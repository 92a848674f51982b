"""The built-in long-tail dataset: schema, statistics, geometry, federated labels, caching."""
import json
import multiprocessing as mp
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from pycocotools import mask as mask_utils

from ltseg.data.category_stats import CategoryStats
from ltseg.data.synthetic import (SyntheticParams, ensure_synthetic, generate, main, make_plan,
                                  encode_png)
from ltseg.data.synthetic_plan import COLOURS, PATTERNS, SHAPES, confusable

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
REPO = Path(__file__).resolve().parents[2]
# Small enough to draw in ~2 s, large enough for all three LVIS groups (n_max = 400 > 100).
TINY = dict(num_categories=20, train_images=420, val_images=40, image_size=64,
            max_image_count=400, seed=3)
LVIS_GROUPS = {"r": 0.28, "c": 0.38, "f": 0.34}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "tiny"
    paths = ensure_synthetic(str(root), workers=1, verbose=False, **TINY)
    data = {s: json.loads(Path(paths[s]["ann_file"]).read_text()) for s in ("train", "val")}
    return paths, data


def _masks(ann, h, w):
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w)))


def _by_image(data):
    anns = defaultdict(list)
    for a in data["annotations"]:
        anns[a["image_id"]].append(a)
    return anns


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- determinism
def test_same_params_and_seed_give_identical_bytes_for_any_worker_count(tmp_path):
    params = SyntheticParams(num_categories=12, train_images=40, val_images=20, image_size=64,
                             seed=7)
    generate(tmp_path / "a", params, workers=1)
    generate(tmp_path / "b", params, workers=2)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len([k for k in a if k.endswith(".png")]) == 60
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    generate(tmp_path / "c", SyntheticParams(**{**params.to_dict(), "seed": 8}), workers=1)
    c = _files(tmp_path / "c")
    assert a["train.json"] != c["train.json"]


def test_png_encoder_round_trips(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(image))
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), image)


# ---------------------------------------------------------------------------- schema
def test_official_lvis_api_loads_both_splits_and_scores_ground_truth_as_perfect(tiny):
    from tests.lvis_oracle import LVIS, LVISEval, LVISResults

    paths, data = tiny
    train = LVIS(paths["train"]["ann_file"])
    val = LVIS(paths["val"]["ann_file"])
    assert len(train.get_img_ids()) == TINY["train_images"]
    assert len(val.get_cat_ids()) == TINY["num_categories"]
    results = []
    for a in data["val"]["annotations"]:
        img = val.imgs[a["image_id"]]
        rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], img["height"],
                                                      img["width"]))
        rle["counts"] = rle["counts"].decode()
        results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                        "bbox": a["bbox"], "score": 1.0, "segmentation": rle})
    for iou_type in ("bbox", "segm"):
        ev = LVISEval(val, LVISResults(val, results), iou_type)
        ev.run()
        assert ev.results["AP"] == pytest.approx(1.0), iou_type
        for g in ("APr", "APc", "APf"):
            assert ev.results[g] == pytest.approx(1.0), (iou_type, g)


def test_lvis_v1_fields(tiny):
    paths, data = tiny
    for split, d in data.items():
        assert set(d) >= {"images", "annotations", "categories"}
        for img in d["images"]:
            assert {"id", "file_name", "height", "width", "neg_category_ids",
                    "not_exhaustive_category_ids"} <= set(img)
            assert (Path(paths[split]["image_root"]) / img["file_name"]).is_file()
        for a in d["annotations"]:
            assert {"id", "image_id", "category_id", "segmentation", "area", "bbox"} <= set(a)
        for c in d["categories"]:
            assert {"id", "name", "synonyms", "def", "frequency", "image_count",
                    "instance_count"} <= set(c)
    train_ids = {i["id"] for i in data["train"]["images"]}
    assert not train_ids & {i["id"] for i in data["val"]["images"]}
    img = Image.open(Path(paths["val"]["image_root"]) / data["val"]["images"][0]["file_name"])
    assert img.format == "PNG" and img.size == (TINY["image_size"],) * 2 and img.mode == "RGB"


def test_category_names_are_attribute_combinations_that_compete(tiny):
    _, data = tiny
    names = [c["name"] for c in data["train"]["categories"]]
    assert len(set(names)) == len(names)
    for n in names:
        colour, pattern, shape = n.split("_")
        assert colour in COLOURS and pattern in PATTERNS and shape in SHAPES
    assert len(SHAPES) >= 10 and len(COLOURS) >= 8 and len(PATTERNS) >= 3
    categories = make_plan(SyntheticParams(**TINY))["categories"]
    assert sum(len(n) > 0 for n in confusable(categories)) >= len(categories) // 2


# ---------------------------------------------------------------------------- statistics
def test_category_fields_are_recomputed_from_train_exactly_as_lvis(tiny):
    _, data = tiny
    stats = CategoryStats.from_lvis_dict(data["train"])
    cats = sorted(data["train"]["categories"], key=lambda c: c["id"])
    assert [c["image_count"] for c in cats] == stats.image_count.tolist()
    assert [c["instance_count"] for c in cats] == stats.instance_count.tolist()
    assert [c["frequency"] for c in cats] == list(stats.frequency)
    assert data["val"]["categories"] == data["train"]["categories"]
    assert min(stats.image_count.tolist()) >= 1
    assert (stats.instance_count > stats.image_count).any()


@pytest.mark.parametrize("source", ["generated_tiny", "default_plan"])
def test_rare_common_frequent_proportions_follow_lvis(tiny, source):
    if source == "generated_tiny":
        cats, tol = tiny[1]["train"]["categories"], 0.08
        counts = [c["image_count"] for c in cats]
    else:  # default parameters: the plan fixes the counts the JSON will carry
        plan = make_plan(SyntheticParams())
        per_cat = defaultdict(set)
        for ip in plan["train"]:
            for k, annotated in ip.objects:
                per_cat[k].add(ip.image_id)
        counts, tol = [len(per_cat[k]) for k in range(len(plan["categories"]))], 0.05
    groups = np.array(["r" if n <= 10 else "c" if n <= 100 else "f" for n in counts])
    for g, target in LVIS_GROUPS.items():
        assert abs((groups == g).mean() - target) <= tol, (g, (groups == g).mean())
    assert max(counts) > 10 * sorted(counts)[len(counts) // 4]  # a long tail, not flat


def test_every_category_is_in_at_least_five_val_images(tiny):
    _, data = tiny
    images = defaultdict(set)
    for a in data["val"]["annotations"]:
        images[a["category_id"]].add(a["image_id"])
    assert min(len(images[c["id"]]) for c in data["val"]["categories"]) >= 5


def test_images_hold_one_to_eight_objects(tiny):
    _, data = tiny
    per_image = _by_image(data["train"])
    counts = [len(per_image[i["id"]]) for i in data["train"]["images"]]
    assert min(counts) >= 1 and max(counts) <= 8
    multi = [i for i, anns in per_image.items()
             if len({a["category_id"] for a in anns}) < len(anns)]
    assert multi  # several instances of one category in some images


# ---------------------------------------------------------------------------- geometry
def test_polygons_valid_and_area_bbox_match_the_mask(tiny):
    _, data = tiny
    size = TINY["image_size"]
    for a in data["train"]["annotations"][:600] + data["val"]["annotations"]:
        for poly in a["segmentation"]:
            assert len(poly) >= 6 and len(poly) % 2 == 0
            xy = np.asarray(poly).reshape(-1, 2)
            assert xy.min() >= 0 and xy.max() <= size
        m = _masks(a, size, size)
        assert m.sum() == a["area"] > 0
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        assert a["bbox"] == [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
        assert a["bbox"][2] > 1 and a["bbox"][3] > 1


def test_masks_are_the_visible_parts(tiny):
    """Visible parts never overlap, and each shows only its object's one or two paint colours."""
    paths, data = tiny
    size = TINY["image_size"]
    per_image = _by_image(data["train"])
    occluded = 0
    for img in data["train"]["images"][:150]:
        pixels = np.asarray(Image.open(Path(paths["train"]["image_root"]) / img["file_name"]))
        anns = per_image[img["id"]]
        masks = [_masks(a, size, size).astype(bool) for a in anns]
        assert (np.sum(masks, axis=0) <= 1).all(), img["id"]
        for a, m in zip(anns, masks):
            assert len(np.unique(pixels[m], axis=0)) <= 2, (img["id"], a["id"])
        for i, a in enumerate(anns):  # boxes overlap but masks do not: occlusion happened
            for b in anns[i + 1:]:
                ax, ay, aw, ah = a["bbox"]
                bx, by, bw, bh = b["bbox"]
                occluded += ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
    assert occluded > 0


# ---------------------------------------------------------------------------- federated labels
def test_neg_ids_are_confusable_and_absent_not_exhaustive_ids_present(tiny):
    _, data = tiny
    for split, d in data.items():
        per_image = _by_image(d)
        not_exhaustive = 0
        for img in d["images"]:
            present = {a["category_id"] for a in per_image[img["id"]]}
            assert len(img["neg_category_ids"]) == 3
            assert not set(img["neg_category_ids"]) & present, img["id"]
            assert set(img["not_exhaustive_category_ids"]) <= present, img["id"]
            not_exhaustive += bool(img["not_exhaustive_category_ids"])
        assert 0 < not_exhaustive < len(d["images"]) / 2, split


def test_not_exhaustive_images_hold_an_unannotated_instance_and_negs_are_never_drawn():
    params = SyntheticParams(**TINY)
    plan = make_plan(params)
    neighbours = confusable(plan["categories"])
    confusable_negs = total_negs = 0
    for ip in plan["train"] + plan["val"]:
        drawn = {k for k, _ in ip.objects}
        assert not set(ip.neg_categories) & drawn
        for k in ip.not_exhaustive:
            assert (k, False) in ip.objects and (k, True) in ip.objects
        assert all(annotated or k in ip.not_exhaustive for k, annotated in ip.objects)
        near = {int(j) for k in drawn for j in neighbours[k]}
        confusable_negs += len(set(ip.neg_categories) & near)
        total_negs += len(ip.neg_categories)
    assert confusable_negs > 0.8 * total_negs


# ---------------------------------------------------------------------------- caching and API
def test_ensure_synthetic_reuses_regenerates_and_refuses(tmp_path):
    small = dict(num_categories=12, train_images=40, val_images=20, image_size=64, seed=1)
    root = tmp_path / "cache" / "synth"
    paths = ensure_synthetic(str(root), workers=1, verbose=False, **small)
    assert paths == {s: {"ann_file": str(root / f"{s}.json"),
                         "image_root": str(root / "images" / s)} for s in ("train", "val")}
    stamp = (root / "train.json").stat().st_mtime_ns
    assert ensure_synthetic(str(root), workers=1, verbose=False, **small) == paths
    assert (root / "train.json").stat().st_mtime_ns == stamp
    (tmp_path / "cache" / ".synth.tmp-999999").mkdir()  # as left by a killed run
    ensure_synthetic(str(root), workers=1, verbose=False, **{**small, "seed": 2})
    assert json.loads((root / "train.json").read_text())["info"]["params"]["seed"] == 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".synth.lock", "synth"]
    other = tmp_path / "not_a_dataset"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not_a_dataset"):
        ensure_synthetic(str(other), workers=1, verbose=False, **small)
    assert (other / "notes.txt").read_text() == "mine"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileExistsError, match="a_file"):
        ensure_synthetic(str(tmp_path / "a_file"), workers=1, verbose=False, **small)


def _ensure_in_child(root, queue):
    queue.put(ensure_synthetic(root, workers=1, verbose=False, num_categories=12,
                               train_images=40, val_images=20, image_size=64, seed=4))


def test_ensure_synthetic_is_safe_for_concurrent_callers(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ensure_in_child, args=(str(tmp_path / "d"), queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1]
    assert len(json.loads(Path(results[0]["train"]["ann_file"]).read_text())["images"]) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.lock", "d"]


@pytest.mark.parametrize("params, match", [
    (dict(num_categories=0), "num_categories"),
    (dict(tail_exponent=-1.0), "tail_exponent"),
    (dict(object_size=(0.5, 0.1)), "object_size"),
    (dict(min_val_images=50, val_images=10), "min_val_images"),
    (dict(colour_jitter=0.1), "unknown parameter.*colour_jitter"),
])
def test_bad_parameters_name_the_key(params, match):
    with pytest.raises(ValueError, match=match):
        SyntheticParams.from_kwargs(**params)


def test_infeasible_sizes_explain_themselves():
    with pytest.raises(ValueError, match="every image needs one"):
        make_plan(SyntheticParams(num_categories=3, train_images=200))
    with pytest.raises(ValueError, match="do not fit"):
        make_plan(SyntheticParams(num_categories=200, train_images=40, max_image_count=40))
    with pytest.raises(ValueError, match="num_categories must be in 1..480"):
        make_plan(SyntheticParams(num_categories=481))


def test_cli_writes_the_dataset_and_reports_statistics(tmp_path, capsys):
    stats = main(["--out", str(tmp_path / "cli"), "--workers", "1", "--num-categories", "12",
                  "--train-images", "40", "--val-images", "20", "--image-size", "64",
                  "--tail-exponent", "0.9", "--seed", "5"])
    assert stats["train_images"] == 40 and stats["val_images"] == 20
    assert sum(stats["groups"].values()) == 12
    assert json.loads(capsys.readouterr().out)["categories"] == 12
    params = json.loads((tmp_path / "cli" / "params.json").read_text())["params"]
    assert params["tail_exponent"] == 0.9 and params["seed"] == 5


def test_data_config_exposes_every_generator_parameter_with_the_code_defaults():
    cfg = OmegaConf.load(REPO / "conf" / "data" / "synthetic.yaml")
    gen = OmegaConf.to_container(cfg.generator, resolve=True)
    assert gen.pop("_target_") == "ltseg.data.synthetic.ensure_synthetic"
    assert gen.pop("workers") == 0
    root = gen.pop("root")
    assert SyntheticParams.from_kwargs(**gen) == SyntheticParams()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["train"] == {"ann_file": f"{root}/train.json",
                                 "image_root": f"{root}/images/train"}
    assert resolved["val"]["ann_file"] == f"{root}/val.json"
    assert resolved["num_classes"] == SyntheticParams().num_categories
    for key in ("name", "images_per_batch", "test_images_per_batch", "num_workers",
                "size_divisibility", "aspect_grouping", "min_size_train", "max_size_train",
                "min_size_test", "max_size_test", "flip_prob", "bins"):
        assert key in resolved
    assert resolved["size_divisibility"] == 32 and resolved["bins"] == "lvis"


def test_learnability_probe_trains_on_box_crops(tiny):
    from ltseg.data.synthetic_probe import probe

    paths, data = tiny
    root = Path(paths["train"]["ann_file"]).parent
    result = probe(root, epochs=3, crop=16)
    assert result["train_crops"] == len(data["train"]["annotations"])
    assert result["val_crops"] == len(data["val"]["annotations"])
    assert result["accuracy"] > 2.0 / TINY["num_categories"]  # well above chance
    for g in "rcf":
        assert 0.0 <= result[f"class_accuracy_{g}"] <= 1.0
