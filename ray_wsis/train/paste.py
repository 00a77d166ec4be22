"""Context decoupling by copy-paste (CDA, Su et al., ICCV 2021), for the classifier's second round.

After a first run, its instance pseudo-labels cut objects out of their images (:func:`object_bank`).
While the classifier trains again, an image is, with ``cam.paste_probability``, given one object of
a class it does not contain, at a random scale, rotation and place (:func:`paste_random`), and that
class joins its image-level labels: the object's own evidence, not the background it came with,
then carries the label. Numpy and PIL only: it runs inside Ray Data's CPU tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from PIL import Image

from ray_wsis.masks import decode_rle

SCALES = (0.5, 1.5)
"""Range of the random scale of a pasted object (uniform)."""
MAX_ANGLE = 30.0
"""A pasted object is rotated by a uniform angle in [-MAX_ANGLE, MAX_ANGLE] degrees."""


PASTE_COLUMNS = ("image_id", "height", "width", "instances")
"""The pseudo-label columns :func:`object_bank` reads."""


@dataclass(frozen=True)
class PasteObject:
    """One object cut out of a first-round label: its bounding box's pixels and its mask there."""

    class_id: int
    rgb: np.ndarray
    """(h, w, 3) uint8."""
    mask: np.ndarray
    """(h, w) bool, True on the object."""


def cut_object(image: np.ndarray, mask: np.ndarray, class_id: int) -> Optional[PasteObject]:
    """The object under ``mask`` (H, W) in ``image`` (H, W, 3), cropped to its bounding box; None
    for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return PasteObject(int(class_id), image[y0:y1, x0:x1].copy(), mask[y0:y1, x0:x1].copy())


def transform(obj: PasteObject, scale: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The object resized by ``scale`` (bilinear; the mask nearest) and rotated by ``angle`` degrees
    counter-clockwise about its centre, the canvas grown to hold it: (rgb, mask)."""
    h, w = obj.mask.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = Image.fromarray(obj.rgb).resize(size, Image.Resampling.BILINEAR)
    mask = Image.fromarray(obj.mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    if angle:
        rgb = rgb.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
        mask = mask.rotate(angle, resample=Image.Resampling.NEAREST, expand=True)
    return np.asarray(rgb), np.asarray(mask) > 127


def composite(
    image: np.ndarray, rgb: np.ndarray, mask: np.ndarray, top: int, left: int
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with the masked pixels of ``rgb`` put over it, its top-left corner at (top, left)
    (it may hang over any edge: the part outside is dropped); returns the new image and where the
    object landed, an (H, W) bool map."""
    out = image.copy()
    placed = np.zeros(image.shape[:2], bool)
    height, width = image.shape[:2]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + mask.shape[0], height), min(left + mask.shape[1], width)
    if y1 <= y0 or x1 <= x0:
        return out, placed
    inside = mask[y0 - top : y1 - top, x0 - left : x1 - left]
    out[y0:y1, x0:x1][inside] = rgb[y0 - top : y1 - top, x0 - left : x1 - left][inside]
    placed[y0:y1, x0:x1] = inside
    return out, placed


def paste_random(
    image: np.ndarray,
    class_ids: Sequence[int],
    bank: Sequence[PasteObject],
    probability: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[int]]:
    """With ``probability``, one object of a class the image lacks, pasted at a random scale
    (:data:`SCALES`), rotation (:data:`MAX_ANGLE`) and centre inside the image; the image and its
    class ids with the pasted class added. Unchanged when no object fits or the draw says no."""
    present = set(int(c) for c in class_ids)
    candidates = [i for i, obj in enumerate(bank) if obj.class_id not in present]
    if not candidates or rng.random() >= probability:
        return image, sorted(present)
    obj = bank[candidates[int(rng.integers(len(candidates)))]]
    rgb, mask = transform(obj, float(rng.uniform(*SCALES)), float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)))
    centre_y, centre_x = int(rng.integers(image.shape[0])), int(rng.integers(image.shape[1]))
    pasted, placed = composite(image, rgb, mask, centre_y - mask.shape[0] // 2, centre_x - mask.shape[1] // 2)
    if not placed.any():
        return image, sorted(present)
    return pasted, sorted(present | {obj.class_id})


def object_bank(
    rows: Iterable[dict[str, Any]], load: Callable[[str], Optional[np.ndarray]], min_score: float, min_area: int = 16
) -> list[PasteObject]:
    """The objects of pseudo-label rows (image_id, height, width, instances with rle, category_id,
    score): every instance scoring at least ``min_score`` and covering ``min_area`` pixels, cut out
    of its image as ``load(image_id)`` returns it (None: the image is skipped)."""
    bank: list[PasteObject] = []
    for row in rows:
        instances = [
            i for i in (row.get("instances") or []) if i["score"] >= min_score and int(i.get("area") or 0) >= min_area
        ]
        if not instances:
            continue
        image = load(str(row["image_id"]))
        if image is None or image.shape[:2] != (int(row["height"]), int(row["width"])):
            continue
        for instance in instances:
            obj = cut_object(image, decode_rle(instance["rle"]).astype(bool), int(instance["category_id"]))
            if obj is not None:
                bank.append(obj)
    return bank
