"""The walk's evidence and the one function that cuts labels from it.

irn cuts its labels from the walked maps at fixed background thresholds (0.25) and throws
the maps away, so trying another threshold means running the networks and the walk again.
Here make-pseudo-labels stores, per image, the stride-4 walked maps of the present classes
(semantic) and of every (class x cluster) channel that can still win at the lowest threshold
we calibrate over (instances), quantised to uint8 of their peak. The labels it writes are cut
from those stored maps by the functions below, so re-cutting them at the same thresholds
gives exactly the same labels, and at other thresholds what the walk would have given up
to the quantisation (1/255 of the peak; tests/test_scores.py bounds the difference).

The cut is irn's: upsample x``scale`` (bilinear, half-pixel centres), crop to the image,
divide by the global max, then a pixel is foreground when its winning channel beats the
background threshold (of the winner's class when thresholds are per class; for one shared
threshold this is exactly irn's argmax over a constant background plane, ties to background).

Kept free of torch: the calibrate stage re-cuts in CPU tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
from scipy import ndimage

from ray_wsis.classes import IGNORE
from ray_wsis.method.upsample import upsample_cams

LEVELS = 255
"""Quantisation levels of stored maps: uint8 of the map's peak."""

UPSAMPLE_PEAK_KEPT = 0.625**2
"""x4 bilinear upsampling keeps at least this share of a peak (a lower bound: 0.875^2 in fact)."""

_CHUNK = 8
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Thresholds:
    """A background threshold, optionally per class (1-based class id -> threshold).

    ``plane``: "constant" is irn's background plane at the threshold; "walked" is psa's: the
    walked background channel of the scores competes in the argmax (AffinityNet's own cut,
    which has no threshold; ``default`` is then unused).
    """

    default: float
    per_class: Mapping[int, float] = field(default_factory=dict)
    plane: str = "constant"

    def of(self, class_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        return np.asarray([self.per_class.get(int(c), self.default) for c in class_ids], np.float32)

    @property
    def lowest(self) -> float:
        return min([self.default, *self.per_class.values()])

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "default": self.default,
            "per_class": {str(k): v for k, v in sorted(self.per_class.items())},
        }
        if self.plane != "constant":
            out["plane"] = self.plane
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Thresholds:
        per_class = data.get("per_class") or {}
        assert isinstance(per_class, Mapping)
        return cls(
            float(data["default"]),  # type: ignore[arg-type]
            {int(k): float(v) for k, v in per_class.items()},
            str(data.get("plane", "constant")),
        )


WALKED_BACKGROUND = Thresholds(0.0, plane="walked")
"""psa's cut: the walked background channel against the walked class maps."""


ThresholdLike = Union[float, Thresholds]


def as_thresholds(value: ThresholdLike) -> Thresholds:
    return value if isinstance(value, Thresholds) else Thresholds(float(value))


@dataclass
class WalkScores:
    """One image's walked maps at stride ``scale`` (uint8 of each group's peak).

    semantic: (K, h, w) walked CAMs of the image's classes ``class_ids``.
    instance: (C, h, w) walked (class x cluster) maps, class of each in ``instance_classes``.
    height, width: the inference resolution the labels are cut at.
    """

    height: int
    width: int
    class_ids: np.ndarray
    semantic: np.ndarray
    instance_classes: np.ndarray
    instance: np.ndarray
    scale: int = 4
    background: Optional[np.ndarray] = None
    """(1, h, w) walked background channel (AffinityNet), on the scale of ``semantic``; else None."""

    @property
    def nbytes(self) -> int:
        extra = 0 if self.background is None else self.background.nbytes
        return int(self.semantic.nbytes + self.instance.nbytes + self.instance_classes.size * 2 + extra)


def quantise(maps: np.ndarray) -> np.ndarray:
    """(C, h, w) non-negative floats -> uint8 of their common peak (all zero if the peak is 0)."""
    maps = np.asarray(maps, np.float32)
    peak = float(maps.max()) if maps.size else 0.0
    if peak <= 0 or not np.isfinite(peak):
        return np.zeros(maps.shape, np.uint8)
    return np.rint(np.clip(maps / peak, 0.0, 1.0) * LEVELS).astype(np.uint8)


