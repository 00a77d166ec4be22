"""Class names and the VOC palette.

Convention used everywhere in ray_wsis: a *class id* is 1-based (1..C) as in VOC label PNGs
and COCO category ids of the export; 0 is background and 255 is void/ignore. The classifier's
output channel for class id ``k`` is ``k - 1``.
"""

from __future__ import annotations

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

BACKGROUND = 0
IGNORE = 255


def voc_palette() -> list[int]:
    """The 256-entry VOC colour map, flattened to 768 ints for ``PIL.Image.putpalette``."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette.reshape(-1).tolist()
