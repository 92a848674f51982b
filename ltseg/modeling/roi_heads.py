"""RoI heads: match and sample proposals, box branch (classification loss + box regression),
mask branch, inference.

Reusable pieces for other RoI heads (the Cascade in ``cascade.py`` subclasses
``StandardROIHeads`` and reuses these):

- ``add_ground_truth(proposals, targets)``: append each image's gt boxes to its proposals.
- ``match_proposals(proposals, targets, matcher, num_classes, sampler=None, generator=None)``
  -> ``RoISamples`` (per-image RoI boxes, labels ``0..C`` with ``C`` = background, matched gt
  boxes / indices, image index per RoI). ``sampler=None`` keeps every proposal (Cascade
  stages 2/3); ignored proposals (between the IoU thresholds) are background then.
- ``image_label_masks(targets, image_index, C)`` -> ``image_pos, image_neg (R, C)`` bool.
- ``StandardROIHeads`` methods: ``box_features(features, boxes)``, ``classification_loss``,
  ``box_regression_loss(deltas, samples, box_coder)``, ``mask_loss(features, samples, targets)``,
  ``predict_boxes(logits, deltas, proposals, box_coder)``, ``detect(...)``,
  ``predict_masks(features, detections)``.
- Construction: ``build_box_branch`` / ``build_mask_branch`` / ``build_poolers`` make the
  pieces from the config; ``cls.from_config(cfg, in_channels, strides, num_classes, loss, stats)``
  is what ``build_model`` calls on the class named by ``model.roi_heads._target_``.

Training losses: ``loss_cls`` (the ``ClassificationLoss`` on all sampled RoIs),
``loss_box`` (smooth-L1 on foreground RoIs' gt-class deltas, divided by the number of
sampled RoIs), ``loss_mask`` (BCE of the gt-class mask logits of foreground RoIs, mean).
Inference returns per image ``boxes (K, 4)``, ``scores (K,)``, ``labels (K,)``,
``mask_probs (K, M, M)`` on the network input's scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, roi_align

from ltseg.data.category_stats import CategoryStats
from ltseg.losses.base import ClassificationLoss, LossContext

from . import postprocess
from .box_coder import BoxCoder
from .box_head import BoxHead, BoxPredictor
from .mask_head import MaskHead
from .matcher import FOREGROUND, BalancedSampler, Matcher
from .poolers import MultiScaleRoIAlign


@dataclass
class RoISamples:
    """RoIs of a batch with their assignment; ``R = sum_i R_i``.

    ``proposals[i] (R_i, 4)``; ``labels (R,)`` int64 ``0..C`` (``C`` background);
    ``gt_boxes (R, 4)`` matched gt box (meaningless for background); ``gt_index (R,)`` matched
    gt index within its image; ``image_index (R,)``; ``num_classes`` = C.
    """

    proposals: list[Tensor]
    labels: Tensor
    gt_boxes: Tensor
    gt_index: Tensor
    image_index: Tensor
    num_classes: int

    @property
    def foreground(self) -> Tensor:
        """``(F,)`` indices of foreground RoIs, ascending (so grouped by image)."""
        return torch.nonzero(self.labels < self.num_classes).squeeze(1)


def add_ground_truth(proposals: list[Tensor], targets: list[dict]) -> list[Tensor]:
    return [torch.cat([p, t["boxes"].to(p.dtype)]) for p, t in zip(proposals, targets)]


def match_proposals(proposals: list[Tensor], targets: list[dict], matcher: Matcher, num_classes: int,
                    sampler: BalancedSampler | None = None, generator: torch.Generator | None = None) -> RoISamples:
    """Assign each proposal to its best gt (class label or background ``C``); optionally sample."""
    boxes, labels, gt_boxes, gt_index, image_index = [], [], [], [], []
    for i, (props, target) in enumerate(zip(proposals, targets)):
        gt = target["boxes"].to(props.dtype)
        matched, match_labels = matcher(box_iou(gt, props))
        if sampler is not None:
            pos, neg = sampler(match_labels, generator)
            keep = torch.cat([pos, neg])
            props, matched, match_labels = props[keep], matched[keep], match_labels[keep]
        cls = target["labels"][matched] if gt.numel() else matched.new_full(matched.shape, num_classes)
        cls = torch.where(match_labels == FOREGROUND, cls, torch.full_like(cls, num_classes))
        boxes.append(props)
        labels.append(cls)
        gt_boxes.append(gt[matched] if gt.numel() else torch.zeros_like(props))
        gt_index.append(matched)
        image_index.append(torch.full_like(matched, i))
    return RoISamples(boxes, torch.cat(labels), torch.cat(gt_boxes), torch.cat(gt_index), torch.cat(image_index),
                      num_classes)


def image_label_masks(targets: list[dict], image_index: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per RoI, its image's LVIS sets as ``(R, C)`` bool: ``pos`` = gt classes + ``pos_category_ids``,
    ``neg`` = ``neg_category_ids``."""
    device = image_index.device
    pos = torch.zeros(len(targets), num_classes, dtype=torch.bool, device=device)
    neg = torch.zeros_like(pos)
    for i, t in enumerate(targets):
        pos[i, t["labels"].to(device)] = True
        if t.get("pos_category_ids") is not None:
            pos[i, torch.as_tensor(t["pos_category_ids"], dtype=torch.int64, device=device)] = True
        if t.get("neg_category_ids") is not None:
            neg[i, torch.as_tensor(t["neg_category_ids"], dtype=torch.int64, device=device)] = True
    return pos[image_index], neg[image_index]


