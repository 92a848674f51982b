"""Stable multi-key sorting faster than ``np.lexsort`` for the evaluator's keys.

``np.lexsort`` is several times slower than successive stable ``argsort`` passes here, and
small integer keys (category and image indices) sort in linear time as int16 (radix sort).
"""
import numpy as np


def _compact(key: np.ndarray) -> np.ndarray:
    if key.dtype.kind in "iu" and len(key):
        lo, hi = int(key.min()), int(key.max())
        for dt in (np.int16, np.int32):
            if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
                return key.astype(dt, copy=False)
    return key


def lexsort(keys) -> np.ndarray:
    """Same result as ``np.lexsort(keys)``: the last key is primary, ties keep earlier keys' order,
    remaining ties keep input order."""
    order = None
    for key in keys:
        k = _compact(np.asarray(key))
        if order is None:
            order = np.arange(len(k)) if np.all(k[1:] >= k[:-1]) else np.argsort(k, kind="stable")
        else:
            order = order[np.argsort(k[order], kind="stable")]
    return order
