"""The official LVIS evaluation constants, as the exact float64 values lvis-api uses.

The thresholds come from ``np.linspace`` exactly as lvis-api builds them: ``torch.linspace``
or ``i / 100`` give other doubles (``0.35000000000000003``, ``0.8999999999999999``), which
changes AP.
"""
import numpy as np

IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)  # (T,) = 10
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)  # (R,) = 101
AREA_RNG = np.array([[0.0, 1e10], [0.0, 1024.0], [1024.0, 9216.0], [9216.0, 1e10]])  # (A, 2), inclusive
AREA_LBL = ("all", "small", "medium", "large")
FREQ_LBL = ("r", "c", "f")
EPS = float(np.spacing(1))                                      # 2.220446049250313e-16
MAX_DETS = 300

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
                "AR@300", "ARs@300", "ARm@300", "ARl@300")
BIN_KEYS = ("AP1", "AP2", "AP3", "AP4")
