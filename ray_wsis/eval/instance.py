"""Instance segmentation AP, VOC style, as chainercv ``eval_instance_segmentation_voc``.

IRNet reports mAP at IoU 0.5 computed with chainercv (``use_07_metric=False``). We
reproduce its matching and AP exactly, split in two so that Ray tasks can do the heavy
part next to the masks:

* :func:`match_image` (per image, needs masks) turns predictions into small records
  ``(class id, score, match flag per IoU threshold)`` plus per-class GT counts;
* :class:`InstanceEvaluator` only concatenates records (cheap to merge across tasks)
  and computes the area under the precision envelope per class.

Matching (per image and class, predictions by descending score): each prediction takes
the GT with the highest mask IoU. If that IoU is below the threshold it is a false
positive; if that GT is difficult the prediction is ignored (neither TP nor FP); if the GT
was already taken by a higher-scoring prediction it is a false positive (a duplicate);
otherwise a true positive. Unlike COCO, a prediction never falls back to its second-best GT.

Void: pixels labelled 255 in VOC belong to no GT instance, so GT masks exclude them,
while a prediction covering void pixels counts them in its area. Like chainercv we thus
count predicted pixels in void as false-positive area of the IoU.

Ties in score: chainercv's ``argsort()[::-1]`` leaves the order of equal-score predictions
unspecified, so its AP depends on the order in which images happen to be listed. Here
predictions of equal score count as one operating point (their TP and FP enter together before
precision is read), which makes AP independent of that order: the walk normalises each image's
instance scores by its own peak, so every image's top instance scores exactly 1, and without
this the threshold sweep and the shipped labels, which list the images in different orders,
reported different mAPs for the same cut. Without ties the results are identical to
chainercv's. :func:`ap_101_point` keeps pycocotools' per-prediction order (stable), since it
exists to cross-check COCOeval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = (0.25, 0.5, 0.7, 0.75)

# Same recall grid as pycocotools' COCOeval (Params.recThrs).
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)

TP, FP, IGNORED = 1, 0, -1


# --------------------------------------------------------------------------- validation
def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)


def _check_thresholds(iou_thresholds: Iterable[float]) -> tuple[float, ...]:
    thresholds = tuple(float(t) for t in iou_thresholds)
    if not thresholds or any(not (0.0 < t <= 1.0) for t in thresholds):
        raise ValueError(f"iou_thresholds must be a non-empty sequence in (0, 1], got {thresholds}")
    keys = [threshold_key(t) for t in thresholds]
    if len(set(keys)) != len(keys):
        raise ValueError(f"iou_thresholds must be distinct, got {thresholds}")
    return thresholds


def threshold_key(threshold: float) -> str:
    """Result key of a threshold: 0.5 -> 'map50', 0.75 -> 'map75'."""
    return f"map{round(threshold * 100, 6):g}"


def _masks(name: str, masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"{name} must be 3-D (N, H, W), got shape {masks.shape}")
    if masks.dtype == np.bool_:
        return masks
    if np.issubdtype(masks.dtype, np.integer):
        return masks != 0
    raise ValueError(f"{name} must be bool, got dtype {masks.dtype}")


def _labels(name: str, labels: Any, n: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {labels.shape}")
    if n and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be integer class ids, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if n and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"{name} must be class ids in 1..{num_classes}, got {sorted(set(labels.tolist()))}")
    return labels


def _scores(name: str, scores: Any, n: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name} must be finite")
    return scores


# --------------------------------------------------------------------------- IoU and matching
def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, H, W) x (M, H, W) bool -> (N, M) IoU; 0 where both masks are empty.

    Intersections come from one matrix product of the flattened masks; float32 is exact
    for counts below 2**24 pixels, beyond that we use float64.
    """
    a = _masks("a", a)
    b = _masks("b", b)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"a and b must have the same (H, W), got {a.shape[1:]} and {b.shape[1:]}")
    pixels = a.shape[1] * a.shape[2]
    dtype = np.float32 if pixels < 2**24 else np.float64
    fa = a.reshape(a.shape[0], -1).astype(dtype)
    fb = b.reshape(b.shape[0], -1).astype(dtype)
    inter = np.matmul(fa, fb.T).astype(np.float64)
    union = fa.sum(axis=1, dtype=np.float64)[:, None] + fb.sum(axis=1, dtype=np.float64)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass(frozen=True, eq=False)
