"""The evaluator's C kernels against the code they replace: pycocotools (mask area and IoU) and
the msgspec/json parsers (results files). Every number must come out identical."""
import json
import mmap
import os

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from ltseg.evaluation import rle
from ltseg.evaluation import results as R
from ltseg.evaluation.cases import make_case
from ltseg.evaluation.lvis_eval import LVISEvaluator
from ltseg.evaluation.rle import MalformedMask, PackedMasks, measure


def test_kernels_are_built():
    """`make install` compiles both kernels; set LTSEG_NO_NATIVE=1 where no C compiler exists
    (the evaluator then falls back to pycocotools / msgspec: same numbers, slower)."""
    if os.environ.get("LTSEG_NO_NATIVE") == "1":
        assert rle.use_native("auto") == (rle._rle is not None)
        return
    assert rle._rle is not None, "ltseg.evaluation._rle not built: pip install -e . with a C compiler"
    assert R._scan is not None, "ltseg.evaluation._scan not built: pip install -e . with a C compiler"


def _random_masks(rng, n, sizes):
    """Blobs, boxes, stripes, empty and full masks, single pixels, over the given (h, w) sizes."""
    out = []
    for j in range(n):
        h, w = sizes[rng.integers(len(sizes))]
        m = np.zeros((h, w), np.uint8, order="F")
        kind = j % 7
        if kind == 0:
            y, x = rng.integers(0, h), rng.integers(0, w)
            m[max(0, y - rng.integers(0, h + 1)):y + rng.integers(1, h + 1), max(0, x - rng.integers(0, w + 1)):x + 3] = 1
        elif kind == 1:
            m[:] = rng.random((h, w)) < rng.uniform(0.05, 0.95)
        elif kind == 2:
            m[:, rng.integers(0, w)::rng.integers(2, 9)] = 1
        elif kind == 3:
            m[rng.integers(0, h), rng.integers(0, w)] = 1
        elif kind == 4:
            m[:] = 1 if rng.random() < 0.5 else 0
        else:
            yy, xx = np.mgrid[:h, :w]
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, max(h, w))
            m[:] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        out.append(mask_utils.encode(np.asfortranarray(m)))
    return out


def _pycocotools_reference(dets, gts, first, count):
    area = mask_utils.area(dets).astype(np.float64) if dets else np.zeros(0)
    iou = [np.asarray(mask_utils.iou([d], gts[f:f + c], [0] * c), np.float64).reshape(-1)
           for d, f, c in zip(dets, first, count) if c]
    return area, (np.concatenate(iou) if iou else np.zeros(0))


@pytest.mark.parametrize("seed", range(4))
def test_native_masks_equal_pycocotools(seed):
    """Areas and IoU bit-identical to pycocotools, including -1 for masks of different sizes whose
    boxes overlap (0 where they do not), empty masks and long runs (multi-character counts)."""
    rng = np.random.default_rng(seed)
    sizes = [(37, 53), (37, 53), (37, 53), (53, 37), (640, 480), (1, 1), (3, 700)]
    dets, gts = _random_masks(rng, 160, sizes), _random_masks(rng, 40, sizes)
    count = rng.integers(0, 6, len(dets))
    first = np.array([rng.integers(0, len(gts) - c + 1) for c in count])
    want_area, want_iou = _pycocotools_reference(dets, gts, first, count)
    assert (want_iou == -1).any() and (want_iou == 0).any() and ((want_iou > 0) & (want_iou < 1)).any()
    for backend in ("native", "pycocotools"):
        area, iou = measure(PackedMasks.from_dicts(dets), PackedMasks.from_dicts(gts), first, count, backend)
        assert np.array_equal(area, want_area), backend
        assert np.array_equal(iou, want_iou), backend


def _packed(counts, hw):
    return PackedMasks((counts.encode(),), np.zeros(1, np.int64), np.zeros(1, np.int64),
                       np.array([len(counts)], np.int64), np.array([hw], np.int64))


