"""LVIS results (detections) as flat arrays, parsed in parallel and validated.

A results source is a JSON path, a list of shard paths (one per rank) or a list of dicts.
Each file is split at top-level object boundaries into pieces parsed by forked workers: msgspec
typed records when every result has the common layout (fields not needed are skipped, never
built), else orjson (or ``json``) with per-entry checks. A worker turns its piece into compact
arrays (ids, scores, boxes) and writes all RLE ``counts`` into a shared memory map, so the
detections are never all held as Python objects at once.
"""
from __future__ import annotations

import json
import mmap
import re
from dataclasses import dataclass
from itertools import chain
from contextlib import contextmanager
from functools import cache
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Sequence

import numpy as np
import pycocotools.mask as mask_utils

from .gt import GroundTruth
from .parallel import default_workers, parallel_map
from .rle import PackedMasks

try:
    from . import _scan
except ImportError:                # built without a C compiler: msgspec / orjson parse everything
    _scan = None

SPLIT_BYTES = 1 << 24          # files above this are parsed in pieces, in parallel
PIECE_BYTES = 1 << 26          # at most this much JSON is held as Python objects per worker
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_BLANK = re.compile(rb"\s*")
_image_id = itemgetter("image_id")
_category_id = itemgetter("category_id")
_score = itemgetter("score")
_bbox = itemgetter("bbox")
_segm = itemgetter("segmentation")
_counts = itemgetter("counts")
_size = itemgetter("size")
_image_id_attr, _category_id_attr, _score_attr, _bbox_attr, _segm_attr, _counts_attr, _size_attr = (
    attrgetter(k) for k in ("image_id", "category_id", "score", "bbox", "segmentation", "counts", "size"))


@dataclass
class Detections:
    """``N`` detections in input order (shards concatenated in the order given).

    Detection ``n``'s RLE ``counts`` is ``buffers[buf[n]][cstart[n]:cend[n]]``.
    """

    image_id: np.ndarray      # (N,) int64
    category_id: np.ndarray   # (N,) int64
    score: np.ndarray         # (N,) float64
    bbox: np.ndarray          # (N, 4) float64 xywh; NaN rows where absent
    has_bbox: np.ndarray      # (N,) bool
    has_segm: np.ndarray      # (N,) bool
    seg_hw: np.ndarray        # (N, 2) int64 RLE size (height, width)
    buffers: list             # bytes / shared mmap objects holding the counts
    buf: np.ndarray           # (N,) int64 buffer index
    cstart: np.ndarray        # (N,) int64
    cend: np.ndarray          # (N,) int64
    sources: list             # (name, first index) per shard, for error messages
    first_has_bbox: bool = True

    def __len__(self) -> int:
        return len(self.score)

    def name(self, n: int) -> str:
        """``file[index]`` of detection ``n`` (index within its shard)."""
        src, start = self.sources[0]
        for s, first in self.sources:
            if first <= n:
                src, start = s, first
        return f"{src}[{n - start}]"

    def masks(self, rows: np.ndarray) -> PackedMasks:
        """The compressed-RLE masks of detections ``rows``."""
        return PackedMasks(tuple(self.buffers), self.buf[rows], self.cstart[rows], self.cend[rows],
                           np.ascontiguousarray(self.seg_hw[rows]))

    def rles(self, rows: np.ndarray) -> list:
        """Compressed-RLE dicts (pycocotools format) of detections ``rows``."""
        return self.masks(rows).dicts()


@dataclass
class _Chunk:
    """One piece of work: ``data[span]`` of a raw JSON file (whole file if ``span`` is None),
    or ``items[span]`` of an in-memory list."""

    source: str
    data: bytes | None = None
    span: tuple[int, int] | None = None
    items: list | None = None
    segm: bool = True
    image_hw: dict | None = None
    out: mmap.mmap | None = None     # shared memory the worker writes the RLE counts into ...
    out_at: int = 0                  # ... from here on (room: the chunk's JSON length)

    def room(self) -> int:
        return 0 if self.out is None else (len(self.data) if self.span is None else self.span[1] - self.span[0])


