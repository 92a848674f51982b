"""Test-only access to the official ``lvis`` 0.5.3 API under NumPy 2.

``lvis`` 0.5.3 (the last PyPI release) still calls ``np.float``, removed in NumPy 1.24. This
shim restores the removed aliases as the builtins they used to be, then re-exports the API.
Use it only as an oracle in tests and benchmarks, never in library code.
"""
import numpy as np

for _alias, _builtin in {"float": float, "int": int, "bool": bool, "object": object,
                         "complex": complex, "str": str}.items():
    if _alias not in np.__dict__:
        setattr(np, _alias, _builtin)

from lvis import LVIS, LVISEval, LVISResults  # noqa: E402

__all__ = ["LVIS", "LVISEval", "LVISResults"]


def official_eval(gt: dict, results: list, iou_type: str, max_dets: int = 300) -> LVISEval:
    """Run the official evaluation on deep copies (it mutates its inputs), detectron2-style.

    For ``segm`` the ``bbox`` of each result is removed first, as detectron2 does, so that area
    ranges use the mask area. Returns the ``LVISEval`` after ``run()``.
    """
    import copy
    import logging

    gt_api = LVIS.__new__(LVIS)
    gt_api.logger = logging.getLogger("lvis.lvis")
    gt_api.dataset = copy.deepcopy(gt)
    gt_api._create_index()
    dets = copy.deepcopy(results)
    if iou_type == "segm":
        for d in dets:
            d.pop("bbox", None)
    ev = LVISEval(gt_api, LVISResults(gt_api, dets, max_dets=max_dets), iou_type)
    ev.run()
    return ev
