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
