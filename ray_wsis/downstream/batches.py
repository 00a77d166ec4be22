"""The augmentation UDFs of downstream training: decoded pseudo-label rows -> training rows.

They run in Ray Data CPU tasks, and a Ray worker imports the module of each function it runs,
so this module imports no torch (torch and torchvision cost a task worker 5-6 s of CPU each on
this project's 2-core box; tests/test_task_imports.py keeps it so). DeepLab rows have a fixed
shape (crop x crop); Mask R-CNN rows are ragged (any number of instances), so they travel as
byte columns with their shapes, which every Arrow and Ray version carries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ray_wsis.train.augment import relation_sample, resize

DETECTOR_ASPECT = 1333 / 800
"""torchvision's max_size / min_size ratio for detection inputs."""


def detector_sizes(crop_size: int) -> tuple[int, int]:
    """Mask R-CNN transform (min_size, max_size): the short side is crop_size, as torchvision's 800/1333."""
    return crop_size, int(math.ceil(crop_size * DETECTOR_ASPECT))


# --------------------------------------------------------------------------- DeepLab
def semantic_sample(
    image: np.ndarray, semantic: np.ndarray, crop_size: int, rescale: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random scale, flip and crop (image fill 0 after normalisation, label fill 255 = ignored).

    irn's relation augmentation at stride 1 is exactly the DeepLab recipe, so it is reused.
    """
    return relation_sample(image, semantic, crop_size, rescale, rng, stride=1)


def uncertain_as_ignore(semantic: np.ndarray, confidence: np.ndarray | None, min_confidence: float) -> np.ndarray:
    """The label with pixels whose confidence (0..255) is below min_confidence x 255 set to 255 (ignored)."""
    if confidence is None or min_confidence <= 0:
        return semantic
    return np.where(np.asarray(confidence) < round(min_confidence * 255), np.uint8(255), semantic).astype(np.uint8)


def semantic_batch(
    batch: dict[str, Any], crop_size: int, rescale: tuple[float, float], min_confidence: float = 0.0
) -> dict[str, np.ndarray]:
    """Decoded rows (image, semantic[, confidence]) -> {'image': (B, 3, S, S) float32, 'label': (B, S, S) uint8}.

    With min_confidence > 0 (downstream.ignore_uncertain) pixels decided close to the threshold
    are ignored by the loss."""
    rng = np.random.default_rng()
    images, labels = [], []
    confidences = batch.get("confidence", [None] * len(batch["semantic"]))
    for image, semantic, confidence in zip(batch["image"], batch["semantic"], confidences):
        image, semantic = np.asarray(image), np.asarray(semantic)
        if image.shape[:2] != semantic.shape:
            continue  # a label of another image size cannot be aligned; the pipeline never makes one
        semantic = uncertain_as_ignore(semantic, confidence, min_confidence)
        x, y = semantic_sample(image, semantic, crop_size, (float(rescale[0]), float(rescale[1])), rng)
        images.append(x)
        labels.append(y)
    s = crop_size
    return {
        "image": np.stack(images) if images else np.zeros((0, 3, s, s), np.float32),
        "label": np.stack(labels) if labels else np.zeros((0, s, s), np.uint8),
    }


# --------------------------------------------------------------------------- Mask R-CNN
def keep_instances(scores: np.ndarray, min_score: float) -> np.ndarray:
    """Targets exclude zero-score fragments always, and anything below downstream.min_score."""
    scores = np.asarray(scores, np.float32)
    return (scores > 0) & (scores >= min_score)


def _resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    if masks.shape[1:] == (height, width):
        return masks.astype(np.uint8)
    return (
        np.stack([resize(m.astype(np.uint8), height, width, nearest=True) for m in masks])
        if len(masks)
        else np.zeros((0, height, width), np.uint8)
    )


def instance_sample(
    image: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Resize to the detector's own input size (so its transform does no work) and flip.

    Boxes are the RLE boxes (xyxy) scaled and mirrored with the image; an instance whose
    box is under one pixel wide or high, or whose mask vanished, is dropped.
    """
    h, w = image.shape[:2]
    min_size, max_size = detector_sizes(crop_size)
    scale = min(min_size / min(h, w), max_size / max(h, w))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        image = resize(image, nh, nw)
    masks = _resize_masks(masks, nh, nw)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * np.asarray([nw / w, nh / h, nw / w, nh / h], np.float32)
    if rng.random() < 0.5:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
        boxes = np.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], axis=1)
    boxes = np.clip(boxes, 0, [nw, nh, nw, nh]).astype(np.float32)
    valid = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1) & masks.any(axis=(1, 2))
    return (
        np.ascontiguousarray(image.transpose(2, 0, 1)),
        np.ascontiguousarray(masks[valid]),
        boxes[valid],
        np.asarray(labels, np.int64)[valid],
    )


def _objects(values: Iterable[bytes]) -> np.ndarray:
    """Byte strings as an object array: a fixed-width 'S' array would cut them at the first NUL."""
    values = list(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def instance_batch(batch: dict[str, Any], crop_size: int, min_score: float) -> dict[str, np.ndarray]:
    """Decoded rows -> image and targets as bytes + shapes (masks bit-packed)."""
    rng = np.random.default_rng()
    out: dict[str, list[Any]] = {k: [] for k in ("image", "masks", "boxes", "labels", "height", "width", "count")}
    for i in range(len(batch["image_id"])):
        image, masks = np.asarray(batch["image"][i]), np.asarray(batch["masks"][i], bool)
        if masks.ndim != 3 or image.shape[:2] != masks.shape[1:]:
            continue
        keep = keep_instances(batch["scores"][i], min_score)
        x, m, b, c = instance_sample(
            image,
            masks[keep],
            np.asarray(batch["boxes"][i])[keep],
            np.asarray(batch["category_ids"][i])[keep],
            crop_size,
            rng,
        )
        out["image"].append(x.tobytes())
        out["masks"].append(np.packbits(m.astype(bool), axis=None).tobytes())
        out["boxes"].append(b.tobytes())
        out["labels"].append(c.tobytes())
        out["height"].append(x.shape[1])
        out["width"].append(x.shape[2])
        out["count"].append(len(c))
    return {
        "image": _objects(out["image"]),
        "masks": _objects(out["masks"]),
        "boxes": _objects(out["boxes"]),
        "labels": _objects(out["labels"]),
        "height": np.asarray(out["height"], np.int32),
        "width": np.asarray(out["width"], np.int32),
        "count": np.asarray(out["count"], np.int32),
    }
