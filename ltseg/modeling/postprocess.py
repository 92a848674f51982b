"""Inference post-processing: per-class detections, mask pasting, RLE, LVIS results.

The LVIS protocol: score threshold 0.0, class-wise NMS 0.5, top 300 per image. With 1000
proposals x 1203 classes every (RoI, class) pair is a candidate, so the ``topk_candidates``
highest-scoring pairs are kept before NMS (0 = no cap).
"""
from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes


def detect(boxes: Tensor, scores: Tensor, image_size: tuple[int, int], score_thresh: float = 0.0,
           nms_thresh: float = 0.5, max_dets: int = 300, topk_candidates: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """One image's RoI predictions -> (boxes (K, 4), scores (K,), labels (K,)), sorted by score.

    ``boxes (R, C, 4)`` or ``(R, 1, 4)`` (class-agnostic) decoded boxes; ``scores (R, C+1)``
    probabilities with background last. Candidates need ``score > score_thresh``.
    """
    num_classes = scores.shape[1] - 1
    boxes = clip_boxes_to_image(boxes, image_size)
    flat = scores[:, :num_classes].reshape(-1)
    idx = torch.nonzero(flat > score_thresh).squeeze(1)
    if topk_candidates and idx.numel() > topk_candidates:
        idx = idx[flat[idx].topk(topk_candidates).indices]
    rois, labels = idx // num_classes, idx % num_classes
    det_boxes = boxes[rois, labels if boxes.shape[1] > 1 else 0]
    det_scores = flat[idx]
    keep = remove_small_boxes(det_boxes, min_size=1e-2)
    det_boxes, det_scores, labels = det_boxes[keep], det_scores[keep], labels[keep]
    keep = batched_nms(det_boxes, det_scores, labels, nms_thresh)[:max_dets]
    return det_boxes[keep], det_scores[keep], labels[keep]


def rescale_boxes(boxes: Tensor, size: tuple[int, int], orig_size: tuple[int, int]) -> Tensor:
    """Boxes on the resized ``size (h, w)`` image -> boxes on the original ``orig_size`` image."""
    ratio_h = torch.tensor(orig_size[0], dtype=torch.float32) / torch.tensor(size[0], dtype=torch.float32)
    ratio_w = torch.tensor(orig_size[1], dtype=torch.float32) / torch.tensor(size[1], dtype=torch.float32)
    ratio = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(boxes)
    return boxes * ratio


def _interpolation_matrix(start: Tensor, end: Tensor, n_in: int, n_out: int) -> Tensor:
    """Bilinear (align_corners=False) weights ``(K, n_out, n_in)`` resizing ``n_in`` samples onto the
    integer pixel span ``start..end`` of an ``n_out``-pixel axis; rows outside the span are zero."""
    size = (end - start + 1).clamp(min=1).to(torch.float32)
    pixel = torch.arange(n_out, device=start.device)
    dst = (pixel[None, :] - start[:, None]).to(torch.float32)
    scale = float(n_in) / size
    src = (scale[:, None] * (dst + 0.5) - 0.5).clamp(min=0)
    i0 = src.floor().clamp(max=n_in - 1)
    lam1 = (src - i0).clamp(0, 1)
    i0 = i0.to(torch.int64)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    inside = ((dst >= 0) & (pixel[None, :] <= end[:, None])).to(torch.float32)
    weights = torch.zeros(start.shape[0], n_out, n_in, device=start.device)
    weights.scatter_add_(2, i0[..., None], ((1 - lam1) * inside)[..., None])
    weights.scatter_add_(2, i1[..., None], (lam1 * inside)[..., None])
    return weights


def paste_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int = 1) -> Tensor:
    """``(K, M, M)`` mask probabilities, ``(K, 4)`` boxes -> ``(K, H, W)`` masks in the image.

    Each mask is padded by ``padding`` (the box grows by ``(M + 2p) / M``), the box is truncated
    to integer pixels and the mask is bilinearly resized onto it: torchvision's paste, as two
    batched matrix products instead of one interpolate call per mask.
    """
    h, w = image_size
    if masks.shape[0] == 0:
        return masks.new_zeros((0, h, w))
    m = masks.shape[-1]
    scale = float(m + 2 * padding) / m
    masks = F.pad(masks.float(), (padding,) * 4)
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    x0, x1 = (cx - half_w).to(torch.int64), (cx + half_w).to(torch.int64)
    y0, y1 = (cy - half_h).to(torch.int64), (cy + half_h).to(torch.int64)
    rows = _interpolation_matrix(y0, y1, m + 2 * padding, h)
    cols = _interpolation_matrix(x0, x1, m + 2 * padding, w)
    return rows @ masks @ cols.transpose(1, 2)


def encode_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5,
                 chunk: int = 64) -> list[dict]:
    """Paste ``(K, M, M)`` probabilities in chunks, binarise at ``>= threshold`` -> K RLE dicts (counts str)."""
    rles: list[dict] = []
    for start in range(0, masks.shape[0], chunk):
        binary = paste_masks(masks[start:start + chunk], boxes[start:start + chunk], image_size) >= threshold
        array = np.asfortranarray(binary.permute(1, 2, 0).cpu().numpy().astype(np.uint8))
        for rle in mask_util.encode(array):
            rle["counts"] = rle["counts"].decode("ascii")
            rles.append(rle)
    return rles


def to_lvis_results(outputs: list[dict], image_ids: list[int], category_ids: list[int] | tuple[int, ...]) -> list[dict]:
    """Model outputs (boxes xyxy, scores, contiguous labels, RLE masks) -> LVIS result dicts.

    ``category_ids[k]`` is the dataset id of contiguous class ``k``; ``bbox`` is ``[x, y, w, h]``.
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"to_lvis_results: {len(outputs)} outputs for {len(image_ids)} image ids")
    ids = torch.as_tensor(list(category_ids), dtype=torch.int64)
    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().cpu().double()
        if len(out["labels"]) and int(out["labels"].max()) >= len(ids):
            raise ValueError(f"to_lvis_results: image {image_id} has label {int(out['labels'].max())} "
                             f"but only {len(ids)} category ids")
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        cats = ids[out["labels"].cpu()].tolist()
        scores = out["scores"].detach().cpu().tolist()
        masks = out.get("masks")
        for k in range(len(scores)):
            result = {"image_id": int(image_id), "category_id": int(cats[k]), "bbox": xywh[k],
                      "score": float(scores[k])}
            if masks is not None:
                result["segmentation"] = masks[k]
            results.append(result)
    return results