@pytest.mark.parametrize("counts", ["13", "1", "0;", "0\x7f1", "0?"])
def test_native_rejects_malformed_masks(counts):
    """Runs that do not cover h x w ("13": 1 + 3 != 2 x 3), a string ending mid-number ("0?":
    "?" continues), a character outside '0'..'o': a MalformedMask naming the row."""
    good = mask_utils.encode(np.asfortranarray(np.ones((2, 3), np.uint8)))
    gt = PackedMasks.from_dicts([good])
    with pytest.raises(MalformedMask) as e:
        measure(_packed(counts, (2, 3)), gt, [0], [1], "native")
    assert (e.value.which, e.value.row) == ("detection", 0)
    with pytest.raises(MalformedMask) as e:
        measure(PackedMasks.from_dicts([good, good]), _packed(counts, (2, 3)), [0, 0], [0, 1], "native")
    assert (e.value.which, e.value.row) == ("gt", 0)


def test_evaluator_names_a_malformed_detection_mask(tmp_path):
    gt, res = make_case(3, num_images=6)
    bad = next(j for j, d in enumerate(res) if any(a["image_id"] == d["image_id"] and
                                                    a["category_id"] == d["category_id"] for a in gt["annotations"]))
    res[bad]["segmentation"]["counts"] = "1"
    path = tmp_path / "res.json"
    path.write_text(json.dumps(res))
    ev = LVISEvaluator(gt, "segm", train_stats=gt, mask_backend="native")
    with pytest.raises(ValueError, match=rf"res\.json\[{bad}\] .*RLE runs do not cover"):
        ev.evaluate(str(path))


def test_evaluator_names_a_malformed_gt_mask():
    gt, res = make_case(3, num_images=6)
    met = {(d["image_id"], d["category_id"]) for d in res}
    ann = next(a for a in gt["annotations"] if (a["image_id"], a["category_id"]) in met)
    img = next(i for i in gt["images"] if i["id"] == ann["image_id"])
    ann["segmentation"] = {"size": [img["height"], img["width"]], "counts": "1"}
    ev = LVISEvaluator(gt, "segm", train_stats=gt, mask_backend="native")
    with pytest.raises(ValueError, match=rf"annotation id={ann['id']}: its RLE runs do not cover"):
        ev.evaluate(res)


def test_mask_backends_give_identical_metrics():
    gt, res = make_case(11, num_images=25)
    got = [LVISEvaluator(gt, "segm", train_stats=gt, mask_backend=b, workers=1).evaluate(res).summary
           for b in ("native", "pycocotools")]
    assert got[0] == got[1]
    with pytest.raises(ValueError, match="mask backend 'gpu'"):
        LVISEvaluator(gt, "segm", mask_backend="gpu")


def _scan(text: bytes, segm: bool):
    out = mmap.mmap(-1, max(len(text), 1))
    got = R._scan.scan(text, segm, out if segm else None, 0)
    return got, out


def _scanned_counts(got, out):
    cstart, cend = (np.frombuffer(got[k], np.int64) for k in (5, 6))
    return [out[a:b].decode() for a, b in zip(cstart, cend)]


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("segm", [True, False])
def test_scanner_equals_typed_parser(indent, segm):
    """Same ids, scores, boxes, sizes and counts as msgspec, whatever the whitespace and member
    order; counts with escaped backslashes (RLE strings use '\\\\') come back unescaped."""
    _, res = make_case(5, num_images=12, score_decimals=None)
    res[0]["score"], res[1]["bbox"] = 1, [1, 2, 3, 4]
    res[2] = dict(reversed(list(res[2].items())))
    res[3]["segmentation"]["counts"] = "\\\\0/" + res[3]["segmentation"]["counts"]
    text = json.dumps(res, indent=indent).replace('/', '\\/', 1).encode()
    got, out = _scan(text, segm)
    want = R._parse_typed(text, R._Chunk("r", data=text, segm=segm))
    assert got is not None and got[0] == want["n"] == len(res)
    assert np.array_equal(np.frombuffer(got[1], np.int64).reshape(-1, 2), want["ids"])
    assert np.array_equal(np.frombuffer(got[2]), want["score"])
    assert np.array_equal(np.frombuffer(got[3]).reshape(-1, 4), want["bbox"])
    if segm:
        assert np.array_equal(np.frombuffer(got[4], np.int64).reshape(-1, 2), want["hw"])
        assert _scanned_counts(got, out) == [d["segmentation"]["counts"] for d in res]


