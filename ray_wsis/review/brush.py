"""Our labels as Label Studio brush regions, and a reviewer's regions back as labels.

A Label Studio brush annotation is a list of regions, each one class and one RGBA RLE bitmap
(review/brush_rle.py). We send one region per object: the semantic mask of a
class split by the instances under it (pixels of the class that no instance covers make one
more region), so the regions add up to exactly the semantic mask and the reviewer corrects
objects one by one. Back, each region is an instance, and the semantic mask is their union
(where a later region overlaps an earlier one, the later wins; pixels under no region are
background). A reviewer who draws two objects in one region gives one instance: the README
asks for one region per object.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from ray_wsis.data.reviewed import HumanLabel
from ray_wsis.review import brush_rle
from ray_wsis.review.client import ReviewError

FROM_NAME = "label"
TO_NAME = "image"


def label_config(class_names: Sequence[str]) -> str:
    """The project's labelling interface: the image and one brush label per class."""
    labels = "".join(f'<Label value="{escape(name, {chr(34): "&quot;"})}"/>' for name in class_names)
    return (
        f'<View><Image name="{TO_NAME}" value="$image" zoom="true"/>'
        f'<BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">{labels}</BrushLabels></View>'
    )


def label_names(config: str) -> set[str]:
    """The brush label values of a project's labelling interface."""
    try:
        root = ET.fromstring(config)
    except ET.ParseError:
        return set()
    return {label.get("value", "") for tag in root.iter("BrushLabels") for label in tag.iter("Label")}


def regions(semantic: np.ndarray, masks: np.ndarray, class_ids: Sequence[int]) -> list[tuple[int, np.ndarray]]:
    """(class id, bool mask) per object: each class's pixels split by the instances of that class."""
    out: list[tuple[int, np.ndarray]] = []
    for c in sorted(int(v) for v in np.unique(semantic) if 0 < v < 255):
        left = semantic == c
        for mask, k in zip(masks, class_ids):
            if int(k) != c:
                continue
            part = left & mask
            if part.any():
                out.append((c, part))
                left = left & ~part
        if left.any():
            out.append((c, left))
    return out


def prediction_result(parts: list[tuple[int, np.ndarray]], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Label Studio results of brush regions."""
    out = []
    for k, (c, mask) in enumerate(parts):
        h, w = mask.shape
        out.append(
            {
                "id": f"r{k}",
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "brushlabels",
                "original_width": int(w),
                "original_height": int(h),
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": brush_rle.encode(mask),
                    "brushlabels": [class_names[c - 1]],
                },
            }
        )
    return out


def decode_result(result: list[dict[str, Any]], class_names: Sequence[str], height: int, width: int) -> HumanLabel:
    """A submitted annotation's brush regions as labels; ReviewError for a region we cannot read."""
    index = {name: k + 1 for k, name in enumerate(class_names)}
    semantic = np.zeros((height, width), np.uint8)
    masks, classes = [], []
    for region in result:
        if region.get("type") != "brushlabels":
            continue  # other tools of a customised interface carry no mask
        value = region.get("value", {})
        names = value.get("brushlabels") or []
        if len(names) != 1 or names[0] not in index:
            raise ReviewError(f"a region is labelled {names!r}, not one of the dataset's classes")
        h, w = int(region.get("original_height", height)), int(region.get("original_width", width))
        if (h, w) != (height, width):
            raise ReviewError(f"a region is {w}x{h} px, the image {width}x{height}")
        if value.get("format", "rle") != "rle":
            raise ReviewError(f"a region is stored as {value.get('format')!r}, not as a brush RLE")
        try:
            mask = brush_rle.decode(value["rle"], h, w)
        except (ValueError, KeyError, TypeError) as exc:
            raise ReviewError(f"a {names[0]} region's brush RLE cannot be read: {exc}") from None
        if not mask.any():
            continue
        semantic[mask] = index[names[0]]
        masks.append(mask)
        classes.append(index[names[0]])
    stacked = np.stack(masks) if masks else np.zeros((0, height, width), bool)
    return HumanLabel(semantic, stacked, np.asarray(classes, np.int64))
