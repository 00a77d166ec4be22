"""PASCAL VOC 2012 (and SBD's train_aug) as a :class:`DatasetSource`.

Image-level labels come from ``Annotations/{id}.xml`` (every object, difficult or not, as
the reference cls_labels), or, for images without an XML (SBD train_aug users often have
none), from the values of the segmentation PNG. An image whose labels cannot be read is
not fatal: :meth:`VOCSource.scan` returns it separately with a reason, so the pipeline can
record it as a per-image error and carry on with the rest of the split.
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, TypeVar

import numpy as np

from ray_wsis.classes import BACKGROUND, IGNORE, VOC_CLASSES
from ray_wsis.config import StorageConfig
from ray_wsis.data.decode import ImageDecodeError, decode_label_png
from ray_wsis.data.records import DatasetError, GroundTruth, ImageRecord
from ray_wsis.storage import Location, StorageError, exists, read_bytes, resolve

Invalid = tuple[str, str]
"""(image_id, reason) of an image left out of a split."""

_T = TypeVar("_T")
_R = TypeVar("_R")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_optional(location: Location) -> Optional[bytes]:
    """The file's bytes, or None if it does not exist; other storage failures propagate."""
    try:
        return read_bytes(location)
    except StorageError:
        if not exists(location):
            return None
        raise


def parallel_map(fn: Callable[[_T], _R], items: list[_T], threads: int = 16) -> list[_R]:
    """Map over many small files with threads: one request each is slow on S3."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(fn, items))


def parse_split_line(line: str) -> Optional[str]:
    """An image id from one line of a split list; None for a blank line.

    Accepts VOC lists (``2007_000032``), Main lists with a flag (``2007_000032 -1``) and SBD
    lists (``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``).
    """
    tokens = line.split()
    if not tokens:
        return None
    token = tokens[0]
    if "/" in token:
        token = posixpath.basename(token)
    stem, ext = posixpath.splitext(token)
    return stem if ext.lower() in _IMAGE_SUFFIXES else token


def instances_from_maps(semantic: np.ndarray, instance_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) masks and class ids of a VOC SegmentationObject map.

    Instance index i >= 1 (0 background, 255 void); its class is the majority semantic class
    under its pixels, as VOC's own tools assign it. Instances over background/void only are dropped.
    """
    height, width = instance_map.shape
    inst = instance_map.astype(np.int64).ravel()
    sem = semantic.astype(np.int64).ravel()
    keep = (inst != BACKGROUND) & (inst != IGNORE) & (sem != BACKGROUND) & (sem != IGNORE)
    counts = np.bincount(inst[keep] * 256 + sem[keep], minlength=256 * 256).reshape(256, 256)
    ids = np.flatnonzero(counts.sum(axis=1))
    classes = counts[ids].argmax(axis=1)
    masks = instance_map[None, :, :] == ids[:, None, None].astype(instance_map.dtype)
    return masks.reshape(len(ids), height, width), classes.astype(np.int64)


