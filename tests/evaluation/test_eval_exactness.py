"""Native evaluator vs the official lvis-api on generated cases: identical arrays and metrics."""
import json
import warnings

import pytest

from ltseg.evaluation import LVISEvaluator, evaluate_results
from ltseg.evaluation.cases import make_case
from tests.evaluation.eval_helpers import check, dump


@pytest.mark.parametrize("seed", range(6))
def test_generated_cases_match_official(seed):
    size = (96, 128) if seed % 2 else (300, 400)     # small images: mostly small/medium objects
    gt, res = make_case(seed, size=size, num_images=12, dets_per_image=30,
                        score_decimals=2 if seed < 4 else None)
    check(gt, res)


def test_tight_cap_and_many_categories():
    gt, res = make_case(11, num_images=10, num_categories=40, dets_per_image=60, size=(160, 200))
    check(gt, res, max_dets=20)


def test_results_without_bbox_use_mask_boxes_and_areas():
    """lvis-api takes the segm branch when results[0] has no bbox: toBbox boxes, mask areas."""
    gt, res = make_case(5, num_images=8, size=(200, 240))
    for d in res:
        d.pop("bbox")
    check(gt, res, iou_types=("bbox",))


def test_category_ranges_and_mask_pieces_in_workers_match_official(monkeypatch):
    """Forked workers evaluate ranges of categories (and cut mask passes): same numbers."""
    from ltseg.evaluation import parallel
    monkeypatch.setattr(parallel, "MIN_DETS_PER_WORKER", 1)
    gt, res = make_case(9, num_images=10, size=(200, 240))
    check(gt, res, iou_types=("bbox", "segm"), workers=3)


def test_file_shards_dicts_and_workers_agree(tmp_path):
    gt, res = make_case(7, num_images=10, size=(200, 240))
    shards = [dump(tmp_path / f"r{i}.json", res[i::3]) for i in range(3)]
    single = dump(tmp_path / "all.json", [d for i in range(3) for d in res[i::3]])
    gt_path = dump(tmp_path / "gt.json", gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = evaluate_results(gt_path, shards, workers=2)
        b = evaluate_results(gt_path, single, workers=1)
        c = evaluate_results(gt, [d for i in range(3) for d in res[i::3]], workers=2)
    assert a == b == c
    check(gt, [d for i in range(3) for d in res[i::3]], results=shards, workers=2)


def test_large_file_split_across_workers(tmp_path, monkeypatch):
    """Big files are cut between top-level objects and parsed in pieces by several workers."""
    from ltseg.evaluation import results as results_mod
    gt, res = make_case(3, num_images=12, dets_per_image=40, size=(200, 240))
    path = tmp_path / "r.json"
    path.write_text(json.dumps(res, indent=1))
    monkeypatch.setattr(results_mod, "SPLIT_BYTES", 1 << 12)
    monkeypatch.setattr(results_mod, "PIECE_BYTES", 1 << 16)
    data = path.read_bytes()
    spans = results_mod._split(data, "r.json", 7)
    assert len(spans) == 7 and sum(len(json.loads(b"[" + data[a:b] + b"]")) for a, b in spans) == len(res)
    check(gt, res, results=str(path), workers=3)


def test_empty_results_give_zero_or_minus_one():
    gt, _ = make_case(2, num_images=6, size=(300, 400))
    with pytest.warns(UserWarning, match="empty"):
        m = evaluate_results(gt, [], iou_types=("bbox",), train_stats=gt)["bbox"]
    # the official API crashes on [], but a lone zero-area detection is dropped before matching
    zero = [{"image_id": gt["images"][0]["id"], "category_id": gt["categories"][0]["id"],
             "bbox": [1.0, 1.0, 0.0, 5.0], "score": 0.5}]
    ref = check(gt, zero, iou_types=("bbox",))["bbox"].summary
    assert {k: m[k] for k in ref} == ref
    assert set(ref.values()) <= {0.0, -1.0}


def test_segm_areas_come_from_masks_not_boxes():
    """detectron2 convention: for segm the area ranges use the mask even when bbox is present."""
    gt, res = make_case(4, num_images=10, size=(300, 400))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native = LVISEvaluator(gt, "segm", workers=1).evaluate(res)
    check(gt, res, iou_types=("segm",))          # the oracle drops bbox before segm evaluation
    from tests.lvis_oracle import LVIS, LVISEval, LVISResults
    import copy
    import logging
    api = LVIS.__new__(LVIS)
    api.logger, api.dataset = logging.getLogger("lvis"), copy.deepcopy(gt)
    api._create_index()
    raw = LVISEval(api, LVISResults(api, copy.deepcopy(res)), "segm")   # keeps bbox: box areas
    raw.run()
    assert any(abs(native.summary[k] - raw.results[k]) > 1e-6 for k in ("APs", "APm", "APl"))


def test_parallel_map_runs_serially_inside_a_daemon_worker():
    import multiprocessing as mp
    from ltseg.evaluation.parallel import parallel_map
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply(parallel_map, (abs, [-1, -2, 3], 2)) == [1, 2, 3]
    assert parallel_map(abs, [-1, -2, 3], 2) == [1, 2, 3]