def droppable(quantised: np.ndarray, lowest_threshold: float) -> np.ndarray:
    """(C,) channels that cannot be foreground at any threshold >= lowest_threshold.

    A channel's upsampled values never exceed its stride-s max, and the global upsampled peak is
    at least UPSAMPLE_PEAK_KEPT of LEVELS, so a channel below that bound never beats the plane.
    """
    if quantised.shape[0] == 0:
        return np.zeros(0, bool)
    peaks = quantised.reshape(quantised.shape[0], -1).max(axis=1).astype(np.float32)
    return peaks <= lowest_threshold * UPSAMPLE_PEAK_KEPT * LEVELS


@dataclass
class Winner:
    """Per full-resolution pixel: the winning channel, its normalised value and the runner-up's."""

    channel: np.ndarray
    value: np.ndarray
    second: np.ndarray
    peak: float = 1.0
    """The global upsampled max the values were divided by."""


def winner(maps: np.ndarray, height: int, width: int, scale: int) -> Winner:
    """Upsample (C, h, w) maps, crop, normalise by the global max; argmax (first channel on ties)."""
    best = np.full((height, width), -1.0, np.float32)
    second = np.zeros((height, width), np.float32)
    arg = np.zeros((height, width), np.int64)
    for start in range(0, maps.shape[0], _CHUNK):
        up = upsample_cams(maps[start : start + _CHUNK].astype(np.float32), height, width, scale)
        for offset, value in enumerate(up):
            better = value > best
            second = np.where(better, np.maximum(best, 0.0), np.maximum(second, value))
            best = np.where(better, value, best)
            arg = np.where(better, start + offset, arg)
    peak = float(best.max()) if maps.shape[0] else 0.0
    if peak <= 0:
        zeros = np.zeros((height, width), np.float32)
        return Winner(np.zeros((height, width), np.int64), zeros, zeros.copy())
    return Winner(arg, np.clip(best, 0, None) / peak, second / peak, peak)


def upsampled_peak(maps: np.ndarray, height: int, width: int, scale: int) -> float:
    """The global max of (C, h, w) maps upsampled and cropped as :func:`winner` does (its ``peak``,
    without the argmax); 0 for no or all-zero maps."""
    if not maps.any():
        return 0.0
    return max(
        float(upsample_cams(maps[start : start + _CHUNK].astype(np.float32), height, width, scale).max())
        for start in range(0, maps.shape[0], _CHUNK)
    )


def _plane(scores: WalkScores, win: Winner, thresholds: Thresholds, channel_class: np.ndarray) -> np.ndarray:
    """(H, W) background level each pixel's winner must beat."""
    if thresholds.plane == "walked":
        if scores.background is None or scores.background.shape[0] == 0:
            raise ValueError("a walked background plane needs scores with a background channel (AffinityNet)")
        up = upsample_cams(scores.background.astype(np.float32), scores.height, scores.width, scores.scale)[0]
        return up / win.peak
    return thresholds.of(channel_class)[win.channel]


@dataclass
class SemanticCut:
    label: np.ndarray
    """(H, W) uint8 class ids, 0 = background."""
    confidence: np.ndarray
    """(H, W) uint8: how far the pixel's decision is from flipping, 0..255 (see :func:`confidence`)."""