def mask_targets(targets: list[dict], samples: RoISamples, fg: Tensor, size: int) -> Tensor:
    """``(F, size, size)`` float {0,1} targets of the foreground RoIs ``fg`` (gt mask cropped to the RoI).

    ``target["masks"]`` is an ``InstanceMasks`` (``crop_and_resize``) or an ``(N, H, W)`` tensor.
    """
    boxes = torch.cat(samples.proposals)[fg]
    out = []
    for i, t in enumerate(targets):
        sel = torch.nonzero(samples.image_index[fg] == i).squeeze(1)
        if sel.numel() == 0:
            continue
        masks, img_boxes, idx = t["masks"], boxes[sel], samples.gt_index[fg][sel]
        if isinstance(masks, Tensor):
            rois = torch.cat([idx[:, None].to(img_boxes.dtype), img_boxes], dim=1)
            crop = roi_align(masks[:, None].to(img_boxes.dtype), rois, size, 1.0, 0, aligned=True)[:, 0] >= 0.5
        else:
            crop = masks.crop_and_resize(img_boxes.detach(), idx, size)
        out.append((sel, crop.to(device=boxes.device, dtype=torch.float32)))
    result = boxes.new_zeros((fg.numel(), size, size), dtype=torch.float32)
    for sel, crop in out:
        result[sel] = crop
    return result


