"""What the synthetic sets share: the body colours, the sample records, the body texture.

:mod:`ray_wsis.data.synthetic` (the "parts" set, and ``make_synthetic_voc``, which writes
any set), :mod:`ray_wsis.data.synthetic_scenes` (the "scenes" set) and
:mod:`ray_wsis.data.synthetic_contexts` (the "contexts" set) import this module; the scenes
and contexts modules import nothing of the parts set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

BODY_PALETTE = np.array(
    [
        (178, 70, 60),
        (62, 112, 176),
        (196, 164, 82),
        (84, 150, 88),
        (140, 92, 158),
        (204, 122, 64),
        (118, 118, 118),
        (70, 160, 160),
        (186, 136, 150),
        (122, 92, 64),
        (150, 170, 70),
        (92, 84, 140),
    ],
    dtype=np.float32,
)
"""Body colours, shared by every class and by the distractors: not discriminative."""


@dataclass(frozen=True)
class SyntheticObject:
    """One visible object: instance i + 1 in the instance map is ``objects[i]``."""

    class_id: int
    bbox: tuple[int, int, int, int]
    """xmin, ymin, xmax, ymax of the visible pixels, 1-based as in VOC XML."""
    truncated: bool


@dataclass
class SyntheticSample:
    image: np.ndarray
    """(H, W, 3) uint8 RGB."""
    semantic: np.ndarray
    """(H, W) uint8: 0 background, class ids, 255 void band."""
    instance: np.ndarray
    """(H, W) uint8: 0 background, 1..n instances, 255 void band."""
    objects: list[SyntheticObject]
    part_masks: np.ndarray
    """(n, H, W) bool: each object's discriminative part (for analysing CAM coverage)."""

    @property
    def class_ids(self) -> tuple[int, ...]:
        return tuple(sorted({o.class_id for o in self.objects}))


def smooth_noise(
    rng: np.random.Generator, height: int, width: int, grid: tuple[int, int], channels: int = 3
) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a small random grid resized bicubically."""
    small = rng.uniform(0, 255, size=(grid[0], grid[1], channels)).astype(np.uint8)
    img = Image.fromarray(small if channels == 3 else small[..., 0])
    big = np.asarray(img.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    big = big if channels == 3 else big[..., None]
    return big / 127.5 - 1.0


def body_pixels(rng: np.random.Generator, shape: tuple[int, int], colour: np.ndarray) -> np.ndarray:
    """(h, w, 3) float RGB of a body of ``colour``: jittered, shaded along a random direction, blotched."""
    height, width = shape
    colour = np.clip(colour + rng.uniform(-14, 14, size=3), 0, 255).astype(np.float32)
    rows, cols = np.indices(shape, dtype=np.float32)
    yy = rows / max(1, height - 1) * 2 - 1
    xx = cols / max(1, width - 1) * 2 - 1
    direction = rng.uniform(0, 2 * np.pi)
    shading = 1.0 + rng.uniform(0.06, 0.16) * (np.cos(direction) * xx + np.sin(direction) * yy)
    blotches = smooth_noise(rng, height, width, (3, 3), 1) * rng.uniform(4, 10)
    fine = rng.normal(0, rng.uniform(3, 6), size=(height, width, 3)).astype(np.float32)
    return colour * shading[..., None] + blotches + fine