def test_scanner_numbers_round_like_python():
    """Scores written every way JSON allows convert exactly as float() does (fast path and
    strtod), integers as int()."""
    rng = np.random.default_rng(0)
    texts = [repr(float(x)) for x in rng.random(300)] + [repr(float(x)) for x in rng.normal(0, 1e6, 100)]
    texts += ["0", "-0", "-0.0", "1e5", "1E-5", "2.5e+3", "123456789012345678901234567890",
              "0.1234567890123456789012345", "9007199254740993", "1e22", "1e23", "1e-22", "4.9e-324",
              "1.7976931348623157e308", "0.000000000000000000000000001"]
    texts += [f"{rng.integers(1, 10**int(rng.integers(1, 19)))}e{int(rng.integers(-30, 30))}" for _ in range(200)]
    texts += [f"0.{rng.integers(0, 10**int(rng.integers(1, 19))):0{int(rng.integers(19, 26))}d}" for _ in range(200)]
    body = ",".join(f'{{"image_id": {j}, "category_id": -{j}, "score": {t}, "bbox": [{t}, 0, {t}, 1e0]}}'
                    for j, t in enumerate(texts))
    got, _ = _scan(f"[{body}]".encode(), False)
    assert got is not None
    want = np.array([float(t) for t in texts])
    score, bbox = np.frombuffer(got[2]), np.frombuffer(got[3]).reshape(-1, 4)
    assert np.array_equal(score, want) and np.array_equal(np.signbit(score), np.signbit(want))
    assert np.array_equal(bbox[:, 0], want) and np.array_equal(bbox[:, 2], want) and (bbox[:, 3] == 1).all()
    ids = np.frombuffer(got[1], np.int64).reshape(-1, 2)
    assert np.array_equal(ids[:, 0], np.arange(len(texts))) and np.array_equal(ids[:, 1], -np.arange(len(texts)))


_GOOD = '{"image_id": 1, "category_id": 2, "score": 0.5, "bbox": [0, 0, 1, 1], ' \
        '"segmentation": {"size": [2, 3], "counts": "06"}}'


@pytest.mark.parametrize("text", [
    _GOOD.replace('"score": 0.5', '"score": 0.5, "extra": 1'),          # another member
    _GOOD.replace('"score": 0.5, ', ''),                                 # a missing one
    _GOOD.replace('"bbox": [0, 0, 1, 1], ', ''),
    _GOOD.replace('"score": 0.5', '"score": 0.5, "score": 0.7'),         # twice
    _GOOD.replace("0.5", "NaN"), _GOOD.replace("0.5", ".5"), _GOOD.replace("0.5", "1."),
    _GOOD.replace('"image_id": 1', '"image_id": 1.0'),                   # an integer as a float
    _GOOD.replace('"image_id": 1', '"image_id": 01'),                    # leading zero
    _GOOD.replace('"image_id": 1', '"image_id": true'),
    _GOOD.replace('"image_id": 1', '"image_id": 1234567890123456789'),   # beyond 18 digits
    _GOOD.replace('"image_id": 1', '"image_id": "1"'),
    _GOOD.replace("[0, 0, 1, 1]", "[0, 0, 1]"), _GOOD.replace("[0, 0, 1, 1]", "[0, 0, 1, 1, 1]"),
    _GOOD.replace('"06"', '"0\\u0036"'), _GOOD.replace('"06"', '"0\\n6"'), _GOOD.replace('"06"', '"0é"'),
    _GOOD.replace('{"size": [2, 3], "counts": "06"}', '[[0, 0, 1, 0, 1, 1]]'),  # polygons
    _GOOD.replace('"image_id"', '"image\\u005fid"'),
    _GOOD + " x", _GOOD[:-1], "{}", "[1]", "[" + _GOOD + ",]",
])
def test_scanner_hands_other_layouts_to_the_general_parsers(text):
    if not text.startswith("["):
        text = f"[{text}]"
    assert _scan(text.encode(), True)[0] is None


def test_scanner_edge_lists():
    assert _scan(b" [ ] ", True)[0][0] == 0
    no_segm = _GOOD.replace(', "segmentation": {"size": [2, 3], "counts": "06"}', "")
    assert _scan(f"[{no_segm}]".encode(), True)[0] is None              # masks required ...
    got = _scan(f"[{no_segm},\n{_GOOD}]".encode(), False)[0]             # ... but not for boxes
    assert got[0] == 2
    got, out = _scan(f"[{_GOOD},{_GOOD}]".encode(), True)
    assert _scanned_counts(got, out) == ["06", "06"]
    small = mmap.mmap(-1, 3)                                             # no room for the counts
    assert R._scan.scan(f"[{_GOOD},{_GOOD}]".encode(), True, small, 0) is None
