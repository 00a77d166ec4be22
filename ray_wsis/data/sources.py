"""From the ``dataset`` config section to a :class:`DatasetSource`, and from a record to pixels."""

from __future__ import annotations

import numpy as np

from ray_wsis.config import DatasetConfig, StorageConfig
from ray_wsis.data.coco import COCOSource
from ray_wsis.data.decode import ImageDecodeError, decode_image
from ray_wsis.data.manifest import ManifestSource
from ray_wsis.data.records import DatasetError, DatasetSource, ImageRecord
from ray_wsis.data.voc import VOCSource, read_optional
from ray_wsis.storage import exists, resolve


def _require(value: str, name: str, what: str) -> None:
    if not value:
        raise DatasetError(f"{name} is empty: set it to {what}")


def _require_exists(uri: str, name: str, storage: StorageConfig) -> None:
    if not exists(resolve(uri, storage)):
        raise DatasetError(f"{name} {uri} does not exist")


def build_source(dataset: DatasetConfig, storage: StorageConfig) -> DatasetSource:
    """The source for ``dataset.format``; DatasetError names the setting that is empty or wrong."""
    if dataset.format == "voc":
        _require(dataset.root, "dataset.root", "the VOC folder holding JPEGImages")
        _require_exists(dataset.root, "dataset.root", storage)
        return VOCSource(dataset.root, storage, dataset.segmentation_class_dir)
    if dataset.format == "coco":
        _require(dataset.root, "dataset.root", "the folder holding the COCO image folders")
        _require(
            dataset.coco_annotations,
            "dataset.coco_annotations",
            "the instances JSON with {split}, e.g. annotations/instances_{split}.json",
        )
        _require_exists(dataset.root, "dataset.root", storage)
        return COCOSource(dataset.root, dataset.coco_annotations, dataset.coco_image_dir, storage)
    if dataset.format == "manifest":
        _require(dataset.manifest, "dataset.manifest", "a .csv, .jsonl or .parquet file")
        _require(dataset.class_names_file, "dataset.class_names_file", "a file with one class name a line")
        _require_exists(dataset.manifest, "dataset.manifest", storage)
        return ManifestSource(dataset.manifest, dataset.class_names_file, dataset.root, storage)
    raise DatasetError(f"dataset.format {dataset.format!r} is not one of voc, coco, manifest")


def load_image(record: ImageRecord, storage: StorageConfig) -> np.ndarray:
    """The record's image as (H, W, 3) uint8 RGB; ImageDecodeError for a missing or bad file.

    Storage failures other than a missing file (endpoint down, access denied) propagate as
    StorageError: they are not the image's fault and a retry may succeed.
    """
    data = read_optional(resolve(record.uri, storage))
    if data is None:
        raise ImageDecodeError("missing file", record.uri)
    return decode_image(data, source=record.uri)
