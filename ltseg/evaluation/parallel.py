"""Run independent pieces of the evaluation in forked worker processes.

Workers are forked, so large read-only inputs (the raw results bytes, decoded GT) are shared
copy-on-write instead of pickled; only the compact per-piece outputs travel back. The function
and its inputs are handed over through a module global set just before the fork.

The pieces build many short-lived Python objects (parsed JSON, RLE dicts) and no reference
cycles, so the cyclic garbage collector is paused while one runs: its passes over the growing
object lists would otherwise take 2-4x longer than the work itself.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import threading
from typing import Any, Callable, Sequence

_TASK: tuple[Callable, Sequence] | None = None
MIN_DETS_PER_WORKER = 5000     # below this per worker, forking (~30 ms) costs more than it saves


def _run(i: int) -> Any:
    fn, items = _TASK
    return without_gc(fn, items[i])


def without_gc(fn: Callable, x: Any) -> Any:
    """``fn(x)`` with the cyclic garbage collector paused (restored to its previous state)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return fn(x)
    finally:
        if was_enabled:
            gc.enable()


def default_workers() -> int:
    """Usable CPU cores (affinity-aware), at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def fork_workers(workers: int) -> int:
    """Processes :func:`parallel_map` would use: ``workers``, or 1 where forking is not possible
    or not safe (see there)."""
    if (workers <= 1 or "fork" not in mp.get_all_start_methods()
            or mp.current_process().daemon          # daemonic processes may not have children
            or threading.active_count() > 1):
        return 1
    return workers


def parallel_map(fn: Callable, items: Sequence, workers: int) -> list:
    """``[fn(x) for x in items]``, with up to ``workers`` forked processes (in-process if 1).

    Forking is only safe in a single-threaded process: a lock held by another thread (logging,
    TensorBoard's writer, a DataLoader's pin thread) would stay locked forever in the child. A
    multi-threaded caller, such as the trainer evaluating at the end of a run, runs in-process.
    """
    global _TASK
    if fork_workers(workers) <= 1 or len(items) <= 1:
        return [without_gc(fn, x) for x in items]
    _TASK = (fn, items)
    try:
        with mp.get_context("fork").Pool(min(workers, len(items))) as pool:
            return pool.map(_run, range(len(items)), chunksize=1)
    finally:
        _TASK = None
