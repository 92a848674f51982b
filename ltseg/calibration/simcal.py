"""SimCal stage two: calibrated classification heads on a frozen model, and dual-head inference.

``SimCal`` holds one new classification head (and its loss) per calibrated box stage (one
stage for Mask R-CNN, any of the three for the Cascade). Training (``loss``): the frozen
model runs its training-time RoI flow on a bi-level batch (RPN proposals + gt, stage 0
match-and-sample, later stages on the previous stage's regressed boxes), the proposals of
the sampled classes and as many background ones are kept, and each head's loss is averaged
over them (Eq. 1 for ``ce``). Inference (``predict``): the original scores (stage-averaged
through each stage's own loss), the calibrated ones (calibrated heads in place of the
originals in the calibrated stages) and their dual-head combination, on the same boxes.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from ltseg.data.category_stats import CategoryStats
from ltseg.losses.base import ClassificationLoss, LossContext
from ltseg.modeling import postprocess
from ltseg.modeling.cascade import BoxStage, CascadeROIHeads, add_context
from ltseg.modeling.roi_heads import add_ground_truth, image_label_masks, match_proposals

from .bilevel import select_balanced_proposals
from .dual_head import calibrated_classes, combine_scores
from .heads import build_calibration_head

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
VARIANTS = ("orig", "cal", "dual")


def box_stages(roi_heads: nn.Module) -> list[BoxStage]:
    """The box stages of Mask R-CNN (one) or of the Cascade (one per stage)."""
    if isinstance(roi_heads, CascadeROIHeads):
        return [roi_heads.stage(k) for k in range(roi_heads.num_stages)]
    return [BoxStage(roi_heads.box_head, roi_heads.box_predictor, roi_heads.loss, roi_heads.matcher,
                     roi_heads.box_coder)]


def build_calibration_loss(name: str, overrides=None, conf_dir: Path = CONF_DIR) -> ClassificationLoss:
    """Instantiate ``conf/loss/<name>.yaml`` (``overrides`` merged into it)."""
    path = Path(conf_dir) / "loss" / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ValueError(f"calibration.loss={name!r}: no {path}; available: {', '.join(available)}")
    cfg = OmegaConf.load(path)
    if overrides:
        cfg = OmegaConf.merge(cfg, overrides)
    return instantiate(cfg)


def resolve_stages(stages, num_stages: int) -> list[int]:
    """``"all"`` or a list of stage indices -> sorted unique indices (checked)."""
    if stages in (None, "all"):
        return list(range(num_stages))
    out = sorted({int(k) for k in stages})
    if not out or out[0] < 0 or out[-1] >= num_stages:
        raise ValueError(f"calibration.stages={list(stages)}: the model has stages 0..{num_stages - 1}")
    return out


def lr_factor(epoch: int, decay_epochs, gamma: float) -> float:
    """Multiplier of the base lr in 1-based ``epoch``: ``gamma ** #{d in decay_epochs: epoch >= d}``."""
    return gamma ** sum(epoch >= int(d) for d in decay_epochs)


