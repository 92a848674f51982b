"""Cascade R-CNN RoI heads (Cai & Vasconcelos 2018) with a Mask R-CNN mask branch.

Stage ``k`` has its own box head, class-agnostic box predictor, IoU threshold (0.5 / 0.6 /
0.7), box coder (target stds 0.1/0.2, 0.05/0.1, 0.033/0.067, i.e. weights 10/5, 20/10, 30/15)
and its own deep copy of the configured ``ClassificationLoss`` (so stateful losses keep one
state per stage). Training: stage 0 matches and samples the proposals (+ gt) like Mask
R-CNN; stage ``k > 0`` takes the boxes stage ``k-1`` regressed from them (detached, clipped,
empty ones dropped) and matches all of them at its own threshold (detectron2's flow). Losses
``s{k}_loss_cls`` / ``s{k}_loss_box`` are returned already multiplied by the stage weight
(1, 0.5, 0.25). The mask head sits on the last stage (``loss_mask``, weight 1) or, with
``mask_on_all_stages``, one per stage (``s{k}_loss_mask``, stage-weighted; mask
probabilities averaged at test time). Inference: the class scores of the stages, each
through its own loss's ``scores``, are averaged; boxes are the last stage's regression.

HTC-Lite (Seesaw LVIS-2020 report, Sec. 1.2) is this cascade with ``context`` on: a global
context encoder (``num_convs`` 3x3 convs on the coarsest pooled FPN level, global average
pooling -> ``(B, C_fpn)``) whose vector is added to every RoI's pooled box and mask features,
trained by a multi-label loss ``loss_context = w * mean BCE(fc(v), image classes)``
(mmdetection's ``GlobalContextHead``), with one mask head on the last stage.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image

from ltseg.data.category_stats import CategoryStats
from ltseg.losses.base import ClassificationLoss

from .box_coder import BoxCoder
from .box_head import BoxHead, BoxPredictor, conv_norm
from .mask_head import MaskHead
from .matcher import BalancedSampler, Matcher
from .poolers import MultiScaleRoIAlign
from .roi_heads import RoISamples, StandardROIHeads, add_ground_truth, mask_targets, match_proposals


class ContextEncoder(nn.Module):
    """``features[-1] (B, C, H, W)`` -> context ``(B, C)`` and multi-label logits ``(B, num_classes)``."""

    def __init__(self, channels: int, num_classes: int, num_convs: int = 4, loss_weight: float = 1.0):
        super().__init__()
        self.convs = nn.Sequential(*(conv_norm(channels, channels, None) for _ in range(num_convs)))
        self.fc = nn.Linear(channels, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        self.loss_weight = float(loss_weight)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        v = self.convs(features[-1]).mean(dim=(2, 3))
        return v, self.fc(v)

    def loss(self, logits: Tensor, targets: list[dict]) -> Tensor:
        """``w * mean_{b, c} BCE(logits, 1[class c annotated in image b])``."""
        present = torch.zeros_like(logits, dtype=torch.float32)
        for i, t in enumerate(targets):
            present[i, t["labels"].to(logits.device)] = 1.0
        return self.loss_weight * F.binary_cross_entropy_with_logits(logits.float(), present)


def add_context(pooled: Tensor, boxes: list[Tensor], context: Tensor | None) -> Tensor:
    """``pooled (R, C, S, S)`` of per-image ``boxes`` plus each RoI's image context ``(B, C)``."""
    if context is None:
        return pooled
    image = torch.repeat_interleave(torch.arange(len(boxes), device=pooled.device),
                                    torch.tensor([len(b) for b in boxes], device=pooled.device))
    return pooled + context[image][:, :, None, None].to(pooled.dtype)


@dataclass
class BoxStage:
    """The pieces of one box stage (a view; the modules are owned by the RoI heads)."""

    box_head: BoxHead
    box_predictor: BoxPredictor
    loss: ClassificationLoss
    matcher: Matcher
    box_coder: BoxCoder


