"""Masks a person drew (the review loop), as a table under the output and as a dataset split.

``ray-wsis review pull`` writes every reviewed image's latest submitted annotation to one
Parquet table, ``<output>/review/human_labels.parquet`` (:data:`HUMAN_LABELS`). A run reads it
back in two ways:

* as the split :data:`REVIEW_SPLIT` (``dataset.calibration_split: review``): its records are the
  reviewed images of the infer split, its ground truth the human masks, so the few-shot
  calibration fits the thresholds to them and evaluation leaves them out;
* in cut-labels, where a reviewed image's shipped label is its human mask (``source: human``).

:class:`ReviewedSource` wraps the dataset's own source to add that split; every other split and
every other image's ground truth is the dataset's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_wsis.data.records import DatasetSource, GroundTruth, ImageRecord
from ray_wsis.masks import decode_label_png, decode_rle, encode_label_png, encode_rles
from ray_wsis.storage import Location, exists

REVIEW_SPLIT = "review"
"""The split name of the reviewed images (``dataset.calibration_split: review``)."""

HUMAN_LABELS = pa.schema(
    [
        ("image_id", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("semantic", pa.binary()),
        (
            "instances",
            pa.list_(
                pa.struct(
                    [
                        ("category_id", pa.int16()),
                        ("rle", pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])),
                    ]
                )
            ),
        ),
        ("digest", pa.string()),
        ("project_id", pa.int64()),
        ("task_id", pa.int64()),
        ("annotation_id", pa.int64()),
        ("updated_at", pa.string()),
    ]
)
"""One row per reviewed image: its semantic PNG, one instance per region, where it came from.
``digest`` identifies the masks (a changed correction changes it; the same one keeps it)."""


@dataclass
class HumanLabel:
    """A reviewed image's labels: semantic (H, W) uint8 and instance masks (N, H, W) with class ids."""

    semantic: np.ndarray
    masks: np.ndarray
    class_ids: np.ndarray

    def as_ground_truth(self) -> GroundTruth:
        return GroundTruth(self.semantic, self.masks, self.class_ids)


def human_label_row(image_id: str, label: HumanLabel, origin: dict[str, Any]) -> dict[str, Any]:
    """A row of :data:`HUMAN_LABELS`; ``origin`` holds project_id, task_id, annotation_id, updated_at."""
    h, w = label.semantic.shape
    semantic = encode_label_png(label.semantic)
    rles = encode_rles(label.masks) if len(label.masks) else []
    instances: list[dict[str, Any]] = [
        {"category_id": int(c), "rle": {"size": [int(v) for v in r["size"]], "counts": r["counts"]}}
        for r, c in zip(rles, label.class_ids)
    ]
    sha = hashlib.sha256(semantic)
    for item in instances:
        sha.update(f"{item['category_id']}:{item['rle']['counts']}".encode())
    return {
        "image_id": image_id,
        "height": int(h),
        "width": int(w),
        "semantic": semantic,
        "instances": instances,
        "digest": sha.hexdigest()[:16],
        **{k: origin[k] for k in ("project_id", "task_id", "annotation_id", "updated_at")},
    }


def decode_human_row(row: dict[str, Any]) -> HumanLabel:
    h, w = int(row["height"]), int(row["width"])
    items = row.get("instances") or []
    masks = np.stack([decode_rle(i["rle"]) for i in items]) if items else np.zeros((0, h, w), bool)
    classes = np.asarray([int(i["category_id"]) for i in items], np.int64)
    return HumanLabel(decode_label_png(row["semantic"]), masks, classes)


def read_human_table(location: Location, columns: Optional[list[str]] = None) -> Optional[pa.Table]:
    """The human-labels table, or None when no review was pulled into this output."""
    if not exists(location):
        return None
    return pq.read_table(location.path, filesystem=location.fs, columns=columns)


def human_digests(location: Location) -> dict[str, str]:
    """image_id -> digest of its human masks ({} when nothing was reviewed)."""
    table = read_human_table(location, ["image_id", "digest"])
    if table is None:
        return {}
    return dict(zip(table.column("image_id").to_pylist(), table.column("digest").to_pylist()))


def read_human_labels(location: Location, ids: Optional[set[str]] = None) -> dict[str, HumanLabel]:
    table = read_human_table(location)
    if table is None:
        return {}
    return {r["image_id"]: decode_human_row(r) for r in table.to_pylist() if ids is None or r["image_id"] in ids}


@dataclass
class ReviewedSource:
    """The dataset's source plus the split of reviewed images, whose ground truth is the human masks.

    ``reviewed`` is read on the driver (one small read); the masks themselves are read once per
    process, on the first image that needs them."""

    inner: DatasetSource
    location: Location
    base_split: str
    reviewed: frozenset[str]
    _labels: Optional[dict[str, HumanLabel]] = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_labels": None}  # tasks read the masks themselves

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.inner.class_names

    def scan(self, split: str) -> tuple[list[ImageRecord], list[tuple[str, str]]]:
        if split != REVIEW_SPLIT:
            scan = getattr(self.inner, "scan", None)
            return scan(split) if scan else (self.inner.records(split), [])
        base = {r.image_id: r for r in self.inner.records(self.base_split)}
        records = [base[i] for i in sorted(self.reviewed) if i in base]
        missing = [(i, f"reviewed, but not in split {self.base_split!r}") for i in sorted(self.reviewed - base.keys())]
        return records, missing

    def records(self, split: str) -> list[ImageRecord]:
        return self.scan(split)[0]

    def has_ground_truth(self, split: str) -> bool:
        return split == REVIEW_SPLIT or self.inner.has_ground_truth(split)

    def ground_truth(self, image_id: str) -> Optional[GroundTruth]:
        if image_id in self.reviewed:
            if self._labels is None:
                self._labels = read_human_labels(self.location, set(self.reviewed))
            if image_id in self._labels:
                return self._labels[image_id].as_ground_truth()
        return self.inner.ground_truth(image_id)