class SimCal(nn.Module):
    """Calibrated heads (``heads[str(k)]``) and their losses for the box stages ``stages``.

    Args:
        model: the trained ``MaskRCNN`` (frozen by the caller).
        stats: training ``CategoryStats`` (losses, dual-head instance counts).
        head: ``2fc_rand`` | ``3fc_ft``; loss: the calibration loss (copied per stage).
        stages: calibrated stage indices; hidden_dim: ``2fc_rand`` width.
        dual_head: ``{combine, rule, threshold}`` (see ``dual_head.py``).
    """

    def __init__(self, model: nn.Module, stats: CategoryStats, head: str, loss: ClassificationLoss,
                 stages: list[int], hidden_dim: int = 1024, dual_head=None):
        super().__init__()
        rh = model.roi_heads
        views = box_stages(rh)
        in_features = int(model.fpn.out_channels) * rh.box_pooler.output_size ** 2  # pooled (C, S, S)
        self.stats, self.kind, self.stages = stats, head, list(stages)
        self.num_classes = stats.num_classes
        self.heads = nn.ModuleDict({
            str(k): build_calibration_head(head, views[k].box_head, views[k].box_predictor.cls_score, in_features,
                                           self.num_classes, loss, hidden_dim) for k in self.stages})
        self.losses = nn.ModuleDict({str(k): copy.deepcopy(loss) for k in self.stages})
        d = dual_head or {}
        self.combine = d.get("combine", "select")
        self.use_cal = calibrated_classes(stats.instance_count, d.get("threshold"), d.get("rule", "paper"))

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def stage_rois(self, model: nn.Module, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict],
                   generator: torch.Generator | None = None) -> list[tuple[Tensor, object]]:
        """The frozen model's training-time RoIs: per stage ``(pooled (R, C, S, S), RoISamples)``
        (pooled features include the HTC-Lite context when the model has one)."""
        features = model.fpn(model.backbone(images))
        was_training = model.rpn.training
        model.rpn.train()
        try:
            proposals, _ = model.rpn(features, image_sizes, targets, generator)
        finally:
            model.rpn.train(was_training)
        features = features[: model.num_pooled_levels]
        rh = model.roi_heads
        views = box_stages(rh)
        boxes = add_ground_truth(proposals, targets) if rh.add_gt_as_proposals else proposals
        context = rh.context_vectors(features) if isinstance(rh, CascadeROIHeads) else None
        out = []
        for k in range(max(self.stages) + 1):
            samples = match_proposals(boxes, targets, views[k].matcher, self.num_classes,
                                      rh.sampler if k == 0 else None, generator)
            pooled = add_context(rh.box_pooler(features, samples.proposals), samples.proposals, context)
            out.append((pooled, samples))
            if k < max(self.stages):
                deltas = views[k].box_predictor(views[k].box_head(pooled))[1]
                boxes = rh.refine(k, deltas, samples.proposals, image_sizes, drop_empty=True)
        return out

    def loss(self, model: nn.Module, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict],
             image_classes: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """Sum over calibrated stages of the calibration loss on the balanced proposals.

        ``image_classes (B,)``: the class each image was drawn for. Returns the loss and, per
        stage, the number of kept foreground proposals (``s{k}_fg``).
        """
        rois = self.stage_rois(model, images, image_sizes, targets, generator)
        total = images.new_zeros(())
        info = {}
        for k in self.stages:
            pooled, samples = rois[k]
            keep = select_balanced_proposals(samples.labels, samples.image_index, image_classes,
                                             self.num_classes, generator)
            labels = samples.labels[keep]
            pos, neg = image_label_masks(targets, samples.image_index[keep], self.num_classes)
            logits = self.heads[str(k)](pooled[keep])
            total = total + self.losses[str(k)](logits, LossContext(labels, self.stats, pos, neg, generator=generator))
            info[f"s{k}_fg"] = int((labels < self.num_classes).sum())
        return total, info

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def score_variants(self, model: nn.Module, images: Tensor, image_sizes: list[tuple[int, int]]):
        """Test-time RoIs scored three ways.

        Returns FPN features, the last stage's per-image input boxes, its decoded boxes
        ``(R, 1|C, 4)`` and ``{"orig" | "cal" | "dual": (R, C+1) probabilities}``.
        """
        features = model.fpn(model.backbone(images))
        proposals, _ = model.rpn(features, image_sizes)
        features = features[: model.num_pooled_levels]
        rh = model.roi_heads
        if isinstance(rh, CascadeROIHeads):
            inputs, pooled, scores, boxes = rh.stage_scores(features, proposals, image_sizes)
        else:
            pooled = [rh.box_pooler(features, proposals)]
            logits, deltas = rh.box_predictor(rh.box_head(pooled[0]))
            inputs, scores = [proposals], [rh.loss.scores(logits)]
            boxes = rh.predict_boxes(deltas, proposals, rh.box_coder)
        cal = [self.losses[str(k)].scores(self.heads[str(k)](pooled[k])) if str(k) in self.heads else s
               for k, s in enumerate(scores)]
        p_orig, p_cal = torch.stack(scores).mean(0), torch.stack(cal).mean(0)
        probs = {"orig": p_orig, "cal": p_cal, "dual": combine_scores(p_orig, p_cal, self.use_cal, self.combine)}
        return features, inputs[-1], boxes, probs

    @torch.no_grad()
    def predict(self, model: nn.Module, images: Tensor, image_sizes: list[tuple[int, int]],
                orig_sizes: list[tuple[int, int]]) -> dict[str, list[dict]]:
        """``{"orig" | "cal" | "dual": per-image outputs}`` in the model's inference format."""
        features, rois, boxes, probs = self.score_variants(model, images, image_sizes)
        rh = model.roi_heads
        out = {}
        for name, p in probs.items():
            detections = rh.predict_masks(features, rh.detect(boxes, p, rois, image_sizes))
            for det, size, orig in zip(detections, image_sizes, orig_sizes):
                det["boxes"] = postprocess.rescale_boxes(det["boxes"], size, orig)
                det["masks"] = postprocess.encode_masks(det.pop("mask_probs"), det["boxes"], orig, rh.mask_threshold)
            out[name] = detections
        return out