class ImageMatches:
    """Per-prediction match records of one or more images; all the evaluator needs.

    ``labels``/``scores`` are per prediction (input order), ``matches`` is (P, T) int8 with
    1 = TP, 0 = FP, -1 = ignored (matched a difficult GT), ``gt_counts[k]`` counts the
    non-difficult GT instances of class id ``k`` (index 0 unused).
    """

    labels: np.ndarray
    scores: np.ndarray
    matches: np.ndarray
    gt_counts: np.ndarray
    iou_thresholds: tuple[float, ...]
    images: int = 1

    def as_dict(self) -> dict[str, Any]:
        """Plain lists, for JSON or a Ray object without custom classes."""
        return {
            "labels": self.labels.tolist(),
            "scores": self.scores.tolist(),
            "matches": self.matches.tolist(),
            "gt_counts": self.gt_counts.tolist(),
            "iou_thresholds": list(self.iou_thresholds),
            "images": self.images,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageMatches:
        thresholds = _check_thresholds(data["iou_thresholds"])
        labels = np.asarray(data["labels"], dtype=np.int64).reshape(-1)
        matches = np.asarray(data["matches"], dtype=np.int8).reshape(labels.shape[0], len(thresholds))
        return cls(
            labels=labels,
            scores=np.asarray(data["scores"], dtype=np.float64).reshape(-1),
            matches=matches,
            gt_counts=np.asarray(data["gt_counts"], dtype=np.int64).reshape(-1),
            iou_thresholds=thresholds,
            images=int(data.get("images", 1)),
        )


def match_image(
    pred_masks: np.ndarray,
    pred_labels: Sequence[int] | np.ndarray,
    pred_scores: Sequence[float] | np.ndarray,
    gt_masks: np.ndarray,
    gt_labels: Sequence[int] | np.ndarray,
    gt_difficult: Sequence[bool] | np.ndarray | None = None,
    *,
    num_classes: int,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> ImageMatches:
    """Match one image's predictions to its GT (chainercv semantics) for every threshold."""
    num_classes = _check_num_classes(num_classes)
    thresholds = _check_thresholds(iou_thresholds)
    pred_masks = _masks("pred_masks", pred_masks)
    gt_masks = _masks("gt_masks", gt_masks)
    if pred_masks.shape[1:] != gt_masks.shape[1:]:
        raise ValueError(
            f"pred_masks and gt_masks must have the same (H, W), got {pred_masks.shape[1:]} and {gt_masks.shape[1:]}"
        )
    n, m = pred_masks.shape[0], gt_masks.shape[0]
    pred_labels = _labels("pred_labels", pred_labels, n, num_classes)
    pred_scores = _scores("pred_scores", pred_scores, n)
    gt_labels = _labels("gt_labels", gt_labels, m, num_classes)
    if gt_difficult is None:
        difficult = np.zeros(m, dtype=bool)
    else:
        difficult = np.asarray(gt_difficult)
        if difficult.shape != (m,) or (m and difficult.dtype != np.bool_):
            raise ValueError(
                f"gt_difficult must be a bool array of shape ({m},), got {difficult.dtype} {difficult.shape}"
            )
        difficult = difficult.astype(bool)

    gt_counts = np.bincount(gt_labels[~difficult], minlength=num_classes + 1).astype(np.int64)
    matches = np.full((n, len(thresholds)), FP, dtype=np.int8)
    if n and m:
        iou = mask_iou(pred_masks, gt_masks)
        for label in np.intersect1d(pred_labels, gt_labels):
            pred_idx = np.flatnonzero(pred_labels == label)
            pred_idx = pred_idx[np.argsort(-pred_scores[pred_idx], kind="stable")]
            gt_idx = np.flatnonzero(gt_labels == label)
            iou_l = iou[np.ix_(pred_idx, gt_idx)]
            best = iou_l.argmax(axis=1)  # first GT on ties, like chainercv
            best_iou = iou_l[np.arange(len(pred_idx)), best]
            best_difficult = difficult[gt_idx][best]
            for t, thresh in enumerate(thresholds):
                hit = best_iou >= thresh
                flags = np.full(len(pred_idx), FP, dtype=np.int8)
                hit_pos = np.flatnonzero(hit)
                # the first (highest-scoring) prediction to reach a GT takes it; later ones are duplicates
                _, first = np.unique(best[hit_pos], return_index=True)
                flags[hit_pos[first]] = TP
                flags[hit & best_difficult] = IGNORED
                matches[pred_idx, t] = flags
    return ImageMatches(pred_labels, pred_scores, matches, gt_counts, thresholds, images=1)


# --------------------------------------------------------------------------- AP
def _sorted_tp_fp(scores: np.ndarray, matches: np.ndarray, group_ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative TP and FP counts by descending score; with ``group_ties`` only at the last
    prediction of each run of equal scores (a tie is one operating point)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    flags = np.asarray(matches)[order]
    tp, fp = np.cumsum(flags == TP).astype(np.float64), np.cumsum(flags == FP).astype(np.float64)
    if group_ties and tp.size:
        ranked = scores[order]
        last = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
        return tp[last], fp[last]
    return tp, fp


def _precision_recall(
    scores: np.ndarray, matches: np.ndarray, n_pos: int, group_ties: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    tp, fp = _sorted_tp_fp(scores, matches, group_ties)
    seen = tp + fp
    # chainercv yields NaN (0/0) before the first non-ignored record and nan_to_num's it to 0.
    precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
    return precision, tp / n_pos


def average_precision(scores: np.ndarray, matches: np.ndarray, n_pos: int) -> float:
    """VOC 2010+ AP: exact area under the monotone precision envelope; NaN if ``n_pos == 0``.

    ``matches`` holds 1 (TP), 0 (FP) or -1 (ignored) per detection of one class, over all
    images; ``n_pos`` counts the non-difficult GT instances of that class. Predictions of equal
    score enter together (see the module docstring).
    """
    if n_pos <= 0:
        return float("nan")
    precision, recall = _precision_recall(scores, matches, n_pos, group_ties=True)
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    change = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


def ap_101_point(scores: np.ndarray, matches: np.ndarray, n_pos: int) -> float:
    """COCO-style AP: envelope precision sampled at recall 0, 0.01, ..., 1 and averaged.

    Mirrors pycocotools ``COCOeval.accumulate`` (recall thresholds beyond the reached
    recall count as precision 0). Only for cross-checking against COCOeval.
    """
    if n_pos <= 0:
        return float("nan")
    precision, recall = _precision_recall(scores, matches, n_pos)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, COCO_RECALL_THRESHOLDS, side="left")
    sampled = np.zeros(len(COCO_RECALL_THRESHOLDS))
    reached = index < len(recall)
    sampled[reached] = envelope[index[reached]]
    return float(sampled.mean())


# --------------------------------------------------------------------------- evaluator
class InstanceEvaluator:
    """Accumulates :class:`ImageMatches` (never masks) and reports per-class AP and mAP."""

    def __init__(self, num_classes: int, iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.iou_thresholds = _check_thresholds(iou_thresholds)
        self._records: list[ImageMatches] = []
        self.gt_counts = np.zeros(self.num_classes + 1, dtype=np.int64)
        self.images = 0

    def add(
        self,
        pred_masks: np.ndarray,
        pred_labels: Sequence[int] | np.ndarray,
        pred_scores: Sequence[float] | np.ndarray,
        gt_masks: np.ndarray,
        gt_labels: Sequence[int] | np.ndarray,
        gt_difficult: Sequence[bool] | np.ndarray | None = None,
    ) -> ImageMatches:
        """Match one image and keep its records; returns them."""
        records = match_image(
            pred_masks,
            pred_labels,
            pred_scores,
            gt_masks,
            gt_labels,
            gt_difficult,
            num_classes=self.num_classes,
            iou_thresholds=self.iou_thresholds,
        )
        self.add_matches(records)
        return records

    def add_matches(self, records: ImageMatches) -> None:
        """Keep records computed elsewhere (e.g. by :func:`match_image` in a Ray task)."""
        if not isinstance(records, ImageMatches):
            raise ValueError(f"records must be ImageMatches, got {type(records).__name__}")
        if records.iou_thresholds != self.iou_thresholds:
            raise ValueError(f"records were matched at {records.iou_thresholds}, evaluator uses {self.iou_thresholds}")
        if records.gt_counts.shape != self.gt_counts.shape:
            raise ValueError(
                f"records are for {records.gt_counts.shape[0] - 1} classes, evaluator has {self.num_classes}"
            )
        if records.labels.size and (records.labels.min() < 1 or records.labels.max() > self.num_classes):
            raise ValueError(f"records hold class ids outside 1..{self.num_classes}")
        self._records.append(records)
        self.gt_counts += records.gt_counts
        self.images += records.images

    def merge(self, other: InstanceEvaluator) -> InstanceEvaluator:
        if not isinstance(other, InstanceEvaluator):
            raise ValueError(f"other must be an InstanceEvaluator, got {type(other).__name__}")
        if other.num_classes != self.num_classes or other.iou_thresholds != self.iou_thresholds:
            raise ValueError("other must have the same num_classes and iou_thresholds")
        self._records.extend(other._records)
        self.gt_counts += other.gt_counts
        self.images += other.images
        return self

    def matches(self) -> ImageMatches:
        """All records concatenated in the order they were added."""
        if self._records:
            labels = np.concatenate([r.labels for r in self._records])
            scores = np.concatenate([r.scores for r in self._records])
            matches = np.concatenate([r.matches for r in self._records], axis=0)
        else:
            labels = np.zeros(0, dtype=np.int64)
            scores = np.zeros(0, dtype=np.float64)
            matches = np.zeros((0, len(self.iou_thresholds)), dtype=np.int8)
        return ImageMatches(labels, scores, matches, self.gt_counts.copy(), self.iou_thresholds, self.images)

    def average_precisions(self, ap_fn=average_precision) -> np.ndarray:
        """(T, num_classes) AP fractions, column k - 1 for class id k; NaN where no GT."""
        records = self.matches()
        ap = np.full((len(self.iou_thresholds), self.num_classes), np.nan)
        for k in range(1, self.num_classes + 1):
            keep = records.labels == k
            for t in range(len(self.iou_thresholds)):
                ap[t, k - 1] = ap_fn(records.scores[keep], records.matches[keep, t], int(self.gt_counts[k]))
        return ap

    def result(self) -> dict[str, Any]:
        """JSON-ready metrics in percent, NaN as None.

        ``map25``/``map50``/.. : mean AP over classes with GT (None if none has GT);
        ``ap25``/``ap50``/.. : per-class AP lists (index k - 1 for class id k, None = no GT);
        plus ``gt_counts`` (non-difficult GT per class), ``predictions``, ``images``.
        """
        ap = self.average_precisions()
        out: dict[str, Any] = {}
        for t, thresh in enumerate(self.iou_thresholds):
            key = threshold_key(thresh)
            finite = ap[t][np.isfinite(ap[t])]
            out[key] = float(finite.mean()) * 100.0 if finite.size else None
            out[key[1:]] = [None if not np.isfinite(v) else float(v) * 100.0 for v in ap[t]]
        out["gt_counts"] = self.gt_counts[1:].tolist()
        out["predictions"] = int(sum(r.labels.size for r in self._records))
        out["images"] = self.images
        out["iou_thresholds"] = list(self.iou_thresholds)
        return out
