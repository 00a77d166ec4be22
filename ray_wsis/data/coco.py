"""COCO instance annotations (2014 or 2017 layout) as a :class:`DatasetSource`.

Class ids are contiguous 1..C over the categories sorted by COCO category id (COCO's 80
categories have ids up to 90): class id k <-> ``category_ids[k - 1]``. Image ids are the
file-name stems (``COCO_train2014_000000000009``): stable, readable and unique.

Image-level labels are the categories of *all* annotations, crowd ones included: a crowd
of people still means "person" is in the image. Ground truth instances exclude crowd
annotations; their pixels are void (255) in the semantic map where no instance covers them.

The parsed JSON is cached in the object but dropped when it is pickled (the files can be
hundreds of MB); the names of the splits read so far are kept. A copy shipped to a Ray
worker re-reads a split's JSON once, on first use: ship the source to an actor, or evaluate
many images per task. :meth:`COCOSource.ground_truth` (which has no split argument) looks
in those splits, so call ``records(split)`` or ``has_ground_truth(split)`` before shipping;
a COCO 2014 name (``COCO_val2014_...``) also finds its split by itself.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ray_wsis.classes import IGNORE
from ray_wsis.config import StorageConfig
from ray_wsis.data.records import DatasetError, GroundTruth, ImageRecord
from ray_wsis.data.voc import Invalid, read_optional
from ray_wsis.storage import exists, is_remote, join, list_files, resolve

_SPLIT_IN_NAME = re.compile(r"^COCO_([A-Za-z]+\d{4})_\d+$")
"""COCO 2014 file names spell their split: COCO_val2014_000000000042."""


@dataclass
class _Split:
    """One parsed annotation file, indexed for records and ground truth."""

    categories: tuple[tuple[int, str], ...]
    images: dict[str, dict[str, Any]]
    """image_id (file stem) -> COCO image entry."""
    annotations: dict[int, list[dict[str, Any]]]
    """numeric COCO image id -> its annotations."""
    has_segmentation: bool


class COCOSource:
    """COCO images under ``root`` with ``annotations`` (a path or URI with ``{split}``; relative to root)."""

    def __init__(
        self, root: str, annotations: str, image_dir: str = "{split}", storage: StorageConfig = StorageConfig()
    ):
        if not root:
            raise DatasetError("dataset root is empty: set it to the folder holding the COCO image folders")
        if not annotations:
            raise DatasetError("COCO annotations path is empty: set it, e.g. annotations/instances_{split}.json")
        self.root = root
        self.annotations = annotations
        self.image_dir = image_dir
        self.storage = storage
        self._known_splits: list[str] = []
        self._cache: dict[str, _Split] = {}
        self._lock = threading.RLock()

    # -- pickling: configuration and the names of splits seen, never the parsed JSON
    def __getstate__(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "annotations": self.annotations,
            "image_dir": self.image_dir,
            "storage": self.storage,
            "known_splits": list(self._known_splits),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        COCOSource.__init__(self, state["root"], state["annotations"], state["image_dir"], state["storage"])
        self._known_splits = list(state["known_splits"])

    def __repr__(self) -> str:
        return f"COCOSource(root={self.root!r}, annotations={self.annotations!r}, image_dir={self.image_dir!r})"

    def annotation_uri(self, split: str) -> str:
        path = self.annotations.replace("{split}", split)
        if is_remote(path) or posixpath.isabs(path):
            return path
        return join(self.root, path)

    def _split(self, split: str) -> _Split:
        with self._lock:
            cached = self._cache.get(split)
            if cached is None:
                cached = self._load(split)
                if self._cache:
                    first = next(iter(self._cache.values()))
                    if first.categories != cached.categories:
                        raise DatasetError(
                            f"{self.annotation_uri(split)} has other categories than the splits "
                            f"read before ({', '.join(self._cache)}); class ids would not match"
                        )
                self._cache[split] = cached
                if split not in self._known_splits:
                    self._known_splits.append(split)
            return cached

    def _load(self, split: str) -> _Split:
        uri = self.annotation_uri(split)
        data = read_optional(resolve(uri, self.storage))
        if data is None:
            raise DatasetError(f"split {split!r} not found: no annotation file {uri}")
        try:
            tree = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{uri} is not valid JSON: {exc}") from None
        if (
            not isinstance(tree, dict)
            or not isinstance(tree.get("images"), list)
            or not isinstance(tree.get("categories"), list)
        ):
            raise DatasetError(f"{uri} is not a COCO annotation file: it needs 'images' and 'categories' lists")
        try:
            categories = tuple(sorted((int(c["id"]), str(c["name"])) for c in tree["categories"]))
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{uri}: every category needs an integer 'id' and a 'name'") from None
        if not categories:
            raise DatasetError(f"{uri} defines no category")
        if len({c for c, _ in categories}) != len(categories):
            raise DatasetError(f"{uri}: duplicate category ids")
        if len(categories) > 254:
            raise DatasetError(f"{uri}: {len(categories)} categories do not fit 8-bit label maps (254 at most)")
        images: dict[str, dict[str, Any]] = {}
        for number, image in enumerate(tree["images"], start=1):
            try:
                stem = posixpath.splitext(posixpath.basename(str(image["file_name"])))[0]
                int(image["id"]), int(image["height"]), int(image["width"])
            except (KeyError, TypeError, ValueError):
                raise DatasetError(
                    f"{uri}: image entry {number} needs 'id', 'file_name', 'height' and 'width'"
                ) from None
            if stem in images:
                raise DatasetError(f"{uri}: two images have the file name stem {stem!r}")
            images[stem] = image
        annotations: dict[int, list[dict[str, Any]]] = {}
        for number, ann in enumerate(tree.get("annotations") or [], start=1):
            try:
                annotations.setdefault(int(ann["image_id"]), []).append(ann)
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"{uri}: annotation entry {number} has no integer 'image_id'") from None
        has_segmentation = any("segmentation" in a for anns in annotations.values() for a in anns)
        return _Split(categories, images, annotations, has_segmentation)

    def _categories(self) -> tuple[tuple[int, str], ...]:
        """Categories of any split read so far, else of the first annotation file found."""
        if self._cache:
            return next(iter(self._cache.values())).categories
        if self._known_splits:
            return self._split(self._known_splits[0]).categories
        if "{split}" not in self.annotations:
            return self._split("").categories
        pattern = self.annotation_uri("\0")
        folder, name = posixpath.split(pattern) if is_remote(pattern) else os.path.split(pattern)
        if "\0" in folder:
            raise DatasetError(
                "COCO class names are read from a split's annotation file: call records(split) before class_names"
            )
        prefix, _, suffix = name.partition("\0")
        candidates = list_files(resolve(folder, self.storage), suffix=suffix, prefix=prefix)
        if not candidates:
            raise DatasetError(f"no COCO annotation file matches {self.annotation_uri('{split}')}")
        base = posixpath.basename(candidates[0])
        return self._split(base[len(prefix) : len(base) - len(suffix)]).categories

    @property
    def category_ids(self) -> tuple[int, ...]:
        """COCO category id of each class id (class id k is ``category_ids[k - 1]``)."""
        return tuple(c for c, _ in self._categories())

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(n for _, n in self._categories())

    def _class_of(self) -> dict[int, int]:
        return {cat: k for k, cat in enumerate(self.category_ids, start=1)}

    def scan(self, split: str) -> tuple[list[ImageRecord], list[Invalid]]:
        """(records sorted by id, (image_id, reason) of images with an unknown category)."""
        parsed = self._split(split)
        class_of = self._class_of()
        folder = join(resolve(self.root, self.storage).uri, self.image_dir.replace("{split}", split))
        records: list[ImageRecord] = []
        invalid: list[Invalid] = []
        for image_id in sorted(parsed.images):
            image = parsed.images[image_id]
            anns = parsed.annotations.get(int(image["id"]), [])
            unknown = sorted({a.get("category_id") for a in anns if a.get("category_id") not in class_of}, key=str)
            if unknown:
                invalid.append(
                    (
                        image_id,
                        f"{self.annotation_uri(split)}: image {image['id']} has annotations "
                        f"with unknown category id {unknown[0]!r}",
                    )
                )
                continue
            class_ids = tuple(sorted({class_of[a["category_id"]] for a in anns}))
            records.append(ImageRecord(image_id, join(folder, str(image["file_name"])), class_ids))
        if not records and not invalid:
            raise DatasetError(f"split {split!r} is empty ({self.annotation_uri(split)} lists no image)")
        return records, invalid

    def records(self, split: str) -> list[ImageRecord]:
        return self.scan(split)[0]

    def invalid_records(self, split: str) -> list[Invalid]:
        return self.scan(split)[1]

    def coco_image_id(self, image_id: str) -> Optional[int]:
        """The numeric COCO id of an image id (file stem), for exports in COCO's own terms."""
        found = self._find(image_id)
        return int(found[1]["id"]) if found else None

    def has_ground_truth(self, split: str) -> bool:
        return self._split(split).has_segmentation

    def _find(self, image_id: str) -> Optional[tuple[_Split, dict[str, Any]]]:
        """Look in the splits read (or named) so far; else in the split a COCO 2014 name spells."""
        splits = list(self._known_splits)
        spelled = _SPLIT_IN_NAME.match(image_id)
        if spelled and spelled.group(1) not in splits:
            if exists(resolve(self.annotation_uri(spelled.group(1)), self.storage)):
                splits.append(spelled.group(1))
        for split in splits:
            parsed = self._split(split)
            if image_id in parsed.images:
                return parsed, parsed.images[image_id]
        return None

    def ground_truth(self, image_id: str) -> Optional[GroundTruth]:
        """Instances (crowd excluded) and a semantic map painted large-first, so small objects stay on top."""
        found = self._find(image_id)
        if found is None:
            return None
        parsed, image = found
        height, width = int(image["height"]), int(image["width"])
        class_of = self._class_of()
        masks: list[np.ndarray] = []
        class_ids: list[int] = []
        crowd = np.zeros((height, width), dtype=bool)
        for ann in sorted(parsed.annotations.get(int(image["id"]), []), key=lambda a: a.get("id", 0)):
            if "segmentation" not in ann or ann.get("category_id") not in class_of:
                continue
            mask = annotation_mask(ann["segmentation"], height, width)
            if ann.get("iscrowd", 0):
                crowd |= mask
            elif mask.any():
                masks.append(mask)
                class_ids.append(class_of[ann["category_id"]])
        instance_masks = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
        semantic = np.zeros((height, width), dtype=np.uint8)
        semantic[crowd] = IGNORE
        areas = instance_masks.sum(axis=(1, 2))
        for index in np.argsort(-areas, kind="stable"):
            semantic[instance_masks[index]] = class_ids[index]
        return GroundTruth(
            semantic=semantic, instance_masks=instance_masks, instance_class_ids=np.asarray(class_ids, dtype=np.int64)
        )


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a COCO segmentation: polygons, uncompressed or compressed RLE (as annToMask)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise DatasetError(f"unsupported COCO segmentation of type {type(segmentation).__name__}")
    with warnings.catch_warnings():  # pycocotools' Cython decode trips a numpy 2 copy= deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


__all__ = ["COCOSource", "annotation_mask"]
