"""Native LVIS evaluation: the official lvis-api numbers, vectorised, plus bins, tables and plots."""
from .lvis_eval import LVISEvaluator, Metrics

__all__ = ["LVISEvaluator", "Metrics"]