def labels_from_xml(data: bytes, source: str, class_names: tuple[str, ...]) -> tuple[int, ...]:
    """Sorted unique 1-based class ids of every object in a VOC XML; DatasetError if unusable."""
    try:
        tree = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DatasetError(f"{source}: malformed XML ({exc})") from None
    index = {name: i + 1 for i, name in enumerate(class_names)}
    ids = set()
    for number, obj in enumerate(tree.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(f"{source}: object {number} has no <name>")
        class_id = index.get(name, index.get(name.lower()))
        if class_id is None:
            raise DatasetError(f"{source}: unknown class name {name!r} in object {number}")
        ids.add(class_id)
    return tuple(sorted(ids))


def labels_from_png(data: bytes, source: str, num_classes: int) -> tuple[int, ...]:
    """Sorted unique class ids present in a label PNG (0 and 255 excluded)."""
    try:
        labels = decode_label_png(data, source=source)
    except ImageDecodeError as exc:
        raise DatasetError(str(exc)) from None
    values = np.unique(labels)
    values = values[(values != BACKGROUND) & (values != IGNORE)]
    if values.size and values.max() > num_classes:
        raise DatasetError(f"{source}: label value {int(values.max())} is not a class id (1..{num_classes})")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class VOCSource:
    """A VOC 2012 layout under ``root`` (local folder or URI such as ``s3://bucket/VOC2012``)."""

    root: str
    storage: StorageConfig = field(default_factory=StorageConfig)
    segmentation_class_dir: str = "SegmentationClass"
    class_names: tuple[str, ...] = field(default=VOC_CLASSES, init=False)

    def _root(self) -> Location:
        if not self.root:
            raise DatasetError("dataset root is empty: set it to the VOC folder holding JPEGImages")
        location = resolve(self.root, self.storage)
        if not exists(location):
            raise DatasetError(f"dataset root {self.root} does not exist")
        return location

    def _split_ids(self, root: Location, split: str) -> list[str]:
        candidates = [
            root.child("ImageSets", "Segmentation", f"{split}.txt"),
            root.child("ImageSets", "Main", f"{split}.txt"),
            root.child(f"{split}.txt"),
        ]
        for location in candidates:
            data = read_optional(location)
            if data is None:
                continue
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise DatasetError(f"split file {location.uri} is not UTF-8 text") from None
            ids = [i for i in (parse_split_line(line) for line in text.splitlines()) if i]
            if not ids:
                raise DatasetError(f"split {split!r} is empty ({location.uri} lists no image)")
            return sorted(set(ids))
        raise DatasetError(
            f"split {split!r} not found: no file {candidates[0].uri} "
            f"(nor ImageSets/Main/{split}.txt, nor {split}.txt under the root)"
        )

    def scan(self, split: str) -> tuple[list[ImageRecord], list[Invalid]]:
        """Read the split list and every image's labels once: (good records, (id, reason) of bad ones)."""
        root = self._root()
        ids = self._split_ids(root, split)
        annotations = root.child("Annotations")
        use_xml = exists(annotations)

        def one(image_id: str) -> ImageRecord | Invalid:
            try:
                return ImageRecord(
                    image_id, root.child("JPEGImages", f"{image_id}.jpg").uri, self._labels(root, image_id, use_xml)
                )
            except DatasetError as exc:
                return (image_id, str(exc))

        results = parallel_map(one, ids)
        records = [r for r in results if isinstance(r, ImageRecord)]
        invalid = [r for r in results if not isinstance(r, ImageRecord)]
        return records, invalid

    def _labels(self, root: Location, image_id: str, use_xml: bool) -> tuple[int, ...]:
        xml = root.child("Annotations", f"{image_id}.xml")
        if use_xml:
            data = read_optional(xml)
            if data is not None:
                return labels_from_xml(data, xml.uri, self.class_names)
        png = root.child(self.segmentation_class_dir, f"{image_id}.png")
        data = read_optional(png)
        if data is None:
            raise DatasetError(f"no image-level labels for {image_id}: neither {xml.uri} nor {png.uri} exists")
        return labels_from_png(data, png.uri, len(self.class_names))

    def records(self, split: str) -> list[ImageRecord]:
        """The split's images with readable labels, sorted by id (see :meth:`scan` for the rest)."""
        return self.scan(split)[0]

    def invalid_records(self, split: str) -> list[Invalid]:
        """(image_id, reason) for the split's images whose labels could not be read."""
        return self.scan(split)[1]

    def has_ground_truth(self, split: str) -> bool:
        return exists(resolve(self.root, self.storage).child(self.segmentation_class_dir))

    def ground_truth(self, image_id: str) -> Optional[GroundTruth]:
        """Semantic map from the class PNG; instances from SegmentationObject, classed by majority vote."""
        root = resolve(self.root, self.storage)
        sem_loc = root.child(self.segmentation_class_dir, f"{image_id}.png")
        data = read_optional(sem_loc)
        if data is None:
            return None
        semantic = ground_truth_map(data, sem_loc.uri)
        obj_loc = root.child("SegmentationObject", f"{image_id}.png")
        obj_data = read_optional(obj_loc)
        if obj_data is None:
            return GroundTruth(semantic=semantic)
        instance_map = ground_truth_map(obj_data, obj_loc.uri)
        if instance_map.shape != semantic.shape:
            raise DatasetError(
                f"{obj_loc.uri} is {instance_map.shape[1]}x{instance_map.shape[0]} but "
                f"{sem_loc.uri} is {semantic.shape[1]}x{semantic.shape[0]}"
            )
        masks, class_ids = instances_from_maps(semantic, instance_map)
        return GroundTruth(semantic=semantic, instance_masks=masks, instance_class_ids=class_ids)


def ground_truth_map(data: bytes, source: str) -> np.ndarray:
    """A palette/grey label PNG as a uint8 map; decode failures become DatasetError."""
    try:
        return decode_label_png(data, source=source)
    except ImageDecodeError as exc:
        raise DatasetError(str(exc)) from None