def _locate_bad(items: list, segm: bool) -> tuple[int, str]:
    """(index, problem) of the first malformed entry (slow path, after the fast path failed)."""
    for j, d in enumerate(items):
        if not isinstance(d, dict):
            return j, f"is a {type(d).__name__}, not a detection object"
        ids = f"(image_id={d.get('image_id')}, category_id={d.get('category_id')})"
        for key in ("image_id", "category_id", "score"):
            if key not in d:
                return j, f"{ids}: missing '{key}'"
        for key in ("image_id", "category_id"):
            if not isinstance(d[key], int) or isinstance(d[key], bool):
                return j, f"{ids}: '{key}' must be an integer, got {d[key]!r}"
        if not isinstance(d["score"], (int, float)) or isinstance(d["score"], bool):
            return j, f"{ids}: 'score' must be a number, got {d['score']!r}"
        if "bbox" in d:
            b = d["bbox"]
            if not (isinstance(b, (list, tuple)) and len(b) == 4
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)):
                return j, f"{ids}: 'bbox' must be 4 numbers [x, y, w, h], got {b!r}"
        if segm and "segmentation" in d:
            sg = d["segmentation"]
            if not isinstance(sg, (dict, list)):
                return j, f"{ids}: 'segmentation' must be an RLE dict or polygons, got {sg!r}"
            if isinstance(sg, dict) and ("counts" not in sg or "size" not in sg):
                return j, f"{ids}: RLE 'segmentation' needs 'size' and 'counts'"
            if isinstance(sg, dict) and not isinstance(sg["counts"], (str, bytes, list)):
                return j, f"{ids}: RLE 'counts' must be a string or a list"
    return 0, "malformed detections"


class _Bad(Exception):
    """A malformed entry at chunk-relative index ``j``."""


def _to_rle(seg, hw: tuple[int, int]) -> dict:
    """Polygons / uncompressed RLE -> compressed RLE, as lvis-api's ``ann_to_rle``."""
    h, w = hw
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    return mask_utils.frPyObjects(seg, h, w)


def _parse_chunk(ch: _Chunk) -> dict:
    """Parse one chunk into arrays (runs in a worker); problems come back as ``bad``/``error``."""
    try:                                         # parallel_map pauses the garbage collector
        return _parse(ch)
    except _Bad as e:
        return {"n": 0, "bad": e.args}
    except ValueError as e:                      # JSON syntax, not a list, ...
        return {"n": 0, "error": str(e)}


def _loads(raw: bytes, source: str):
    try:
        try:
            import orjson
            return orjson.loads(raw)
        except ImportError:
            return json.loads(bytes(raw))
        except orjson.JSONDecodeError:
            return json.loads(bytes(raw))        # NaN / Infinity literals, as Python's json
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not valid JSON ({e})") from None


def _fixed_lists(lists, n: int, width: int, dtype) -> np.ndarray:
    """``n`` lists of ``width`` numbers -> ``(n, width)`` array; ValueError on a wrong length."""
    lists = list(lists)
    if n and set(map(len, lists)) != {width}:
        raise ValueError("wrong list length")
    return np.fromiter(chain.from_iterable(lists), dtype, n * width).reshape(n, width)


def _segm_slow(items: list, image_hw: dict | None) -> tuple[list, np.ndarray, np.ndarray]:
    """Counts strings, sizes and presence flags when some results lack a compressed RLE."""
    n = len(items)
    counts, hw, has_segm = [], np.zeros((n, 2), np.int64), np.zeros(n, bool)
    for j, d in enumerate(items):
        sg = d.get("segmentation")
        if sg is None:
            counts.append("")
            continue
        if not isinstance(sg, (dict, list)) or (isinstance(sg, dict) and ("counts" not in sg or "size" not in sg)):
            raise _Bad(*_locate_bad(items, True))
        if isinstance(sg, list) or isinstance(sg["counts"], list):
            img_hw = (image_hw or {}).get(d["image_id"])
            if img_hw is None:
                raise _Bad(j, "polygon or uncompressed-RLE segmentation on an unknown image")
            sg = _to_rle(sg, img_hw)
        c = sg["counts"]
        if not isinstance(c, (str, bytes)):
            raise _Bad(*_locate_bad(items, True))
        counts.append(c.decode("ascii") if isinstance(c, bytes) else c)
        hw[j] = sg["size"]
        has_segm[j] = True
    return counts, hw, has_segm


