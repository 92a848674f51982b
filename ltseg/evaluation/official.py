"""``backend="official"``: the same evaluation through the ``lvis`` package (lvis-api 0.5.3).

For users who want to cross-check. lvis 0.5.3 calls ``np.float`` (gone since NumPy 1.24), so
the removed aliases are restored as the builtins they stood for before importing it. Results
follow the detectron2 convention: ``bbox`` is dropped before ``segm`` evaluation.
"""
from __future__ import annotations

import copy
import logging

import numpy as np


def _import_lvis():
    for alias, builtin in {"float": float, "int": int, "bool": bool, "object": object,
                           "complex": complex, "str": str}.items():
        if alias not in np.__dict__:
            setattr(np, alias, builtin)
    try:
        from lvis import LVIS, LVISEval, LVISResults
    except ImportError as e:
        raise ImportError("backend=official needs the 'lvis' package (pip install lvis)") from e
    return LVIS, LVISEval, LVISResults


def official_evaluate(gt: dict, results: list, iou_type: str, max_dets: int = 300
                      ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Run lvis-api on copies of ``gt`` (dict) and ``results`` (list of dicts).

    Returns precision ``(T, R, K, A)``, recall ``(T, K, A)`` and lvis-api's summary dict.
    """
    LVIS, LVISEval, LVISResults = _import_lvis()
    if not results:
        raise ValueError("backend=official: the lvis package cannot evaluate empty results "
                         "(IndexError in LVISResults); use backend=native")
    api = LVIS.__new__(LVIS)
    api.logger = logging.getLogger("lvis.lvis")
    api.dataset = copy.deepcopy(gt)
    api._create_index()
    dets = copy.deepcopy(results)
    if iou_type == "segm":
        for d in dets:
            d.pop("bbox", None)
    ev = LVISEval(api, LVISResults(api, dets, max_dets=max_dets), iou_type)
    ev.run()
    return ev.eval["precision"], ev.eval["recall"], {k: float(v) for k, v in ev.results.items()}