class CascadeROIHeads(StandardROIHeads):
    """Cascade box stages + mask branch; see the module docstring.

    ``box_head`` / ``box_predictor`` / ``loss`` of the base class are ``None``: the stages'
    modules are ``box_heads[k]``, ``box_predictors[k]``, ``stage_losses[k]``.
    """

    def __init__(self, *, box_pooler: MultiScaleRoIAlign, box_heads: list[BoxHead],
                 box_predictors: list[BoxPredictor], stage_losses: list[ClassificationLoss],
                 matchers: list[Matcher], box_coders: list[BoxCoder], stage_loss_weights: list[float],
                 mask_pooler: MultiScaleRoIAlign, mask_heads: list[MaskHead], stats: CategoryStats,
                 sampler: BalancedSampler, context: ContextEncoder | None = None, **kwargs):
        n = len(box_heads)
        if not n or any(len(x) != n for x in (box_predictors, stage_losses, matchers, box_coders, stage_loss_weights)):
            raise ValueError("CascadeROIHeads: box heads, predictors, losses, matchers, coders and stage loss "
                             f"weights need one entry per stage ({n} box heads)")
        if len(mask_heads) not in (1, n):
            raise ValueError(f"CascadeROIHeads: {len(mask_heads)} mask heads for {n} stages (1 or {n})")
        if not all(p.class_agnostic for p in box_predictors):
            raise ValueError("CascadeROIHeads: box regression must be class-agnostic "
                             "(model.roi_heads.box_head.class_agnostic=true)")
        super().__init__(box_pooler=box_pooler, box_head=None, box_predictor=None, mask_pooler=mask_pooler,
                         mask_head=mask_heads[-1], loss=None, stats=stats, matcher=matchers[0], sampler=sampler,
                         box_coder=box_coders[-1], **kwargs)
        self.box_heads = nn.ModuleList(box_heads)
        self.box_predictors = nn.ModuleList(box_predictors)
        self.stage_losses = nn.ModuleList(stage_losses)
        self.matchers, self.box_coders = list(matchers), list(box_coders)
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.extra_mask_heads = nn.ModuleList(mask_heads[:-1])
        self.context = context

    @classmethod
    def from_config(cls, cfg, in_channels: int, strides: list[int], num_classes: int, loss: ClassificationLoss,
                    stats: CategoryStats) -> "CascadeROIHeads":
        box_pooler, mask_pooler = cls.build_poolers(cfg, strides)
        stages = list(cfg.stages)
        if len(cfg.stage_loss_weights) != len(stages):
            raise ValueError(f"model.roi_heads.stage_loss_weights has {len(cfg.stage_loss_weights)} entries for "
                             f"{len(stages)} stages")
        losses = [copy.deepcopy(loss) for _ in stages]
        branches = [cls.build_box_branch(cfg, in_channels, num_classes, stage_loss) for stage_loss in losses]
        num_masks = len(stages) if cfg.get("mask_on_all_stages", False) else 1
        c = cfg.get("context") or {}
        context = (ContextEncoder(in_channels, num_classes, int(c.get("num_convs", 4)), float(c.get("loss_weight", 1.0)))
                   if c.get("enabled", False) else None)
        t = cfg.test
        return cls(
            box_pooler=box_pooler, box_heads=[b[0] for b in branches], box_predictors=[b[1] for b in branches],
            stage_losses=losses, matchers=[Matcher(s.fg_iou, s.fg_iou) for s in stages],
            box_coders=[BoxCoder(tuple(s.box_weights)) for s in stages],
            stage_loss_weights=list(cfg.stage_loss_weights), mask_pooler=mask_pooler,
            mask_heads=[cls.build_mask_branch(cfg, in_channels, num_classes) for _ in range(num_masks)],
            stats=stats, sampler=BalancedSampler(cfg.batch_size_per_image, cfg.positive_fraction), context=context,
            add_gt_as_proposals=cfg.add_gt_as_proposals, smooth_l1_beta=cfg.smooth_l1_beta,
            score_thresh=t.score_thresh, nms_thresh=t.nms_thresh, max_dets=t.max_dets,
            topk_candidates=t.topk_candidates, mask_threshold=t.mask_threshold,
        )

    # ------------------------------------------------------------------ stages
    @property
    def num_stages(self) -> int:
        return len(self.box_heads)

    @property
    def mask_heads(self) -> list[MaskHead]:
        return [*self.extra_mask_heads, self.mask_head]

    def stage(self, k: int) -> BoxStage:
        return BoxStage(self.box_heads[k], self.box_predictors[k], self.stage_losses[k], self.matchers[k],
                        self.box_coders[k])

    def context_vectors(self, features: list[Tensor]) -> Tensor | None:
        """HTC-Lite context ``(B, C)`` of each image, ``None`` without the context branch."""
        return None if self.context is None else self.context(features)[0]

    def pool(self, features: list[Tensor], boxes: list[Tensor], context: Tensor | None = None) -> Tensor:
        """Box RoI features ``(R, C, S, S)`` (+ the image context when given)."""
        return add_context(self.box_pooler(features, boxes), boxes, context)

    def stage_forward(self, k: int, features: list[Tensor], boxes: list[Tensor],
                      context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Stage ``k`` on per-image boxes -> pooled ``(R, C, S, S)`` (+ context), logits, ``(R, 4)`` deltas."""
        pooled = self.pool(features, boxes, context)
        logits, deltas = self.box_predictors[k](self.box_heads[k](pooled))
        return pooled, logits, deltas

    def refine(self, k: int, deltas: Tensor, boxes: list[Tensor], image_sizes: list[tuple[int, int]],
               drop_empty: bool = False) -> list[Tensor]:
        """Stage ``k``'s regression applied to its input boxes -> next stage's per-image boxes (detached)."""
        decoded = self.box_coders[k].decode(deltas.detach(), torch.cat(boxes))
        out = []
        for b, size in zip(decoded.split([len(x) for x in boxes]), image_sizes):
            b = clip_boxes_to_image(b, size)
            if drop_empty:
                b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
            out.append(b)
        return out

    def match_stage(self, k: int, boxes: list[Tensor], targets: list[dict]) -> RoISamples:
        """Stage 0: match + sample (as Mask R-CNN); later stages: match every box at the stage's IoU."""
        sampler = self.sampler if k == 0 else None
        return match_proposals(boxes, targets, self.matchers[k], self.num_classes, sampler, self.sample_generator)

    # ------------------------------------------------------------------ training
    def forward(self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict] | None = None):
        if not self.training:
            return self.inference(features, proposals, image_sizes)
        if targets is None:
            raise ValueError("CascadeROIHeads: training needs targets")
        boxes = add_ground_truth(proposals, targets) if self.add_gt_as_proposals else proposals
        losses: dict[str, Tensor] = {}
        context = None
        if self.context is not None:
            context, context_logits = self.context(features)
            losses["loss_context"] = self.context.loss(context_logits, targets)
        last = self.num_stages - 1
        for k in range(self.num_stages):
            samples = self.match_stage(k, boxes, targets)
            _, logits, deltas = self.stage_forward(k, features, samples.proposals, context)
            w = self.stage_loss_weights[k]
            losses[f"s{k}_loss_cls"] = w * self.classification_loss(logits, samples, targets, self.stage_losses[k])
            losses[f"s{k}_loss_box"] = w * self.box_regression_loss(deltas, samples, self.box_coders[k],
                                                                    self.box_predictors[k])
            if self.extra_mask_heads:
                losses[f"s{k}_loss_mask"] = w * self.mask_loss(features, samples, targets, self.mask_heads[k], context)
            elif k == last:
                losses["loss_mask"] = self.mask_loss(features, samples, targets, context=context)
            if k < last:
                boxes = self.refine(k, deltas, samples.proposals, image_sizes, drop_empty=True)
        return losses

    def mask_loss(self, features: list[Tensor], samples: RoISamples, targets: list[dict],
                  head: MaskHead | None = None, context: Tensor | None = None) -> Tensor:
        """BCE of the gt-class mask logits of the foreground RoIs (mean), for ``head`` (default: last)."""
        head = head or self.mask_head
        fg = samples.foreground
        boxes = torch.cat(samples.proposals)[fg]
        per_image = list(boxes.split(torch.bincount(samples.image_index[fg], minlength=len(targets)).tolist()))
        logits = head(add_context(self.mask_pooler(features, per_image), per_image, context), samples.labels[fg])
        if fg.numel() == 0:
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits.float(), mask_targets(targets, samples, fg, logits.shape[-1]))

    # ------------------------------------------------------------------ inference
    def stage_scores(self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
                     ) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
        """Run every stage at test time.

        Returns per stage its per-image input boxes, pooled features (with the context)
        ``(R, C, S, S)`` and scores ``(R, C+1)`` (its loss's ``scores``), and the last stage's
        decoded boxes ``(R, 1, 4)``.
        """
        boxes, inputs, pooled_all, scores = proposals, [], [], []
        context = self.context_vectors(features)
        for k in range(self.num_stages):
            pooled, logits, deltas = self.stage_forward(k, features, boxes, context)
            inputs.append(boxes)
            pooled_all.append(pooled)
            scores.append(self.stage_losses[k].scores(logits))
            if k < self.num_stages - 1:
                boxes = self.refine(k, deltas, boxes, image_sizes)
        return inputs, pooled_all, scores, self.box_coders[-1].decode(deltas, torch.cat(boxes)).view(-1, 1, 4)

    def inference(self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]) -> list[dict]:
        inputs, _, scores, boxes = self.stage_scores(features, proposals, image_sizes)
        detections = self.detect(boxes, torch.stack(scores).mean(0), inputs[-1], image_sizes)
        return self.predict_masks(features, detections)

    def predict_masks(self, features: list[Tensor], detections: list[dict]) -> list[dict]:
        """Mask probabilities of the detections; averaged over the mask heads when there are several."""
        boxes = [d["boxes"] for d in detections]
        labels = torch.cat([d["labels"] for d in detections])
        pooled = add_context(self.mask_pooler(features, boxes), boxes, self.context_vectors(features))
        probs = torch.stack([head(pooled, labels).sigmoid() for head in self.mask_heads]).mean(0)
        for d, p in zip(detections, probs.split([len(b) for b in boxes])):
            d["mask_probs"] = p
        return detections