def _parse(ch: _Chunk) -> dict:
    if ch.items is not None:
        items = ch.items[ch.span[0]:ch.span[1]]
    else:
        with _json_list(ch) as raw:
            out = _parse_scanned(raw, ch)
            if out is None:
                out = _parse_typed(raw, ch)
            if out is not None:
                return out
            items = _loads(raw, ch.source)
        if not isinstance(items, list):
            raise ValueError(f"{ch.source}: results must be a JSON list of detections, "
                             f"got a {type(items).__name__}")
    n = len(items)
    out = {"n": n}
    if n == 0:
        return out
    try:
        ids = np.stack([np.fromiter(map(_image_id, items), np.int64, n),
                        np.fromiter(map(_category_id, items), np.int64, n)], 1)
        score = np.fromiter(map(_score, items), np.float64, n)
    except (KeyError, TypeError, ValueError):
        raise _Bad(*_locate_bad(items, ch.segm)) from None
    out["ids"], out["score"] = ids, score
    try:
        out["bbox"] = _fixed_lists(map(_bbox, items), n, 4, np.float64)
        out["has_bbox"] = np.ones(n, bool)
    except (KeyError, TypeError, ValueError):
        has = np.array(["bbox" in d for d in items], dtype=bool)
        box = np.full((n, 4), np.nan)
        try:
            if has.any():
                box[has] = np.array([d["bbox"] for d in items if "bbox" in d], dtype=np.float64).reshape(-1, 4)
        except (TypeError, ValueError):
            raise _Bad(*_locate_bad(items, ch.segm)) from None
        out["bbox"], out["has_bbox"] = box, has
    out["first_has_bbox"] = "bbox" in items[0]
    if not ch.segm:
        return out
    try:                                           # fast path: every result has a compressed RLE
        segs = list(map(_segm, items))
        counts = list(map(_counts, segs))
        hw = _fixed_lists(map(_size, segs), n, 2, np.int64)
        if not all(map(str.__instancecheck__, counts)):
            raise TypeError
        has_segm = np.ones(n, bool)
    except (KeyError, TypeError, ValueError):
        counts, hw, has_segm = _segm_slow(items, ch.image_hw)
    try:
        out.update(_pack_counts(counts, ch), has_segm=has_segm, hw=hw)
    except UnicodeEncodeError:
        raise _Bad(next(j for j, c in enumerate(counts) if not c.isascii()),
                   "RLE counts is not an ASCII string") from None
    return out


def _pack_counts(counts: list, ch: _Chunk) -> dict:
    """RLE ``counts`` strings -> one ASCII buffer and each string's ``[cstart, cend)`` in it.

    The buffer goes into the chunk's room in the shared ``ch.out`` when it fits (compressed RLEs
    read from the JSON always do), so it never travels back through a pipe; else it is returned.
    """
    buf = "".join(counts).encode("ascii")
    lens = np.fromiter(map(len, counts), dtype=np.int64, count=len(counts))
    ends = np.cumsum(lens)
    if len(buf) > ch.room():
        return {"buffer": buf, "cstart": ends - lens, "cend": ends}
    ch.out[ch.out_at:ch.out_at + len(buf)] = buf
    return {"buffer": None, "cstart": ch.out_at + ends - lens, "cend": ch.out_at + ends}