def confidence(value: np.ndarray, second: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """uint8 decision margin of each pixel, 255 = far from any threshold.

    Foreground: the smaller of (v - t) / (1 - t) (distance to background) and (v - v2) / v
    (distance to the runner-up class); background: (t - v) / t.
    """
    fg = value > threshold
    to_background = np.where(
        fg, (value - threshold) / np.maximum(1.0 - threshold, 1e-6), (threshold - value) / np.maximum(threshold, 1e-6)
    )
    to_other = np.where(fg, (value - second) / np.maximum(value, 1e-6), 1.0)
    margin = np.clip(np.minimum(to_background, to_other), 0.0, 1.0)
    return np.rint(margin * LEVELS).astype(np.uint8)


def cut_semantic(scores: WalkScores, thresholds: ThresholdLike) -> SemanticCut:
    """irn's semantic label (and its confidence) from stored walked class maps."""
    return _cut_semantic(scores, _semantic_winner(scores), thresholds)


def _semantic_winner(scores: WalkScores) -> Optional[Winner]:
    """The winner of the walked class maps (None for an image without classes): threshold-free,
    so one serves every cut of the image."""
    if len(scores.class_ids) == 0:
        return None
    return winner(scores.semantic, scores.height, scores.width, scores.scale)


def _cut_semantic(scores: WalkScores, win: Optional[Winner], thresholds: ThresholdLike) -> SemanticCut:
    t = as_thresholds(thresholds)
    h, w = scores.height, scores.width
    if win is None:
        return SemanticCut(np.zeros((h, w), np.uint8), np.full((h, w), LEVELS, np.uint8))
    threshold = _plane(scores, win, t, np.asarray(scores.class_ids))
    keys = np.asarray(scores.class_ids, np.uint8)
    label = np.where(win.value > threshold, keys[win.channel], 0).astype(np.uint8)
    return SemanticCut(label, confidence(win.value, win.second, threshold))


@dataclass
class Detections:
    """Instances of one image at the inference resolution: masks (N, H, W), class ids, scores."""

    masks: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def detections_from_label(
    label: np.ndarray, value: np.ndarray, channel_class: np.ndarray, min_fragment: float
) -> Detections:
    """Each 4-connected component of each winning channel (label c + 1 = channel c) is one
    detection, scored by the max of ``value`` over it; components under ``min_fragment`` of
    the image score 0 (irn detect_instance keeps such fragments)."""
    h, w = label.shape
    masks, classes, scores = [], [], []
    for channel in np.unique(label):
        if channel == 0:
            continue
        components, count = ndimage.label(label == channel, structure=_FOUR_CONNECTED)
        index = np.arange(1, count + 1)
        areas = ndimage.sum_labels(np.ones_like(components), components, index)
        peaks = ndimage.maximum(value, components, index)
        for comp, area, peak in zip(index, areas, peaks):
            masks.append(components == comp)
            classes.append(channel_class[channel - 1])
            scores.append(0.0 if area < min_fragment * h * w else float(peak))
    if not masks:
        return Detections(np.zeros((0, h, w), bool), np.zeros(0, np.int64), np.zeros(0, np.float32))
    return Detections(np.stack(masks), np.asarray(classes, np.int64), np.asarray(scores, np.float32))


def cut_instances(scores: WalkScores, thresholds: ThresholdLike, min_fragment_fraction: float) -> Detections:
    """irn's instances from stored walked (class x cluster) maps."""
    t = as_thresholds(thresholds)
    h, w = scores.height, scores.width
    if scores.instance.shape[0] == 0:
        return Detections(np.zeros((0, h, w), bool), np.zeros(0, np.int64), np.zeros(0, np.float32))
    channel_class = np.asarray(scores.instance_classes, np.int64)
    win = winner(scores.instance, h, w, scores.scale)
    threshold = _plane(scores, win, t, channel_class)
    label = np.where(win.value > threshold, win.channel + 1, 0)
    return detections_from_label(label, win.value, channel_class, min_fragment_fraction)


def partition_instances(scores: WalkScores, label: np.ndarray, min_fragment_fraction: float) -> Detections:
    """Instances that tile a semantic ``label`` (at the inference size): each pixel of class c goes
    to the class-c instance channel that is highest there, on the scale of :func:`winner` (the
    global upsampled peak of the instance channels); a class without one is one channel of its own,
    valued by its walked semantic map (on the semantic peak; 0 for a class the scores lack, which
    only relation labels can bring). Each connected region of a channel is one detection, as
    :func:`cut_instances` makes them."""
    h, w = label.shape
    classes = np.asarray(scores.instance_classes, np.int64)
    semantic_ids = [int(c) for c in scores.class_ids]
    channel = np.zeros((h, w), np.int64)  # 1-based; 0 = background
    value = np.zeros((h, w), np.float32)
    instance_peak = upsampled_peak(scores.instance, h, w, scores.scale)
    semantic_peak: Optional[float] = None  # read only for a class without an instance channel
    extra: list[int] = []
    for c in (int(c) for c in np.unique(label) if c != 0):
        where = label == c
        own = np.flatnonzero(classes == c)
        if own.size and instance_peak > 0:
            maps = upsample_cams(scores.instance[own].astype(np.float32), h, w, scores.scale)[:, where]
            channel[where] = own[maps.argmax(axis=0)] + 1
            value[where] = maps.max(axis=0) / instance_peak
        else:  # no instance channel of c survived: one region, valued by its walked map (0 if none)
            extra.append(c)
            channel[where] = len(classes) + len(extra)
            if c in semantic_ids:
                if semantic_peak is None:
                    semantic_peak = upsampled_peak(scores.semantic, h, w, scores.scale)
                walked = upsample_cams(scores.semantic[[semantic_ids.index(c)]].astype(np.float32), h, w, scores.scale)
                value[where] = walked[0][where] / max(semantic_peak, 1e-6)
    channel_class = np.concatenate([classes, np.asarray(extra, np.int64)])
    return detections_from_label(channel, value, channel_class, min_fragment_fraction)


def keep_confident(label: np.ndarray, relation: Optional[np.ndarray]) -> np.ndarray:
    """``label`` with the relation labels' confident pixels (a class, or 0 for background) in place
    of the cut's; their unlabelled band (255) keeps the cut. Unchanged without relation labels
    (images outside the train split) or where their size differs."""
    if relation is None or relation.shape != label.shape:
        return label
    return np.where(relation != IGNORE, relation, label).astype(np.uint8)


def cut_labels(
    scores: WalkScores,
    semantic_threshold: ThresholdLike,
    instance_threshold: ThresholdLike,
    min_fragment_fraction: float,
    relation: Optional[np.ndarray] = None,
    follow_semantic: bool = False,
) -> tuple[SemanticCut, Detections]:
    """Semantic and instance labels of one image's scores: the one cut of the walk and of calibrate.

    With ``relation`` (``walk.keep_relation_labels``) the semantic label keeps the relation labels'
    confident pixels, at full confidence, and the walk's cut decides only their unlabelled band.
    With ``follow_semantic`` (``walk.instances_follow_semantic``) the instances tile the semantic
    label cut at ``instance_threshold`` (:func:`partition_instances`): the shipped one when the two
    thresholds are equal."""
    win = _semantic_winner(scores)
    semantic = _kept_cut(_cut_semantic(scores, win, semantic_threshold), relation)
    if follow_semantic:
        tiled = semantic
        if as_thresholds(instance_threshold) != as_thresholds(semantic_threshold):
            tiled = _kept_cut(_cut_semantic(scores, win, instance_threshold), relation)
        return semantic, partition_instances(scores, tiled.label, min_fragment_fraction)
    return semantic, cut_instances(scores, instance_threshold, min_fragment_fraction)


def _kept_cut(semantic: SemanticCut, relation: Optional[np.ndarray]) -> SemanticCut:
    """A semantic cut with the relation labels' confident pixels kept at full confidence."""
    if relation is None or relation.shape != semantic.label.shape:
        return semantic
    confident = relation != IGNORE
    return SemanticCut(
        keep_confident(semantic.label, relation), np.where(confident, LEVELS, semantic.confidence).astype(np.uint8)
    )


def encode_scores(
    height: int,
    width: int,
    class_ids: Sequence[int],
    semantic: np.ndarray,
    instance_classes: Sequence[int],
    instance: np.ndarray,
    lowest_threshold: float,
    scale: int = 4,
) -> WalkScores:
    """Quantise walked float maps and drop instance channels that can never win (see :func:`droppable`)."""
    instance_q = quantise(instance)
    keep = ~droppable(instance_q, lowest_threshold)
    return WalkScores(
        int(height),
        int(width),
        np.asarray(class_ids, np.int16),
        quantise(semantic),
        np.asarray(instance_classes, np.int16)[keep],
        instance_q[keep],
        scale,
    )


def encode_region_scores(
    height: int, width: int, class_ids: Sequence[int], semantic: np.ndarray, background: np.ndarray, scale: int
) -> WalkScores:
    """AffinityNet's scores: walked class maps and the walked background, quantised together; its
    instances are the connected regions of the class maps, so they are the instance channels too."""
    both = quantise(np.concatenate([np.asarray(background, np.float32)[:1], np.asarray(semantic, np.float32)]))
    classes = np.asarray(class_ids, np.int16)
    return WalkScores(int(height), int(width), classes, both[1:], classes.copy(), both[1:].copy(), scale, both[:1])
