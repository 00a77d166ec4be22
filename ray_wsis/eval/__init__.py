"""Evaluation of pseudo labels: semantic mIoU and instance AP, as IRNet reports them.

Both evaluators are additive (confusion matrices, per-prediction match records), so Ray
tasks evaluate shards and the driver merges small results instead of masks.
"""

from ray_wsis.eval.instance import (
    DEFAULT_IOU_THRESHOLDS,
    ImageMatches,
    InstanceEvaluator,
    ap_101_point,
    average_precision,
    mask_iou,
    match_image,
)
from ray_wsis.eval.semantic import (
    IRLabelStats,
    SemanticEvaluator,
    cam_to_label,
    confusion_matrix,
    iou_from_confusion,
    mean_iou,
    precision_of_ir_labels,
)

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "ImageMatches",
    "InstanceEvaluator",
    "IRLabelStats",
    "SemanticEvaluator",
    "ap_101_point",
    "average_precision",
    "cam_to_label",
    "confusion_matrix",
    "iou_from_confusion",
    "mask_iou",
    "match_image",
    "mean_iou",
    "precision_of_ir_labels",
]
