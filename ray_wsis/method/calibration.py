"""Choosing the walk's background thresholds from the data (docs/calibration.md has the evidence).

Label-free (no masks):
* semantic: the threshold that best splits each image's walked foreground score into two
  classes, Otsu's criterion: the between-class share of the score's variance,
  eta(t) = sigma_between^2(t) / sigma_total^2, averaged over images; the candidate with the
  highest mean eta wins. The walk spreads a CAM until it meets a boundary, so inside objects
  the score is high and flat and outside it decays: two modes, and the cut belongs between.
* instances (default): the steepest contour, the candidate across whose contours the winning
  instance score falls most steeply relative to its level (mean |grad v| / t over the contour
  pixels, averaged over images). A walk stopped by a boundary leaves a step in log v at the
  object's edge; when the steepest contour is at an end of the range there is no such step,
  and the next rule chooses.
* instances (fallback, or ``calibration.instance_criterion: semantic-agreement``): the
  threshold whose instances, united per class, agree best (mIoU) with the semantic labels at
  the chosen semantic threshold.
* instances (``calibration.instance_criterion: expected-iou``): the threshold with the highest
  expected IoU of the instances, where a pixel's chance of being foreground of its instance's
  class is read off the relation labels (the confident CAM regions that trained IRNet): among
  the labelled pixels whose walked instance score falls in a bin, the share that the relation
  labels call that class, made monotone (isotonic). AP50 counts instances, not pixels, so the
  cut that makes each instance's expected IoU highest is what it rewards, if the relation
  labels' probabilities are right; they depend on the relation labels' ignore band.

Few-shot (``dataset.calibration_split``, masks of 10-50 images): the candidate with the best
semantic mIoU, and the one with the best instance mAP50, on those images, each score first
averaged with its neighbouring candidates' (a few images give a noisy curve; its trend is
what carries over to the other images).

The statistics are additive over images, so Ray tasks compute them per shard and the driver
sums them. Free of torch: it runs in CPU tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from scipy.optimize import isotonic_regression

from ray_wsis.classes import IGNORE
from ray_wsis.data.decode import resize_label
from ray_wsis.eval.instance import InstanceEvaluator, match_image
from ray_wsis.eval.semantic import confusion_matrix, iou_from_confusion, mean_iou
from ray_wsis.method.scores import (
    Thresholds,
    WalkScores,
    Winner,
    detections_from_label,
    keep_confident,
    partition_instances,
    winner,
)

HISTOGRAM_BINS = 256
PROBABILITY_BINS = 100
"""Bins of the walked score in [0, 1] for the relation-label probability (0.01 wide)."""


@dataclass
class ImageCut:
    """One image's threshold-independent part of the cut: the winners of both channel groups."""

    scores: WalkScores
    semantic: Winner
    instance: Optional[Winner]
    kept: Optional[np.ndarray] = None
    """Relation labels whose confident pixels the semantic label keeps (``walk.keep_relation_labels``)."""
    follow_semantic: bool = False
    """Instances tile the semantic label (``walk.instances_follow_semantic``): :meth:`detections`
    at a threshold are those of the semantic label cut there."""

    @classmethod
    def of(cls, scores: WalkScores, kept: Optional[np.ndarray] = None, follow_semantic: bool = False) -> ImageCut:
        h, w, s = scores.height, scores.width, scores.scale
        inst = winner(scores.instance, h, w, s) if scores.instance.shape[0] else None
        return cls(scores, winner(scores.semantic, h, w, s), inst, kept, follow_semantic)

    def semantic_label(self, threshold: float) -> np.ndarray:
        if len(self.scores.class_ids) == 0:
            label = np.zeros((self.scores.height, self.scores.width), np.uint8)
        else:
            keys = np.asarray(self.scores.class_ids, np.uint8)
            label = np.where(self.semantic.value > threshold, keys[self.semantic.channel], 0).astype(np.uint8)
        return keep_confident(label, self.kept)

    def instance_classes(self, thresholds: Thresholds) -> np.ndarray:
        """(H, W) class map of the united instances (what agrees with the semantic label)."""
        if self.instance is None:
            return np.zeros((self.scores.height, self.scores.width), np.uint8)
        classes = np.asarray(self.scores.instance_classes, np.int64)
        limit = thresholds.of(classes)[self.instance.channel]
        return np.where(self.instance.value > limit, classes[self.instance.channel], 0).astype(np.uint8)

    def detections(self, thresholds: Thresholds, min_fragment_fraction: float):  # type: ignore[no-untyped-def]
        if self.follow_semantic:
            return partition_instances(self.scores, self.semantic_label(thresholds.default), min_fragment_fraction)
        h, w = self.scores.height, self.scores.width
        classes = np.asarray(self.scores.instance_classes, np.int64)
        if self.instance is None:
            return detections_from_label(np.zeros((h, w), np.int64), np.zeros((h, w), np.float32), classes, 0.0)
        limit = thresholds.of(classes)[self.instance.channel]
        label = np.where(self.instance.value > limit, self.instance.channel + 1, 0)
        return detections_from_label(label, self.instance.value, classes, min_fragment_fraction)


