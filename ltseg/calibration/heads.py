"""The new classification head SimCal trains on frozen RoI features.

``2fc_rand``: pooled RoI features ``(R, C, S, S)`` -> flatten -> fc(1024) -> ReLU -> classifier,
randomly initialised. ``3fc_ft`` (the paper's recommended head): a copy of the trained box
head's fully connected layers followed by a copy of its classifier, so calibration starts
from the original head (SimCal Sec. 5.4, Fig. 4b).
"""
from __future__ import annotations

import copy
import logging

from torch import Tensor, nn

from ltseg.losses.base import ClassificationLoss

log = logging.getLogger(__name__)

HEAD_TYPES = ("2fc_rand", "3fc_ft")


class CalibrationHead(nn.Module):
    """``(R, C, S, S)`` pooled RoI features -> ``(R, num_logits)`` class logits."""

    def __init__(self, kind: str, trunk: nn.Module, classifier: nn.Module):
        super().__init__()
        self.kind = kind
        self.trunk = trunk
        self.classifier = classifier

    def forward(self, roi_features: Tensor) -> Tensor:
        return self.classifier(self.trunk(roi_features))


def build_calibration_head(
    kind: str,
    box_head: nn.Module,
    classifier: nn.Module,
    in_features: int,
    num_classes: int,
    loss: ClassificationLoss,
    hidden_dim: int = 1024,
) -> CalibrationHead:
    """Build the head to calibrate.

    Args:
        kind: ``2fc_rand`` or ``3fc_ft``.
        box_head: the trained stage's ``(R, C, S, S) -> (R, D)`` fc trunk (copied for ``3fc_ft``).
        classifier: the trained stage's ``(R, D) -> (R, num_logits)`` classifier.
        in_features: ``C * S * S`` of the pooled features (``2fc_rand`` input width).
        num_classes: foreground classes ``C``.
        loss: the calibration loss; its ``make_predictor`` builds a fresh classifier.
        hidden_dim: ``2fc_rand`` hidden width.
    """
    if kind == "2fc_rand":
        trunk = nn.Sequential(nn.Flatten(1), nn.Linear(in_features, hidden_dim), nn.ReLU(inplace=True))
        head = CalibrationHead(kind, trunk, loss.make_predictor(hidden_dim, num_classes))
    elif kind == "3fc_ft":
        fresh = loss.make_predictor(_in_features(classifier), num_classes)
        if not _same_shapes(fresh, classifier):
            log.warning(
                "calibration.head=3fc_ft: the trained classifier (%s) does not fit the calibration loss "
                "(%s, %d logits); fcs copied, classifier freshly initialised",
                type(classifier).__name__, type(loss).__name__, loss.num_logits(num_classes),
            )
        head = CalibrationHead(kind, copy.deepcopy(box_head),
                               copy.deepcopy(classifier) if _same_shapes(fresh, classifier) else fresh)
    else:
        raise ValueError(f"calibration.head: unknown head '{kind}', expected one of {HEAD_TYPES}")
    return head.requires_grad_(True)


def _in_features(classifier: nn.Module) -> int:
    weight = getattr(classifier, "weight", None)
    if weight is None:
        raise ValueError(f"calibration.head=3fc_ft: cannot read the input width of {type(classifier).__name__}")
    return int(weight.shape[1])


def _same_shapes(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return type(a) is type(b) and sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
