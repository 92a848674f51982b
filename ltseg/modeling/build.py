"""``build_model(cfg.model, loss, stats)``: assemble a Mask R-CNN from a ``conf/model/*.yaml`` config.

The RoI heads class is ``model.roi_heads._target_`` (e.g. ``ltseg.modeling.roi_heads.StandardROIHeads``
or the cascade); it is built with ``cls.from_config(cfg.roi_heads, in_channels, strides,
num_classes, loss, stats)``.
"""
from __future__ import annotations

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ltseg.data.category_stats import CategoryStats
from ltseg.losses.base import ClassificationLoss

from .anchors import AnchorGenerator
from .backbone import ResNetBackbone
from .fpn import FPN
from .mask_rcnn import MaskRCNN
from .rpn import RPN


def resolve_num_classes(model_cfg, stats: CategoryStats) -> int:
    """``model.num_classes: null`` -> the dataset's count; a number must agree with it."""
    configured = model_cfg.get("num_classes")
    if configured is not None and int(configured) != stats.num_classes:
        raise ValueError(f"model.num_classes is {configured} but the training dataset has "
                         f"{stats.num_classes} categories (set model.num_classes=null to take it from the data)")
    return stats.num_classes


def build_model(model_cfg, loss: ClassificationLoss, stats: CategoryStats) -> MaskRCNN:
    cfg: DictConfig = model_cfg if isinstance(model_cfg, DictConfig) else OmegaConf.create(model_cfg)
    num_classes = resolve_num_classes(cfg, stats)
    b = cfg.backbone
    backbone = ResNetBackbone(b.depth, b.norm, b.freeze_at, b.weights, b.get("num_groups", 32), b.get("width", 64))
    fpn = FPN(backbone.out_channels, cfg.fpn.out_channels, backbone.strides)
    a = cfg.anchors
    anchors = AnchorGenerator([list(s) for s in a.sizes], list(a.aspect_ratios), fpn.strides)
    r = cfg.rpn
    rpn = RPN(fpn.out_channels, anchors, fg_iou=r.fg_iou, bg_iou=r.bg_iou,
              batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction,
              pre_nms_topk_train=r.pre_nms_topk_train, post_nms_topk_train=r.post_nms_topk_train,
              pre_nms_topk_test=r.pre_nms_topk_test, post_nms_topk_test=r.post_nms_topk_test,
              nms_thresh=r.nms_thresh, min_size=r.min_size, smooth_l1_beta=r.smooth_l1_beta,
              box_weights=tuple(r.box_weights))
    heads_cls = get_class(cfg.roi_heads._target_)
    roi_heads = heads_cls.from_config(cfg.roi_heads, fpn.out_channels, backbone.strides, num_classes, loss, stats)
    return MaskRCNN(backbone, fpn, rpn, roi_heads)
