"""Semantic segmentation metrics, computed exactly like IRNet's evaluation.

IRNet (``eval_cam.py``, ``eval_sem_seg.py``) uses chainercv's
``calc_semantic_segmentation_confusion`` and IoU = TP / (GT + Pred - TP), averaged with
``nanmean`` so that classes absent from both GT and predictions do not count. The
confusion matrix is small and additive, so distributed evaluation ships only that.

Here ``num_classes`` counts background: VOC is 21 (ids 0..20). GT value 255 (and, as in
chainercv, negative values) is void and ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ray_wsis.classes import IGNORE

MAX_CLASS_ID = 254


def _label_map(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"{name} must have an integer dtype, got {array.dtype}")
    return array


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if num_classes > IGNORE:
        raise ValueError(f"num_classes must be at most {IGNORE} (255 is void), got {num_classes}")
    return int(num_classes)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows = GT class, columns = predicted class.

    Pixels whose GT is void are skipped entirely, so predictions there may hold anything.
    """
    num_classes = _check_num_classes(num_classes)
    pred = _label_map("pred", pred)
    gt = _label_map("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    gt = gt.ravel().astype(np.int64, copy=False)
    pred = pred.ravel().astype(np.int64, copy=False)
    valid = (gt >= 0) & (gt != IGNORE)
    gt = gt[valid]
    pred = pred[valid]
    if gt.size and gt.max() >= num_classes:
        raise ValueError(f"gt holds class {int(gt.max())}, outside 0..{num_classes - 1} (255 is void)")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        bad = int(pred.max()) if pred.max() >= num_classes else int(pred.min())
        raise ValueError(f"pred holds class {bad} at a non-void pixel, outside 0..{num_classes - 1}")
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def _square(conf: np.ndarray) -> np.ndarray:
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"conf must be a square 2-D matrix, got shape {conf.shape}")
    return conf.astype(np.float64)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (GT + Pred - TP); NaN where a class is in neither GT nor pred."""
    conf = _square(conf)
    tp = np.diag(conf)
    denominator = conf.sum(axis=1) + conf.sum(axis=0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, tp / np.where(denominator > 0, denominator, 1), np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """nanmean of the per-class IoU (a fraction); NaN if no class occurs at all."""
    iou = iou_from_confusion(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def _percent_list(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) * 100.0 for v in values]


class SemanticEvaluator:
    """Additive confusion-matrix accumulator; ``merge`` combines results of parallel tasks."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.images = 0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Accumulate one image; returns that image's confusion matrix."""
        conf = confusion_matrix(pred, gt, self.num_classes)
        self.confusion += conf
        self.images += 1
        return conf

    def add_confusion(self, conf: np.ndarray, images: int = 1) -> None:
        """Accumulate a confusion matrix computed elsewhere (e.g. in a Ray task)."""
        conf = np.asarray(conf)
        if conf.shape != self.confusion.shape:
            raise ValueError(f"conf must have shape {self.confusion.shape}, got {conf.shape}")
        if not np.issubdtype(conf.dtype, np.integer) or (conf < 0).any():
            raise ValueError("conf must hold non-negative integer counts")
        if images < 0:
            raise ValueError(f"images must be >= 0, got {images}")
        self.confusion += conf.astype(np.int64)
        self.images += int(images)

    def merge(self, other: SemanticEvaluator) -> SemanticEvaluator:
        if not isinstance(other, SemanticEvaluator) or other.num_classes != self.num_classes:
            raise ValueError("other must be a SemanticEvaluator with the same num_classes")
        self.confusion += other.confusion
        self.images += other.images
        return self

    def result(self) -> dict[str, Any]:
        """JSON-ready metrics; percentages, with None for classes that never occur.

        ``fp_rate``/``fn_rate`` follow IRNet ``eval_sem_seg``: the share of a class's union
        made of false positives / false negatives (``1 - GT/union`` and ``1 - Pred/union``).
        ``fg_fp_rate``/``fg_fn_rate`` average them over foreground classes (1..). ``precision`` is
        the share of a class's predicted pixels that are right, ``recall`` of its true pixels found.
        """
        conf = self.confusion.astype(np.float64)
        tp = np.diag(conf)
        gt_total = conf.sum(axis=1)
        pred_total = conf.sum(axis=0)
        union = gt_total + pred_total - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            safe = np.where(union > 0, union, 1)
            iou = np.where(union > 0, tp / safe, np.nan)
            fp = np.where(union > 0, 1.0 - gt_total / safe, np.nan)
            fn = np.where(union > 0, 1.0 - pred_total / safe, np.nan)
            precision = np.where(pred_total > 0, tp / np.where(pred_total > 0, pred_total, 1), np.nan)
            recall = np.where(gt_total > 0, tp / np.where(gt_total > 0, gt_total, 1), np.nan)
        total = conf.sum()

        def nanmean(values: np.ndarray) -> float | None:
            finite = values[np.isfinite(values)]
            return float(finite.mean()) * 100.0 if finite.size else None

        return {
            "miou": nanmean(iou),
            "iou": _percent_list(iou),
            "pixel_accuracy": float(tp.sum() / total) * 100.0 if total > 0 else None,
            "fp_rate": _percent_list(fp),
            "fn_rate": _percent_list(fn),
            "precision": _percent_list(precision),
            "recall": _percent_list(recall),
            "fg_fp_rate": nanmean(fp[1:]),
            "fg_fn_rate": nanmean(fn[1:]),
            "images": self.images,
            "num_classes": self.num_classes,
        }


