"""The evaluator's fast paths against their plain definitions: id lookup, GC pause, mask pass."""
import gc

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from ltseg.evaluation import parallel
from ltseg.evaluation.gt import _positions
from ltseg.evaluation.matching import measure_masks
from ltseg.evaluation.rle import PackedMasks


def _reference_positions(table, ids):
    idx = np.searchsorted(table, ids).clip(0, max(len(table) - 1, 0))
    return np.where(len(table) and table[idx] == ids, idx, -1) if len(table) else np.full(len(ids), -1)


@pytest.mark.parametrize("table", [[3, 4, 9, 12], [5], [-7, 0, 2], [1, 10**12, 2 * 10**12], []])
def test_id_lookup_matches_binary_search(table):
    table = np.array(table, dtype=np.int64)
    ids = np.array([3, 4, 9, 12, 5, -7, 0, 2, 1, 10**12, 2 * 10**12, -1, 6, 13, 2**62, -2**62, 11],
                   dtype=np.int64)
    assert np.array_equal(_positions(table, ids), _reference_positions(table, ids))


def _gc_state(_):
    return gc.isenabled()


@pytest.mark.parametrize("enabled", [True, False])
def test_parallel_map_pauses_gc_and_restores_it(enabled):
    (gc.enable if enabled else gc.disable)()
    try:
        assert parallel.parallel_map(_gc_state, range(3), 1) == [False] * 3
        assert gc.isenabled() == enabled
    finally:
        gc.enable()


def _box_rle(x, y, w, h, size=(40, 50)):
    return mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], *size)[0]


@pytest.mark.parametrize("backend", ["native", "pycocotools"])
def test_mask_pass_matches_per_group_pycocotools(monkeypatch, backend):
    """Areas of every row, IoU blocks (rows in order, GTs in order) only for rows with GT, for
    any cut of the rows into worker pieces, with either mask backend."""
    rng = np.random.default_rng(0)
    gts = [_box_rle(*rng.integers(0, 20, 4) + [0, 0, 1, 1]) for _ in range(6)]
    # groups (by key): 3 rows with GT 0..1, 2 rows without GT, 4 rows with GT 2..4, 1 row with GT 5
    key = np.array([1, 1, 1, 4, 4, 7, 7, 7, 7, 9])
    g_start = np.array([0, 0, 0, 2, 2, 2, 2, 2, 2, 5])
    g_num = np.array([2, 2, 2, 0, 0, 3, 3, 3, 3, 1])
    dets = [_box_rle(*rng.integers(0, 20, 4) + [0, 0, 1, 1]) for _ in range(len(key))]
    dets[3] = _box_rle(0, 0, 0, 0)                              # empty mask: area 0
    packed = PackedMasks.from_dicts(dets)

    asked = []

    def gt_rles(rows):
        asked.append(rows.tolist())
        return [gts[j] for j in rows]

    want_area = mask_utils.area(dets).astype(np.float64)
    want_iou = np.concatenate([mask_utils.iou(dets[a:b], gts[s:s + n], [0] * n).reshape(-1)
                               for a, b, s, n in [(0, 3, 0, 2), (5, 9, 2, 3), (9, 10, 5, 1)]])
    monkeypatch.setattr(parallel, "MIN_DETS_PER_WORKER", 1)
    for workers in (1, 2, 3, 4):
        asked.clear()
        area, iou = measure_masks(key, g_start, g_num, packed, gt_rles, workers, backend)
        assert np.array_equal(area, want_area)
        assert np.array_equal(iou, want_iou)
        if workers == 1:
            assert asked == [[0, 1, 2, 3, 4, 5]]
    asked.clear()
    sub = np.r_[0:3, 9]                                         # rows meeting GT 0..1 and 5 only
    area, iou = measure_masks(key[sub], g_start[sub], g_num[sub], packed.take(sub), gt_rles, 1, backend)
    assert asked == [[0, 1, 5]] and np.array_equal(area, want_area[sub])
    assert np.array_equal(iou, np.r_[want_iou[:6], want_iou[-1:]])
    area, iou = measure_masks(key[:0], g_start[:0], g_num[:0], packed.take(slice(0, 0)), gt_rles, 2, backend)
    assert area.shape == iou.shape == (0,)