def _parse_scanned(raw, ch: _Chunk) -> dict | None:
    """Fastest path, the compiled scanner ``_scan.c``: results in the usual layout go straight
    into arrays and their counts into the chunk's room in ``ch.out``, with no Python object per
    result. None when the scanner is not built or the piece is not in that layout."""
    if _scan is None or (ch.segm and ch.out is None):
        return None
    got = _scan.scan(raw, ch.segm, ch.out, ch.out_at)
    if got is None:
        return None
    n, ids, score, bbox, hw, cstart, cend = got
    out = {"n": n}
    if n == 0:
        return out
    out["ids"] = np.frombuffer(ids, np.int64).reshape(n, 2)
    out["score"] = np.frombuffer(score, np.float64)
    out["bbox"] = np.frombuffer(bbox, np.float64).reshape(n, 4)
    out["has_bbox"], out["first_has_bbox"] = np.ones(n, bool), True
    if ch.segm:
        out["hw"] = np.frombuffer(hw, np.int64).reshape(n, 2)
        out["cstart"], out["cend"] = np.frombuffer(cstart, np.int64), np.frombuffer(cend, np.int64)
        out["buffer"], out["has_segm"] = None, np.ones(n, bool)
    return out


@cache
def _typed_decoder(segm: bool):
    """msgspec decoder of a results list in the common layout (None without msgspec)."""
    try:
        import msgspec
    except ImportError:
        return None

    fields = [("image_id", int), ("category_id", int), ("score", float),
              ("bbox", tuple[float, float, float, float])]
    if segm:
        rle = msgspec.defstruct("RLE", [("size", tuple[int, int]), ("counts", str)], gc=False)
        fields.append(("segmentation", rle))
    record = msgspec.defstruct("Result", fields, gc=False)   # other fields: skipped, never built

    return msgspec.json.Decoder(list[record]), msgspec.DecodeError


def _parse_typed(raw: bytes, ch: _Chunk) -> dict | None:
    """Fast path for results that all have integer ids, a numeric score, a 4-number ``bbox`` and
    (``segm``) a compressed RLE: msgspec decodes them into typed records and skips every other
    field without building it (for bbox evaluation, the RLE strings). None when any result
    differs (or msgspec is missing): the general parser then decides, and words any error.
    """
    segm = ch.segm
    decoder = _typed_decoder(segm)
    if decoder is None:
        return None
    decode, error = decoder
    try:
        items = decode.decode(raw)
    except error:
        return None
    n = len(items)
    out = {"n": n}
    if n == 0:
        return out
    out["ids"] = np.stack([np.fromiter(map(_image_id_attr, items), np.int64, n),
                           np.fromiter(map(_category_id_attr, items), np.int64, n)], 1)
    out["score"] = np.fromiter(map(_score_attr, items), np.float64, n)
    out["bbox"] = np.fromiter(chain.from_iterable(map(_bbox_attr, items)), np.float64, 4 * n).reshape(n, 4)
    out["has_bbox"], out["first_has_bbox"] = np.ones(n, bool), True
    if segm:
        rles = list(map(_segm_attr, items))
        try:
            out.update(_pack_counts(list(map(_counts_attr, rles)), ch))
        except UnicodeEncodeError:
            return None
        out["hw"] = np.fromiter(chain.from_iterable(map(_size_attr, rles)), np.int64, 2 * n).reshape(n, 2)
        out["has_segm"] = np.ones(n, bool)
    return out


@contextmanager
def _json_list(ch: _Chunk):
    """The chunk's text as a JSON list: the whole file, or ``"[" + data[a:b] + "]"``.

    For a span of a file read by :func:`_read_mutable` this is a view, no copy: the delimiters on
    either side of the span (``,`` or the file's own brackets) are set to ``[`` / ``]`` in place
    and restored afterwards (a forked worker only changes its private copy of two pages;
    in-process chunks run one after another).
    """
    if ch.span is None:
        with memoryview(ch.data) as view:
            yield view
        return
    (a, b), data = ch.span, ch.data
    if not isinstance(data, (bytearray, mmap.mmap)):
        yield b"[" + data[a:b] + b"]"
        return
    saved = data[a - 1], data[b]
    data[a - 1], data[b] = ord("["), ord("]")
    try:
        with memoryview(data)[a - 1:b + 1] as view:
            yield view
    finally:
        data[a - 1], data[b] = saved