class StandardROIHeads(nn.Module):
    """Mask R-CNN RoI heads (one box stage + a mask branch); see the module docstring."""

    def __init__(self, *, box_pooler: MultiScaleRoIAlign, box_head: BoxHead, box_predictor: BoxPredictor,
                 mask_pooler: MultiScaleRoIAlign, mask_head: MaskHead, loss: ClassificationLoss, stats: CategoryStats,
                 matcher: Matcher, sampler: BalancedSampler, box_coder: BoxCoder, add_gt_as_proposals: bool = True,
                 smooth_l1_beta: float = 1.0 / 9, score_thresh: float = 0.0, nms_thresh: float = 0.5,
                 max_dets: int = 300, topk_candidates: int = 0, mask_threshold: float = 0.5):
        super().__init__()
        self.box_pooler, self.box_head, self.box_predictor = box_pooler, box_head, box_predictor
        self.mask_pooler, self.mask_head = mask_pooler, mask_head
        self.loss = loss
        self.stats = stats
        self.num_classes = stats.num_classes
        self.matcher, self.sampler, self.box_coder = matcher, sampler, box_coder
        self.add_gt_as_proposals = add_gt_as_proposals
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh, self.nms_thresh, self.max_dets = score_thresh, nms_thresh, max_dets
        self.topk_candidates, self.mask_threshold = topk_candidates, mask_threshold
        self.loss_generator: torch.Generator | None = None
        self.sample_generator: torch.Generator | None = None
        self.iteration: int | None = None

    # ------------------------------------------------------------------ construction
    @staticmethod
    def build_poolers(cfg, strides: list[int]) -> tuple[MultiScaleRoIAlign, MultiScaleRoIAlign]:
        p = cfg.pooler
        kw = dict(strides=strides, sampling_ratio=p.sampling_ratio, aligned=p.aligned,
                  canonical_box_size=p.canonical_box_size, canonical_level=p.canonical_level)
        return MultiScaleRoIAlign(p.box_size, **kw), MultiScaleRoIAlign(p.mask_size, **kw)

    @staticmethod
    def build_box_branch(cfg, in_channels: int, num_classes: int, loss: ClassificationLoss) -> tuple[BoxHead, BoxPredictor]:
        h = cfg.box_head
        head = BoxHead(in_channels, cfg.pooler.box_size, h.num_conv, h.conv_dim, h.num_fc, h.fc_dim, h.norm)
        return head, BoxPredictor(head.out_features, num_classes, loss, h.class_agnostic)

    @staticmethod
    def build_mask_branch(cfg, in_channels: int, num_classes: int) -> MaskHead:
        m = cfg.mask_head
        return MaskHead(in_channels, num_classes, m.num_conv, m.conv_dim, m.class_agnostic, m.norm)

    @classmethod
    def from_config(cls, cfg, in_channels: int, strides: list[int], num_classes: int, loss: ClassificationLoss,
                    stats: CategoryStats) -> "StandardROIHeads":
        box_pooler, mask_pooler = cls.build_poolers(cfg, strides)
        box_head, box_predictor = cls.build_box_branch(cfg, in_channels, num_classes, loss)
        t = cfg.test
        return cls(box_pooler=box_pooler, box_head=box_head, box_predictor=box_predictor, mask_pooler=mask_pooler,
                   mask_head=cls.build_mask_branch(cfg, in_channels, num_classes), loss=loss, stats=stats,
                   matcher=Matcher(cfg.fg_iou, cfg.bg_iou), sampler=BalancedSampler(cfg.batch_size_per_image,
                                                                                  cfg.positive_fraction),
                   box_coder=BoxCoder(tuple(cfg.box_weights)), add_gt_as_proposals=cfg.add_gt_as_proposals,
                   smooth_l1_beta=cfg.smooth_l1_beta, score_thresh=t.score_thresh, nms_thresh=t.nms_thresh,
                   max_dets=t.max_dets, topk_candidates=t.topk_candidates, mask_threshold=t.mask_threshold)

    # ------------------------------------------------------------------ forward
    def forward(self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict] | None = None):
        """Training: dict of losses. Inference: per-image detection dicts (see module docstring)."""
        if not self.training:
            return self.inference(features, proposals, image_sizes)
        if targets is None:
            raise ValueError("StandardROIHeads: training needs targets")
        if self.add_gt_as_proposals:
            proposals = add_ground_truth(proposals, targets)
        samples = match_proposals(proposals, targets, self.matcher, self.num_classes, self.sampler,
                                  self.sample_generator)
        logits, deltas = self.box_predictor(self.box_features(features, samples.proposals))
        return {
            "loss_cls": self.classification_loss(logits, samples, targets),
            "loss_box": self.box_regression_loss(deltas, samples, self.box_coder),
            "loss_mask": self.mask_loss(features, samples, targets),
        }

    def box_features(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        return self.box_head(self.box_pooler(features, boxes))

    def classification_loss(self, logits: Tensor, samples: RoISamples, targets: list[dict],
                            loss: ClassificationLoss | None = None) -> Tensor:
        pos, neg = image_label_masks(targets, samples.image_index, self.num_classes)
        ctx = LossContext(samples.labels, self.stats, pos, neg, generator=self.loss_generator, iteration=self.iteration)
        return (loss or self.loss)(logits, ctx)

    def box_regression_loss(self, deltas: Tensor, samples: RoISamples, box_coder: BoxCoder,
                            predictor: BoxPredictor | None = None) -> Tensor:
        fg = samples.foreground
        predictor = predictor or self.box_predictor
        pred = predictor.select_deltas(deltas[fg], samples.labels[fg])
        target = box_coder.encode(samples.gt_boxes[fg], torch.cat(samples.proposals)[fg])
        loss = F.smooth_l1_loss(pred, target, beta=self.smooth_l1_beta, reduction="sum")
        return loss / max(samples.labels.numel(), 1)

    def mask_loss(self, features: list[Tensor], samples: RoISamples, targets: list[dict]) -> Tensor:
        fg = samples.foreground
        boxes = torch.cat(samples.proposals)[fg]
        per_image = boxes.split(torch.bincount(samples.image_index[fg], minlength=len(targets)).tolist())
        logits = self.mask_head(self.mask_pooler(features, per_image), samples.labels[fg])
        if fg.numel() == 0:
            return logits.sum() * 0.0
        target = mask_targets(targets, samples, fg, logits.shape[-1])
        return F.binary_cross_entropy_with_logits(logits.float(), target)

    # ------------------------------------------------------------------ inference
    def predict_boxes(self, deltas: Tensor, proposals: list[Tensor], box_coder: BoxCoder) -> Tensor:
        """``(R, 4C | 4)`` deltas -> ``(R, C | 1, 4)`` decoded boxes."""
        rois = torch.cat(proposals)
        return box_coder.decode(deltas, rois).view(rois.shape[0], deltas.shape[1] // 4, 4)

    def detect(self, boxes: Tensor, scores: Tensor, proposals: list[Tensor],
               image_sizes: list[tuple[int, int]]) -> list[dict]:
        counts = [len(p) for p in proposals]
        out = []
        for b, s, size in zip(boxes.split(counts), scores.split(counts), image_sizes):
            det_boxes, det_scores, labels = postprocess.detect(b, s, size, self.score_thresh, self.nms_thresh,
                                                               self.max_dets, self.topk_candidates)
            out.append({"boxes": det_boxes, "scores": det_scores, "labels": labels})
        return out

    def predict_masks(self, features: list[Tensor], detections: list[dict]) -> list[dict]:
        boxes = [d["boxes"] for d in detections]
        labels = torch.cat([d["labels"] for d in detections])
        probs = self.mask_head(self.mask_pooler(features, boxes), labels).sigmoid()
        for d, p in zip(detections, probs.split([len(b) for b in boxes])):
            d["mask_probs"] = p
        return detections

    def inference(self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]) -> list[dict]:
        logits, deltas = self.box_predictor(self.box_features(features, proposals))
        scores = self.loss.scores(logits)
        detections = self.detect(self.predict_boxes(deltas, proposals, self.box_coder), scores, proposals, image_sizes)
        return self.predict_masks(features, detections)