@pytest.mark.parametrize("segm", [False, True])
def test_typed_fast_path_equals_general_parser(segm):
    """msgspec's typed records give the same arrays as the general (orjson/json) parser, and
    inputs outside the common layout fall back to it."""
    import json

    from ltseg.evaluation import results as R
    from ltseg.evaluation.cases import make_case

    _, res = make_case(4, num_images=6, score_decimals=None)
    res[0]["score"] = 1                                       # an integer score is a number too
    res[1]["bbox"] = [1, 2, 3, 4]
    res[2]["extra"] = {"nested": [1, "x"]}                    # unknown fields are skipped
    raw = json.dumps(res).encode()
    fast = R._parse_typed(raw, R._Chunk("r", data=raw, segm=segm))
    assert fast is not None
    general = R._parse(R._Chunk("r", items=json.loads(raw), span=(0, len(res)), segm=segm))
    assert fast.keys() == general.keys()
    for k, v in general.items():
        assert np.array_equal(fast[k], v) if isinstance(v, np.ndarray) else fast[k] == v, k
    for bad in ({"image_id": 1.0}, {"score": True}, {"bbox": [1, 2, 3]}, {"bbox": None},
                {"category_id": "3"}):
        odd = [dict(d) for d in res]
        odd[-1].update(bad)
        assert _typed(R, json.dumps(odd).encode(), segm) is None, bad
    odd = [dict(d) for d in res]
    del odd[3]["bbox"]
    assert _typed(R, json.dumps(odd).encode(), segm) is None
    if segm:
        odd[3]["bbox"] = [0, 0, 1, 1]
        odd[3]["segmentation"] = [[0, 0, 5, 0, 5, 5]]           # polygons: general path
        assert _typed(R, json.dumps(odd).encode(), segm) is None
    assert _typed(R, b"[1, 2]", segm) is None
    assert _typed(R, b'{"a": 1}', segm) is None
    assert _typed(R, b"[NaN]", segm) is None
    assert _typed(R, b"[]", segm) == {"n": 0}


def _typed(R, raw, segm):
    return R._parse_typed(raw, R._Chunk("r", data=raw, segm=segm))


def test_segm_counts_land_in_shared_memory(tmp_path, monkeypatch):
    """Workers write the RLE counts of file chunks into one shared map; every detection's counts
    read back exactly as in the JSON, in input order, across chunk boundaries."""
    import json
    import mmap

    from ltseg.evaluation import results as R
    from ltseg.evaluation.cases import make_case
    from ltseg.evaluation.gt import GroundTruth

    gt, res = make_case(2, num_images=8)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(res))
    monkeypatch.setattr(R, "SPLIT_BYTES", 1 << 10)
    monkeypatch.setattr(R, "PIECE_BYTES", 1 << 12)
    det = R.load_results(path, GroundTruth.load(gt), segm=True, workers=2)
    assert len(det.buffers) == 1 and isinstance(det.buffers[0], mmap.mmap)
    got = [r["counts"].decode() for r in det.rles(np.arange(len(det)))]
    assert got == [d["segmentation"]["counts"] for d in res]
    assert det.seg_hw.tolist() == [d["segmentation"]["size"] for d in res]


def test_chunks_are_bracketed_in_place_and_restored(tmp_path, monkeypatch):
    """Each span of a file reads as its own JSON list without a copy; the bytes are restored, so
    chunks parsed one after another in-process see the original file."""
    import json

    from ltseg.evaluation import results as R
    from ltseg.evaluation.cases import make_case
    from ltseg.evaluation.gt import GroundTruth

    gt, res = make_case(6, num_images=6)
    text = json.dumps(res, indent=1).encode()
    data = bytearray(text)
    spans = R._split(data, "r", 4)
    assert len(spans) == 4
    got = []
    for span in spans:
        with R._json_list(R._Chunk("r", data=data, span=span)) as raw:
            got += json.loads(bytes(raw))
    assert got == res and data == text
    path = tmp_path / "r.json"
    path.write_bytes(text)
    monkeypatch.setattr(R, "SPLIT_BYTES", 1 << 10)
    monkeypatch.setattr(R, "PIECE_BYTES", 1 << 12)
    g = GroundTruth.load(gt)
    one, split = R.load_results(res, g, workers=1), R.load_results(path, g, workers=1)
    assert np.array_equal(one.score, split.score) and np.array_equal(one.bbox, split.bbox)
    assert [r["counts"] for r in one.rles(np.arange(len(one)))] == \
        [r["counts"] for r in split.rles(np.arange(len(split)))]
