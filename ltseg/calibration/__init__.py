"""SimCal (docs/simcal.md): bi-level sampling, calibrated heads on a frozen model, dual-head inference."""
from .bilevel import BilevelSampler, select_balanced_proposals
from .dual_head import calibrated_classes, combine_scores
from .heads import build_calibration_head
from .simcal import SimCal

__all__ = ["BilevelSampler", "SimCal", "build_calibration_head", "calibrated_classes", "combine_scores",
           "select_balanced_proposals"]
