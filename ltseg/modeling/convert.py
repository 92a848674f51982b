"""Import torchvision's ``maskrcnn_resnet50_fpn`` weights into ``ltseg``'s Mask R-CNN.

torchvision puts the background class FIRST (index 0); ltseg puts it LAST in the softmax
logits and has no background row in box deltas or mask logits. A model converted this way
reproduces torchvision's detections when built with torchvision's settings: backbone norm
``BN`` (or FrozenBN), ``roi_heads.pooler.aligned=false``, ``sampling_ratio=2``
(tests/modeling/test_modeling_parity.py).
"""
from __future__ import annotations

import re

import torch
from torch import Tensor, nn

# (torchvision key regex, ltseg key template); both the current and the pre-0.13 names.
KEY_MAP = [
    (r"backbone\.body\.(.*)", r"backbone.body.\1"),
    (r"backbone\.fpn\.inner_blocks\.(\d+)(?:\.0)?\.(weight|bias)", r"fpn.lateral.\1.\2"),
    (r"backbone\.fpn\.layer_blocks\.(\d+)(?:\.0)?\.(weight|bias)", r"fpn.output.\1.\2"),
    (r"rpn\.head\.conv(?:\.0\.0)?\.(weight|bias)", r"rpn.head.conv.\1"),
    (r"rpn\.head\.cls_logits\.(weight|bias)", r"rpn.head.objectness.\1"),
    (r"rpn\.head\.bbox_pred\.(weight|bias)", r"rpn.head.deltas.\1"),
    (r"roi_heads\.box_head\.fc6\.(weight|bias)", r"roi_heads.box_head.fc.0.\1"),
    (r"roi_heads\.box_head\.fc7\.(weight|bias)", r"roi_heads.box_head.fc.1.\1"),
    (r"roi_heads\.box_predictor\.cls_score\.(weight|bias)", r"roi_heads.box_predictor.cls_score.\1"),
    (r"roi_heads\.box_predictor\.bbox_pred\.(weight|bias)", r"roi_heads.box_predictor.bbox_pred.\1"),
    (r"roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)", r"roi_heads.mask_head.convs.\1.0.\2"),
    (r"roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)", r"roi_heads.mask_head.deconv.\1"),
    (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)", r"roi_heads.mask_head.predictor.\1"),
]
OLD_MASK_FCN = re.compile(r"roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)")


def _rename(key: str) -> str:
    old = OLD_MASK_FCN.fullmatch(key)
    if old:
        return f"roi_heads.mask_head.convs.{int(old.group(1)) - 1}.0.{old.group(2)}"
    for pattern, template in KEY_MAP:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    raise KeyError(f"convert_torchvision_maskrcnn: unknown torchvision key '{key}'")


def convert_torchvision_maskrcnn(state: dict[str, Tensor], softmax_logits: bool = True) -> dict[str, Tensor]:
    """torchvision ``MaskRCNN.state_dict()`` -> ltseg ``MaskRCNN`` state dict.

    Classification rows: ``[bg, 1..C] -> [1..C, bg]`` when ``softmax_logits`` (C+1 logits),
    else ``[1..C]`` (sigmoid losses, C logits). Box deltas and mask logits drop the background.
    """
    out = {}
    for key, value in state.items():
        new = _rename(key)
        if new.startswith("roi_heads.box_predictor.cls_score."):
            value = torch.cat([value[1:], value[:1]]) if softmax_logits else value[1:]
        elif new.startswith("roi_heads.box_predictor.bbox_pred."):
            value = value[4:]
        elif new.startswith("roi_heads.mask_head.predictor."):
            value = value[1:]
        out[new] = value
    return out


def load_torchvision_maskrcnn(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Convert ``state`` and load it into ``model``; every model weight must be covered
    (the classification loss's own buffers excepted)."""
    num_logits = model.roi_heads.box_predictor.cls_score.weight.shape[0]
    softmax = num_logits == model.roi_heads.num_classes + 1
    missing, unexpected = model.load_state_dict(convert_torchvision_maskrcnn(state, softmax), strict=False)
    missing = [k for k in missing if not k.startswith("roi_heads.loss.") and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise KeyError(f"load_torchvision_maskrcnn: missing {missing[:8]}, unexpected {unexpected[:8]} "
                       f"(is the model an R50-FPN with torchvision's head sizes?)")
