"""Region Proposal Network: objectness + box deltas per anchor, proposals, RPN losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .matcher import BalancedSampler, Matcher


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 convs for ``A`` objectness logits and ``4A`` deltas."""

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``[(B, C, H_l, W_l)]`` -> objectness ``(B, N)``, deltas ``(B, N, 4)``; ``N = sum H_l W_l A``,
        ordered level, then location, then anchor (the ``AnchorGenerator`` order)."""
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            obj = self.objectness(t)
            b, a, h, w = obj.shape
            logits.append(obj.permute(0, 2, 3, 1).reshape(b, -1))
            deltas.append(self.deltas(t).view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


class RPN(nn.Module):
    """Proposals (per level pre-NMS top-k, NMS per level, per image post-NMS top-k) and losses.

    Training: anchors matched at IoU 0.7 / 0.3 with low-quality matches, ``batch_size_per_image``
    anchors sampled 1:1; ``loss_rpn_cls`` = BCE over the sampled anchors, ``loss_rpn_box`` =
    smooth-L1 over the foreground ones, both divided by the number of sampled anchors.
    """

    def __init__(self, in_channels: int, anchor_generator: AnchorGenerator, *, fg_iou: float = 0.7,
                 bg_iou: float = 0.3, batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 pre_nms_topk_train: int = 2000, post_nms_topk_train: int = 2000, pre_nms_topk_test: int = 1000,
                 post_nms_topk_test: int = 1000, nms_thresh: float = 0.7, min_size: float = 1e-3,
                 smooth_l1_beta: float = 1.0 / 9, box_weights: tuple = (1.0, 1.0, 1.0, 1.0)):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = RPNHead(in_channels, anchor_generator.num_anchors_per_location)
        self.matcher = Matcher(fg_iou, bg_iou, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(box_weights)
        self.pre_nms_topk = {True: pre_nms_topk_train, False: pre_nms_topk_test}
        self.post_nms_topk = {True: post_nms_topk_train, False: post_nms_topk_test}
        self.nms_thresh, self.min_size, self.smooth_l1_beta = nms_thresh, min_size, smooth_l1_beta

    def forward(self, features: list[Tensor], image_sizes: list[tuple[int, int]], targets: list[dict] | None = None,
                generator: torch.Generator | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """FPN levels -> per-image proposals ``(P_i, 4)`` (detached) and the losses (training only)."""
        anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in features])
        objectness, deltas = self.head(features)
        proposals = self.select_proposals(objectness.detach(), deltas.detach(), anchors, image_sizes)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("RPN: training needs targets")
            losses = self.losses(objectness, deltas, torch.cat(anchors), targets, generator)
        return proposals, losses

    def select_proposals(self, objectness: Tensor, deltas: Tensor, anchors: list[Tensor],
                         image_sizes: list[tuple[int, int]]) -> list[Tensor]:
        b = objectness.shape[0]
        topk = self.pre_nms_topk[self.training]
        scores, boxes, levels, start = [], [], [], 0
        for level, level_anchors in enumerate(anchors):
            n = level_anchors.shape[0]
            k = min(topk, n)
            top, idx = objectness[:, start:start + n].topk(k, dim=1)
            level_deltas = deltas[:, start:start + n].gather(1, idx[..., None].expand(-1, -1, 4))
            decoded = self.box_coder.decode(level_deltas.reshape(-1, 4), level_anchors[idx.reshape(-1)])
            scores.append(top)
            boxes.append(decoded.view(b, k, 4))
            levels.append(torch.full((k,), level, dtype=torch.int64, device=objectness.device))
            start += n
        scores = torch.cat(scores, dim=1).sigmoid()
        boxes = torch.cat(boxes, dim=1)
        levels = torch.cat(levels)
        proposals = []
        for img_boxes, img_scores, size in zip(boxes, scores, image_sizes):
            img_boxes = clip_boxes_to_image(img_boxes, size)
            keep = remove_small_boxes(img_boxes, self.min_size)
            img_boxes, img_scores, lvl = img_boxes[keep], img_scores[keep], levels[keep]
            keep = batched_nms(img_boxes, img_scores, lvl, self.nms_thresh)[: self.post_nms_topk[self.training]]
            proposals.append(img_boxes[keep])
        return proposals

    def losses(self, objectness: Tensor, deltas: Tensor, anchors: Tensor, targets: list[dict],
               generator: torch.Generator | None) -> dict[str, Tensor]:
        cls_logits, cls_labels, box_pred, box_target = [], [], [], []
        for i, target in enumerate(targets):
            gt = target["boxes"]
            matched, labels = self.matcher(box_iou(gt, anchors))
            pos, neg = self.sampler(labels, generator)
            sampled = torch.cat([pos, neg])
            cls_logits.append(objectness[i, sampled])
            cls_labels.append((torch.arange(sampled.numel(), device=sampled.device) < pos.numel()).to(objectness.dtype))
            box_pred.append(deltas[i, pos])
            box_target.append(self.box_coder.encode(gt[matched[pos]], anchors[pos]) if gt.numel() else deltas.new_zeros(0, 4))
        num_sampled = max(sum(t.numel() for t in cls_labels), 1)
        loss_cls = F.binary_cross_entropy_with_logits(torch.cat(cls_logits), torch.cat(cls_labels), reduction="sum")
        loss_box = F.smooth_l1_loss(torch.cat(box_pred), torch.cat(box_target), beta=self.smooth_l1_beta, reduction="sum")
        return {"loss_rpn_cls": loss_cls / num_sampled, "loss_rpn_box": loss_box / num_sampled}
