"""Native LVIS evaluation: the official lvis-api numbers, vectorised, plus bins, tables and plots.

Only NumPy and pycocotools are imported here (no torch), so the CLI starts fast.
"""
from .api import evaluate_results
from .lvis_eval import LVISEvaluator, Metrics
from .report import format_table

__all__ = ["LVISEvaluator", "Metrics", "evaluate_results", "format_table"]
