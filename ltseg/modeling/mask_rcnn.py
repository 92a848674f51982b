"""Mask R-CNN: backbone -> FPN -> RPN -> RoI heads, plus the inference protocol's last steps."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import postprocess


class MaskRCNN(nn.Module):
    """Training: ``model(images, image_sizes, targets) -> {loss_name: scalar}``.
    Inference: ``model(images, image_sizes, orig_sizes=...) -> [{boxes, scores, labels, masks}]``
    per image, boxes in original-image pixels, masks as RLE dicts (counts str), K <= max_dets.

    ``images (B, 3, Hp, Wp)`` normalised and padded; ``image_sizes[i] = (h, w)`` before padding.
    """

    def __init__(self, backbone: nn.Module, fpn: nn.Module, rpn: nn.Module, roi_heads: nn.Module):
        super().__init__()
        self.backbone, self.fpn, self.rpn, self.roi_heads = backbone, fpn, rpn, roi_heads
        self.num_pooled_levels = len(roi_heads.box_pooler.strides)
        self.sample_generator: torch.Generator | None = None

    def set_loss_generator(self, generator: torch.Generator | None) -> None:
        """RNG that stochastic classification losses draw from."""
        self.roi_heads.loss_generator = generator

    def set_sampling_generator(self, generator: torch.Generator | None) -> None:
        """RNG of the RPN anchor and RoI samplers (``None`` = torch's global RNG)."""
        self.sample_generator = generator
        self.roi_heads.sample_generator = generator

    def set_iteration(self, iteration: int | None) -> None:
        """Training iteration, reported in loss error messages."""
        self.roi_heads.iteration = iteration

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict] | None = None,
                orig_sizes: list[tuple[int, int]] | None = None):
        if self.training:
            self.check_targets(targets, images.shape[0])
            features = self.fpn(self.backbone(images))
            proposals, losses = self.rpn(features, image_sizes, targets, self.sample_generator)
            losses.update(self.roi_heads(features[: self.num_pooled_levels], proposals, image_sizes, targets))
            return losses
        detections = self.detect(images, image_sizes, orig_sizes)
        orig_sizes = orig_sizes or image_sizes
        for det, size in zip(detections, orig_sizes):
            det["masks"] = postprocess.encode_masks(det.pop("mask_probs"), det["boxes"], size,
                                                    self.roi_heads.mask_threshold)
        return detections

    @torch.no_grad()
    def detect(self, images: Tensor, image_sizes: list[tuple[int, int]],
               orig_sizes: list[tuple[int, int]] | None = None) -> list[dict]:
        """Detections with ``mask_probs (K, M, M)`` (not yet pasted); boxes in ``orig_sizes`` pixels."""
        features = self.fpn(self.backbone(images))
        proposals, _ = self.rpn(features, image_sizes)
        detections = self.roi_heads(features[: self.num_pooled_levels], proposals, image_sizes)
        if orig_sizes is not None:
            for det, size, orig in zip(detections, image_sizes, orig_sizes):
                det["boxes"] = postprocess.rescale_boxes(det["boxes"], size, orig)
        return detections

    def check_targets(self, targets: list[dict] | None, batch_size: int) -> None:
        if targets is None or len(targets) != batch_size:
            raise ValueError(f"MaskRCNN: training needs one target per image ({batch_size} images, "
                             f"{None if targets is None else len(targets)} targets)")
        num_classes = self.roi_heads.num_classes
        for i, t in enumerate(targets):
            labels = t["labels"]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                raise ValueError(f"MaskRCNN: target {i} (image_id {t.get('image_id')}) has labels outside "
                                 f"0..{num_classes - 1}: {labels.tolist()}")
            if t["boxes"].shape != (labels.numel(), 4):
                raise ValueError(f"MaskRCNN: target {i} (image_id {t.get('image_id')}) has boxes "
                                 f"{tuple(t['boxes'].shape)} for {labels.numel()} labels")
