"""Mask R-CNN on torchvision building blocks (see docs/model.md)."""
from .build import build_model
from .mask_rcnn import MaskRCNN
from .postprocess import to_lvis_results

__all__ = ["build_model", "MaskRCNN", "to_lvis_results"]