# --------------------------------------------------------------------------- CAMs
def cam_to_label(cams: np.ndarray, class_ids: Sequence[int] | np.ndarray, bg_threshold: float) -> np.ndarray:
    """(K, H, W) CAMs of the image's K classes -> (H, W) uint8 label map (IRNet ``eval_cam``).

    A constant background plane equal to ``bg_threshold`` is prepended and the argmax
    taken; ties go to background (argmax keeps the first). ``K = 0`` gives all background.
    """
    cams = np.asarray(cams)
    if cams.ndim != 3:
        raise ValueError(f"cams must be 3-D (K, H, W), got shape {cams.shape}")
    if not np.issubdtype(cams.dtype, np.floating):
        raise ValueError(f"cams must be floating point, got dtype {cams.dtype}")
    ids = np.asarray(class_ids)
    if ids.ndim != 1 or ids.shape[0] != cams.shape[0]:
        raise ValueError(f"class_ids must be 1-D with {cams.shape[0]} entries (one per CAM), got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"class_ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 1 or ids.max() > MAX_CLASS_ID):
        raise ValueError(f"class_ids must be in 1..{MAX_CLASS_ID}, got {ids.tolist()}")
    if not np.isfinite(bg_threshold):
        raise ValueError(f"bg_threshold must be finite, got {bg_threshold}")
    if not np.all(np.isfinite(cams)):
        raise ValueError("cams must be finite (no NaN/inf)")
    keys = np.concatenate(([0], ids)).astype(np.uint8)
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    best = cams.argmax(axis=0)
    best_value = np.take_along_axis(cams, best[None], axis=0)[0]
    index = np.where(best_value > bg_threshold, best + 1, 0)  # strict: ties go to background
    return keys[index]


# --------------------------------------------------------------------------- IR labels
@dataclass(frozen=True)
class IRLabelStats:
    """Quality of sparse pseudo labels (255 = unlabelled), counted over non-void GT pixels.

    ``precision`` = correct / labelled; ``coverage`` = labelled / valid. Counts add up,
    so per-image stats can be summed across tasks with ``+``.
    """

    correct: int
    labelled: int
    valid: int

    @property
    def precision(self) -> float:
        return self.correct / self.labelled if self.labelled else float("nan")

    @property
    def coverage(self) -> float:
        return self.labelled / self.valid if self.valid else float("nan")

    def __add__(self, other: IRLabelStats) -> IRLabelStats:
        if not isinstance(other, IRLabelStats):
            return NotImplemented
        return IRLabelStats(self.correct + other.correct, self.labelled + other.labelled, self.valid + other.valid)

    def as_dict(self) -> dict[str, float | int | None]:
        def clean(v: float) -> float | None:
            return None if np.isnan(v) else v

        return {
            "correct": self.correct,
            "labelled": self.labelled,
            "valid": self.valid,
            "precision": clean(self.precision),
            "coverage": clean(self.coverage),
        }


def precision_of_ir_labels(ir_label: np.ndarray, gt: np.ndarray) -> IRLabelStats:
    """Count how many confidently-labelled pseudo pixels agree with GT (``ir_label_precision``)."""
    ir_label = _label_map("ir_label", ir_label)
    gt = _label_map("gt", gt)
    if ir_label.shape != gt.shape:
        raise ValueError(f"ir_label and gt must have the same shape, got {ir_label.shape} and {gt.shape}")
    valid = (gt != IGNORE) & (gt >= 0)
    labelled = valid & (ir_label != IGNORE)
    correct = labelled & (ir_label == gt)
    return IRLabelStats(int(correct.sum()), int(labelled.sum()), int(valid.sum()))