def _fit(label: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Labels cut at the inference size, at the ground truth's size (nearest)."""
    return label if label.shape == shape else resize_label(label, int(shape[0]), int(shape[1]))


def otsu_ratio(values: np.ndarray, candidates: Sequence[float]) -> np.ndarray:
    """eta(t) for each candidate: the between-class share of the variance of ``values`` (0..1)."""
    v = np.asarray(values, np.float64).ravel()
    total = v.var()
    if v.size == 0 or total <= 0:
        return np.zeros(len(candidates))
    out = np.empty(len(candidates))
    mean = v.mean()
    for k, t in enumerate(candidates):
        high = v > t
        w1 = high.mean()
        if w1 in (0.0, 1.0):
            out[k] = 0.0
            continue
        m1, m0 = v[high].mean(), v[~high].mean()
        out[k] = (w1 * (m1 - mean) ** 2 + (1 - w1) * (m0 - mean) ** 2) / total
    return out


@dataclass
class LabelFreeStats:
    """Additive statistics of the label-free criteria over a set of images: Otsu's ratio of the
    semantic score, and the contour steepness of the instance score (images with a contour)."""

    eta_sum: np.ndarray
    images: int
    steepness_sum: np.ndarray
    steepness_images: np.ndarray

    @classmethod
    def empty(cls, candidates: Sequence[float]) -> LabelFreeStats:
        return cls(np.zeros(len(candidates)), 0, np.zeros(len(candidates)), np.zeros(len(candidates), np.int64))

    def add(self, cut: ImageCut, candidates: Sequence[float]) -> None:
        if len(cut.scores.class_ids):
            self.eta_sum += otsu_ratio(cut.semantic.value, candidates)
            self.images += 1
        if cut.instance is not None:
            steepness = contour_steepness(cut.instance.value, candidates)
            self.steepness_sum += np.nan_to_num(steepness)
            self.steepness_images += np.isfinite(steepness)

    def merge(self, other: LabelFreeStats) -> LabelFreeStats:
        return LabelFreeStats(
            self.eta_sum + other.eta_sum,
            self.images + other.images,
            self.steepness_sum + other.steepness_sum,
            self.steepness_images + other.steepness_images,
        )

    def as_row(self) -> dict[str, Any]:
        """One row of a task's output table (plain lists: Arrow-friendly)."""
        return {
            "eta_sum": self.eta_sum.tolist(),
            "images": self.images,
            "steepness_sum": self.steepness_sum.tolist(),
            "steepness_images": self.steepness_images.tolist(),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> LabelFreeStats:
        return cls(
            np.asarray(row["eta_sum"], np.float64),
            int(row["images"]),
            np.asarray(row["steepness_sum"], np.float64),
            np.asarray(row["steepness_images"], np.int64),
        )

    def criterion(self) -> np.ndarray:
        return self.eta_sum / max(1, self.images)

    def steepness(self) -> np.ndarray:
        """Mean contour steepness over the images with a contour at each candidate (NaN: none)."""
        counts = self.steepness_images
        return np.where(counts > 0, self.steepness_sum / np.maximum(counts, 1), np.nan)


MIN_CONTOUR_PIXELS = 10
"""An image's contour at a candidate with fewer pixels says nothing about an edge there."""


def contour_steepness(values: np.ndarray, candidates: Sequence[float]) -> np.ndarray:
    """For each candidate t: the mean |grad v| / t over the pixels just inside the t-contour of
    the (H, W) map ``values``, i.e. how steeply log v falls across that contour; NaN where the
    contour has under MIN_CONTOUR_PIXELS pixels. A walk stopped by a boundary leaves a step in
    log v at the object's edge, which no level above or below it shows."""
    v = np.asarray(values, np.float64)
    out = np.full(len(candidates), np.nan)
    if v.ndim != 2 or min(v.shape) < 2:
        return out
    dy, dx = np.gradient(v)
    slope = np.hypot(dy, dx)
    for k, t in enumerate(candidates):
        inside = v > t
        padded = np.pad(inside, 1, mode="edge")
        interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        contour = inside & ~interior
        if contour.sum() >= MIN_CONTOUR_PIXELS and t > 0:
            out[k] = slope[contour].mean() / t
    return out


def choose_by_steepness(steepness: np.ndarray, candidates: Sequence[float]) -> Optional[float]:
    """The candidate whose contours are steepest, or None when that is the lowest or the highest
    candidate: then the scores fall most steeply at an end of the range, there is no edge step
    inside it, and another rule must choose."""
    values = np.asarray(steepness, np.float64)
    if not np.isfinite(values).any():
        return None
    best = int(np.nanargmax(values))
    if best in (0, len(values) - 1):
        return None
    return float(candidates[best])


def _bins(values: np.ndarray) -> np.ndarray:
    return np.clip((np.asarray(values) * PROBABILITY_BINS).astype(np.int64), 0, PROBABILITY_BINS - 1)


def _candidate_bins(candidates: Sequence[float]) -> np.ndarray:
    """First bin above each candidate: a pixel is foreground at t when its value exceeds t."""
    return np.clip(np.ceil(np.asarray(candidates) * PROBABILITY_BINS - 1e-9).astype(np.int64), 0, PROBABILITY_BINS)


def isotonic(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Non-decreasing weighted least-squares fit (scipy's pool adjacent violators); bins without
    weight take the interpolation of their neighbours."""
    values = np.asarray(values, np.float64)
    weights = np.asarray(weights, np.float64)
    known = np.flatnonzero(weights > 0)
    if known.size == 0:
        return np.zeros(len(values))
    fitted = isotonic_regression(values[known], weights=weights[known]).x
    return np.interp(np.arange(len(values)), known, fitted)


@dataclass
class RelationStats:
    """Per bin of the winning channel's walked score (instance channels, or with ``semantic`` the
    class channels): relation-labelled pixels and how many of them the relation labels give the
    channel's class. Additive over images."""

    labelled: np.ndarray
    same_class: np.ndarray

    @classmethod
    def empty(cls) -> RelationStats:
        return cls(np.zeros(PROBABILITY_BINS, np.int64), np.zeros(PROBABILITY_BINS, np.int64))

    def add(self, cut: ImageCut, relation: np.ndarray, semantic: bool = False) -> None:
        if semantic:
            if not len(cut.scores.class_ids) or relation.shape != cut.semantic.value.shape:
                return
            win, channel_classes = cut.semantic, cut.scores.class_ids
        else:
            if cut.instance is None or relation.shape != cut.instance.value.shape:
                return
            win, channel_classes = cut.instance, cut.scores.instance_classes
        classes = np.asarray(channel_classes, np.int64)[win.channel]
        known = relation != IGNORE
        bins = _bins(win.value)
        self.labelled += np.bincount(bins[known], minlength=PROBABILITY_BINS)
        self.same_class += np.bincount(bins[known & (relation == classes)], minlength=PROBABILITY_BINS)

    def merge(self, other: RelationStats) -> RelationStats:
        return RelationStats(self.labelled + other.labelled, self.same_class + other.same_class)

    def probability(self) -> np.ndarray:
        """(PROBABILITY_BINS,) chance that a pixel of each score bin is its winner's class."""
        share = self.same_class / np.maximum(self.labelled, 1)
        return np.clip(isotonic(share, self.labelled.astype(np.float64)), 0.0, 1.0)


NOTHING_OPEN = 1.0
"""The semantic threshold that labels no pixel from the walk (a walked score is at most 1): with
kept relation labels, the pixels they leave open all go to the background."""

WITHOUT_RELATION_LABELS = "without_relation_labels"
"""Key of calibration.json's semantic part: the threshold for images that have no relation labels
(outside the train split) when the chosen one is :data:`NOTHING_OPEN`, which would label nothing
of them."""


def without_relation_labels(candidates: Sequence[float]) -> float:
    """The semantic threshold of images without relation labels when relation-majority records
    :data:`NOTHING_OPEN`: the rule's choice without kept labels, which is then the highest candidate
    (no score level is mostly its winner's class)."""
    return float(max(candidates))


def chances_above(probability: np.ndarray, candidates: Sequence[float]) -> np.ndarray:
    """For each candidate, the lowest chance (``probability`` per score bin) among the bins a cut
    there labels; 1.0 where it labels none."""
    padded = np.concatenate([np.asarray(probability, np.float64), [1.0]])
    return np.array([padded[start:].min() for start in _candidate_bins(candidates)])


def choose_by_majority(
    probability: np.ndarray, candidates: Sequence[float], otherwise: Optional[float] = None
) -> float:
    """The lowest candidate above which every score bin is more often its winner's class than not
    (``probability`` >= 0.5, non-decreasing): the cut that gets each pixel's more likely label
    right. When no bin gets there: ``otherwise``, by default the highest candidate."""
    for t, chance in zip(candidates, chances_above(probability, candidates)):
        if chance >= 0.5:
            return float(t)
    return float(max(candidates) if otherwise is None else otherwise)


def expected_ious(cut: ImageCut, probability: np.ndarray, candidates: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Each instance channel's expected IoU at every candidate, the pixels of its region (where
    it wins) being foreground with ``probability`` of their score bin; and the channels' classes.

    For a cut M of a region with probabilities p: E[IoU] ~ sum_M p / (|M| + sum_notM p).
    """
    if cut.instance is None:
        return np.zeros((0, len(candidates))), np.zeros(0, np.int64)
    starts = _candidate_bins(candidates)
    bins = _bins(cut.instance.value)
    channels = cut.scores.instance.shape[0]
    counts = np.zeros((channels, PROBABILITY_BINS))
    np.add.at(counts, (cut.instance.channel.ravel(), bins.ravel()), 1.0)
    mass = counts * probability[None]
    # suffix sums: above each candidate; prefix: at or below it
    mass_above = np.cumsum(mass[:, ::-1], axis=1)[:, ::-1]
    count_above = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    zero = np.zeros((channels, 1))
    mass_above = np.concatenate([mass_above, zero], axis=1)[:, starts]
    count_above = np.concatenate([count_above, zero], axis=1)[:, starts]
    mass_below = mass.sum(axis=1, keepdims=True) - mass_above
    denominator = count_above + mass_below
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denominator > 0, mass_above / denominator, 0.0)
    present = mass.sum(axis=1) > 0
    return iou[present], np.asarray(cut.scores.instance_classes, np.int64)[present]


def choose_by_expected_iou(iou_sum: np.ndarray, candidates: Sequence[float], per_class: bool) -> Thresholds:
    """``iou_sum``: (classes + 1, candidates) expected IoU summed over each class's instances
    (row 0 unused). The best candidate over all instances, and with ``per_class`` each
    class's own best."""
    total = iou_sum.sum(axis=0)
    default = choose_semantic(total, candidates) if total.max() > 0 else 0.5
    if not per_class:
        return Thresholds(default)
    chosen = {c: choose_semantic(iou_sum[c], candidates) for c in range(1, iou_sum.shape[0]) if iou_sum[c].max() > 0}
    return Thresholds(default, chosen)


def agreement_confusions(
    cut: ImageCut, semantic_threshold: float, candidates: Sequence[float], num_classes: int
) -> np.ndarray:
    """(len(candidates), n, n) confusion of the united instances (columns) against the semantic label (rows)."""
    reference = cut.semantic_label(semantic_threshold)
    out = np.zeros((len(candidates), num_classes, num_classes), np.int64)
    for k, t in enumerate(candidates):
        out[k] = confusion_matrix(cut.instance_classes(Thresholds(float(t))), reference, num_classes)
    return out


def relation_confusions(
    cut: ImageCut, relation: np.ndarray, candidates: Sequence[float], num_classes: int
) -> np.ndarray:
    """(len(candidates), n, n) confusion of the semantic label cut at each candidate (columns)
    against the image's relation labels (rows; their unlabelled band, 255, left out)."""
    out = np.zeros((len(candidates), num_classes, num_classes), np.int64)
    for k, t in enumerate(candidates):
        out[k] = confusion_matrix(cut.semantic_label(float(t)), relation, num_classes)
    return out


def choose_semantic(criterion: np.ndarray, candidates: Sequence[float]) -> float:
    """The best candidate; on ties the one nearest the middle of the tied range."""
    best = np.flatnonzero(criterion >= criterion.max() - 1e-12)
    return float(candidates[int(best[len(best) // 2])])


def choose_few_shot(scores: np.ndarray, candidates: Sequence[float]) -> Optional[float]:
    """The best candidate of a ground-truth score curve after a 3-candidate moving average
    (NaN = no score there, left out of the averages); None when no candidate has a score."""
    values = np.asarray(scores, np.float64)
    if not np.isfinite(values).any():
        return None
    padded = np.concatenate([[np.nan], values, [np.nan]])
    window = np.stack([padded[:-2], padded[1:-1], padded[2:]])
    known = np.isfinite(window)
    smoothed = np.where(known, window, 0.0).sum(axis=0) / np.maximum(known.sum(axis=0), 1)
    smoothed[~np.isfinite(values)] = -np.inf
    return choose_semantic(smoothed, candidates)


def choose_instance(confusions: np.ndarray, candidates: Sequence[float], per_class: bool) -> Thresholds:
    """The candidate whose united instances agree best with the semantic labels (mIoU), and,
    with ``per_class``, each class's own best candidate by its IoU."""
    mious = np.array([mean_iou(c) for c in confusions])
    default = float(candidates[int(np.nanargmax(mious))]) if np.isfinite(mious).any() else 0.5
    if not per_class:
        return Thresholds(default)
    ious = np.stack([iou_from_confusion(c) for c in confusions])  # (candidates, classes)
    chosen = {}
    for class_id in range(1, ious.shape[1]):
        column = ious[:, class_id]
        if np.isfinite(column).any():
            chosen[class_id] = float(candidates[int(np.nanargmax(column))])
    return Thresholds(default, chosen)


@dataclass
class FewShotStats:
    """Ground-truth statistics of the calibration images: semantic confusions and instance
    matches at every candidate threshold."""

    confusions: np.ndarray
    evaluators: list[InstanceEvaluator]

    @classmethod
    def empty(cls, candidates: Sequence[float], num_classes: int) -> FewShotStats:
        return cls(
            np.zeros((len(candidates), num_classes + 1, num_classes + 1), np.int64),
            [InstanceEvaluator(num_classes) for _ in candidates],
        )

    def add(
        self,
        cut: ImageCut,
        ground_truth: Any,
        candidates: Sequence[float],
        min_fragment_fraction: float,
        num_classes: int,
    ) -> None:
        semantic = ground_truth.semantic
        if semantic is None:
            return
        for k, t in enumerate(candidates):
            self.confusions[k] += confusion_matrix(
                _fit(cut.semantic_label(float(t)), semantic.shape), semantic, num_classes + 1
            )
            if ground_truth.instance_masks is None:
                continue
            found = cut.detections(Thresholds(float(t)), min_fragment_fraction)
            masks = (
                np.stack([_fit(m.astype(np.uint8), semantic.shape) > 0 for m in found.masks])
                if len(found)
                else np.zeros((0, *semantic.shape), bool)
            )
            self.evaluators[k].add_matches(
                match_image(
                    masks,
                    found.class_ids,
                    found.scores,
                    ground_truth.instance_masks,
                    ground_truth.instance_class_ids,
                    num_classes=num_classes,
                )
            )

    def merge(self, other: FewShotStats) -> FewShotStats:
        for mine, theirs in zip(self.evaluators, other.evaluators):
            mine.merge(theirs)
        return FewShotStats(self.confusions + other.confusions, self.evaluators)

    def semantic_miou(self) -> np.ndarray:
        return np.array([100.0 * mean_iou(c) for c in self.confusions])

    def instance_map50(self) -> np.ndarray:
        return np.array([e.result()["map50"] if e.result()["map50"] is not None else np.nan for e in self.evaluators])