def _read_mutable(path: Path) -> "mmap.mmap | bytearray":
    """The file's bytes, writable in this process only: a copy-on-write memory map (pages are
    read when touched, by the workers that parse them), or a bytearray where mapping fails."""
    try:
        with path.open("rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):                # empty file, or a file system without mmap
        data = bytearray(path.stat().st_size)
        with path.open("rb") as f:
            del data[f.readinto(data):]
        return data


def _split(data: bytes, source: str, pieces: int) -> list[tuple[int, int]]:
    """Spans (inside the outer brackets) of about equal size, cut between top-level objects."""
    lo = data.find(b"[")
    hi = data.rfind(b"]")
    if lo < 0 or hi < lo or data[:lo].strip():
        raise ValueError(f"{source}: results must be a JSON list of detections")
    lo += 1
    cuts, step = [lo], (hi - lo) // max(pieces, 1)
    for p in range(1, pieces):
        m = _BOUNDARY.search(data, max(lo + p * step, cuts[-1]), hi)
        if m is None:
            break
        comma = data.find(b",", m.start())
        cuts.append(comma)
    spans = []
    for a, b in zip(cuts, cuts[1:] + [hi]):
        spans.append((a if a == lo else a + 1, b))
    return spans


def _share_output(chunks: list[_Chunk]) -> list[_Chunk]:
    """Give each file chunk of a segm parse its room in one shared anonymous memory map
    (inherited by the forked workers; pages are only allocated where counts are written)."""
    files = [c for c in chunks if c.segm and c.items is None]
    for c in files:
        c.out = None
    size = sum(len(c.data) if c.span is None else c.span[1] - c.span[0] for c in files)
    if size:
        out, at = mmap.mmap(-1, size), 0
        for c in files:
            c.out, c.out_at = out, at
            at += c.room()
    return chunks


def load_results(results: "str | Path | Sequence[str | Path] | list[dict]", gt: GroundTruth,
                 segm: bool = True, workers: int | None = None) -> Detections:
    """Parse and validate results; ``segm=False`` skips the masks (bbox-only evaluation)."""
    workers = default_workers() if workers is None else workers
    hw = {int(i): (int(h), int(w)) for i, (h, w) in zip(gt.image_ids, gt.image_hw)}
    chunks: list[_Chunk] = []
    sources: list[tuple[str, int]] = []
    if isinstance(results, (str, Path)):
        results = [results]
    if not isinstance(results, (list, tuple)):
        raise TypeError(f"results must be a path, a list of shard paths or a list of dicts, "
                        f"got {type(results).__name__}")
    if results and all(isinstance(r, (str, Path)) for r in results):
        for path in map(Path, results):
            if not path.is_file():
                raise FileNotFoundError(f"results file not found: {path}")
            data = _read_mutable(path)
            if _BLANK.fullmatch(data):
                raise ValueError(f"{path}: empty file; results must be a JSON list of detections")
            pieces = max(workers, -(-len(data) // PIECE_BYTES)) if len(data) > SPLIT_BYTES else 1
            try:
                spans = _split(data, str(path), pieces)
            except ValueError:
                spans = [None]                   # not a list: the parser reports it
            for span in spans:
                chunks.append(_Chunk(str(path), data=data, span=span, segm=segm, image_hw=hw))
    else:
        bad = next((j for j, r in enumerate(results) if not isinstance(r, dict)), None)
        if bad is not None:
            raise ValueError(f"results[{bad}] is a {type(results[bad]).__name__}, not a detection "
                             "object (mixing paths and dicts is not supported)")
        n = len(results)
        pieces = workers if n > 20000 else 1
        bounds = np.linspace(0, n, pieces + 1).astype(int)
        for a, b in zip(bounds[:-1], bounds[1:]):
            chunks.append(_Chunk("results", span=(int(a), int(b)), items=results, segm=segm, image_hw=hw))
    parts = parallel_map(_parse_chunk, _share_output(chunks), workers)
    if any("error" in p for p in parts) and any(c.span is not None and c.items is None for c in chunks):
        # a split inside a string cannot happen for valid results; re-parse whole files to be sure
        chunks = [_Chunk(c.source, data=c.data, segm=segm, image_hw=hw)
                  for j, c in enumerate(chunks) if c.items is not None or j == 0
                  or chunks[j - 1].source != c.source]
        parts = parallel_map(_parse_chunk, _share_output(chunks), workers)
    # indices inside a file continue across its chunks
    starts, seen = [], {}
    for ch, p in zip(chunks, parts):
        key = ch.source if ch.items is None else "results"
        starts.append(seen.get(key, 0))
        if "error" in p:
            raise ValueError(p["error"])
        if "bad" in p:
            j, what = p["bad"]
            raise ValueError(f"{key}[{starts[-1] + j}] {what}")
        seen[key] = starts[-1] + p["n"]
    total = 0
    for ch, p, st in zip(chunks, parts, starts):
        if st == 0:
            sources.append((ch.source, total))
        total += p["n"]
    return _assemble(chunks, parts, sources or [("results", 0)], segm, gt)


def _assemble(chunks: list, parts: list[dict], sources: list, segm: bool, gt: GroundTruth) -> Detections:
    shared = next((ch.out for ch in chunks if ch.out is not None), None)
    buffers, buf_ids = [shared] if shared is not None else [], []
    for ch, p in zip(chunks, parts):
        if not p["n"] or not segm or p["buffer"] is None:
            buf_ids.append(0)
        else:
            buf_ids.append(len(buffers))
            buffers.append(p["buffer"])
    use = [(p, b) for p, b in zip(parts, buf_ids) if p["n"]]
    n = sum(p["n"] for p, _ in use)
    if n == 0:
        e = np.zeros(0)
        z = np.zeros(0, np.int64)
        return Detections(z, z, e, np.zeros((0, 4)), np.zeros(0, bool), np.zeros(0, bool),
                          np.zeros((0, 2), np.int64), [], z, z, z, sources)

    def cat(key, fill):
        return np.concatenate([p[key] if segm else fill(p["n"]) for p, _ in use])

    ids = np.concatenate([p["ids"] for p, _ in use])
    det = Detections(
        image_id=ids[:, 0].copy(), category_id=ids[:, 1].copy(),
        score=np.concatenate([p["score"] for p, _ in use]),
        bbox=np.concatenate([p["bbox"] for p, _ in use]),
        has_bbox=np.concatenate([p["has_bbox"] for p, _ in use]),
        has_segm=cat("has_segm", lambda m: np.zeros(m, bool)),
        seg_hw=cat("hw", lambda m: np.zeros((m, 2), np.int64)),
        buffers=buffers,
        buf=np.concatenate([np.full(p["n"], b, np.int64) for p, b in use]),
        cstart=cat("cstart", lambda m: np.zeros(m, np.int64)),
        cend=cat("cend", lambda m: np.zeros(m, np.int64)),
        sources=sources,
        first_has_bbox=use[0][0]["first_has_bbox"],
    )
    _validate(det, gt)
    return det


def _validate(det: Detections, gt: GroundTruth) -> None:
    """Raise on the first offending detection: unknown ids, NaN score, bad boxes."""
    box = det.bbox
    checks = [
        (gt.image_index(det.image_id) < 0, f"unknown image_id (not in the ground truth {gt.source})"),
        (gt.cat_index(det.category_id) < 0, f"unknown category_id (not in the ground truth {gt.source})"),
        (np.isnan(det.score), "score is NaN"),
        (det.has_bbox & ~np.isfinite(box).all(1), "bbox has a non-finite value"),
        (det.has_bbox & ((box[:, 2] < 0) | (box[:, 3] < 0)), "bbox has a negative width or height"),
    ]
    first = [(int(np.argmax(m)), int(m.sum()), what) for m, what in checks if m.any()]
    if first:
        j = min(f[0] for f in first)
        what = "; ".join(w for i, _, w in first if i == j)
        count = int(np.logical_or.reduce([m for m, _ in checks]).sum())
        raise ValueError(f"{det.name(j)} (image_id={det.image_id[j]}, category_id={det.category_id[j]}, "
                         f"score={det.score[j]}): {what}" + (f" [{count} bad detections in all]" if count > 1 else ""))
