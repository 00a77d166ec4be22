"""Batch UDFs: rows of (image_id, uri, class_ids[, ir_label]) -> augmented training tensors.

They run as CPU `map_batches` tasks in Ray Data and are called directly by plain loops.
Images that fail to decode are dropped from training batches (make-cams records them).
This module must stay free of torch and ray.train: each Ray Data worker imports it once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ray_wsis.config import Config, config_from_dict
from ray_wsis.data.decode import ImageDecodeError, resize_long_side
from ray_wsis.data.records import ImageRecord
from ray_wsis.data.sources import load_image
from ray_wsis.masks import decode_label_png
from ray_wsis.storage import StorageError
from ray_wsis.train.augment import classifier_sample, relation_sample, top_left_sample
from ray_wsis.train.paste import PasteObject, paste_random


def _images(batch: dict[str, Any], config: Config) -> list[tuple[int, np.ndarray]]:
    out = []
    for i, (image_id, uri) in enumerate(zip(batch["image_id"], batch["uri"])):
        try:
            image = load_image(ImageRecord(str(image_id), str(uri), ()), config.storage)
        except (ImageDecodeError, StorageError):
            continue
        out.append((i, resize_long_side(image, config.dataset.max_long_side)))
    return out


class ClassifierBatches:
    """Decode + irn classifier augmentation; targets are multi-hot over classes 1..C. With a
    ``bank`` of first-round objects (train/paste.py), images first get an object of a class they
    lack, with ``cam.paste_probability``, and that class in their target."""

    def __init__(self, config: Config, num_classes: int, bank: Sequence[PasteObject] = ()) -> None:
        self.config, self.num_classes, self.bank = config, num_classes, bank
        self.rng = np.random.default_rng()

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        c = self.config.cam
        images, targets = [], []
        for i, image in _images(batch, self.config):
            class_ids = list(batch["class_ids"][i])
            if self.bank:
                image, class_ids = paste_random(image, class_ids, self.bank, c.paste_probability, self.rng)
            images.append(classifier_sample(image, c.crop_size, c.resize_long, c.color_jitter, self.rng))
            target = np.zeros(self.num_classes, np.float32)
            target[np.asarray(class_ids, np.int64) - 1] = 1.0
            targets.append(target)
        size = c.crop_size
        return {
            "image": np.stack(images) if images else np.zeros((0, 3, size, size), np.float32),
            "target": np.stack(targets) if targets else np.zeros((0, self.num_classes), np.float32),
        }


class RelationBatches:
    """Decode image + relation-label PNG, irn affinity augmentation; labels at `stride`."""

    def __init__(
        self,
        config: Config,
        crop_size: int,
        rescale: tuple[float, float],
        stride: int,
        jitter: float | tuple[float, ...] = 0.0,
    ) -> None:
        self.config, self.crop_size, self.rescale, self.stride = config, crop_size, rescale, stride
        self.jitter = jitter
        self.rng = np.random.default_rng()

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        images, labels = [], []
        for i, image in _images(batch, self.config):
            label = decode_label_png(batch["ir_label"][i])
            if label.shape != image.shape[:2]:
                continue
            x, y = relation_sample(image, label, self.crop_size, self.rescale, self.rng, self.stride, self.jitter)
            images.append(x)
            labels.append(y)
        s, ls = self.crop_size, self.crop_size // self.stride
        return {
            "image": np.stack(images) if images else np.zeros((0, 3, s, s), np.float32),
            "label": np.stack(labels) if labels else np.zeros((0, ls, ls), np.uint8),
        }


class TopLeftBatches:
    """irn's displacement-mean pass: plain top-left crops of the inference images."""

    def __init__(self, config: Config, crop_size: int) -> None:
        self.config, self.crop_size = config, crop_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        crops = [top_left_sample(image, self.crop_size) for _, image in _images(batch, self.config)]
        s = self.crop_size
        return {"image": np.stack(crops) if crops else np.zeros((0, 3, s, s), np.float32)}


def records_to_rows(records: list[ImageRecord]) -> list[dict[str, Any]]:
    return [{"image_id": r.image_id, "uri": r.uri, "class_ids": list(r.class_ids)} for r in records]


def rows_to_batch(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A list of row dicts -> a columnar batch as Ray Data hands it to map_batches."""
    keys = rows[0].keys() if rows else ()
    return {k: [row[k] for row in rows] for k in keys}


# Ray Data entry points (batch_format="pyarrow"): the config travels as a plain dict.


def classifier_batch(
    batch: pa.Table, config: dict[str, Any], num_classes: int, bank: Sequence[PasteObject] = ()
) -> dict[str, np.ndarray]:
    return ClassifierBatches(config_from_dict(config), num_classes, bank)(batch.to_pydict())


def relation_batch(batch: pa.Table, config: dict[str, Any]) -> dict[str, np.ndarray]:
    cfg = config_from_dict(config)
    if cfg.method == "irnet":
        return RelationBatches(cfg, cfg.irn.crop_size, cfg.irn.rescale, 4)(batch.to_pydict())
    a = cfg.affinity
    return RelationBatches(cfg, a.crop_size, a.rescale, 8, a.color_jitter)(batch.to_pydict())


def top_left_batch(batch: pa.Table, config: dict[str, Any]) -> dict[str, np.ndarray]:
    cfg = config_from_dict(config)
    return TopLeftBatches(cfg, cfg.irn.crop_size)(batch.to_pydict())
