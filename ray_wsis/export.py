"""Export pseudo-labels as a COCO instances file or VOC-style PNG folders.

COCO: images, categories (ids 1..C with the dataset's names; VOC ids 1..20), annotations with
RLE segmentation, bbox, area and the pseudo-label's score (as detection results carry).
VOC: SegmentationClass/<id>.png (class ids) and SegmentationObject/<id>.png (instance ids,
highest score on top), both palette PNGs in VOC's colours.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
from PIL import Image

from ray_wsis.classes import VOC_CLASSES, voc_palette
from ray_wsis.config import StorageConfig
from ray_wsis.labels import iter_pseudo_labels, shard_location
from ray_wsis.masks import instance_label_map
from ray_wsis.storage import resolve, write_bytes_atomic


def export_coco(
    labels_uri: str,
    out: str,
    class_names: Sequence[str] = VOC_CLASSES,
    storage: Optional[StorageConfig] = None,
    min_score: float = 0.0,
) -> dict[str, int]:
    shard_location(labels_uri, storage)  # no labels: an error, not an empty file
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for number, row in enumerate(iter_pseudo_labels(labels_uri, storage, decode=False), start=1):
        images.append(
            {
                "id": number,
                "file_name": f"{row['image_id']}.jpg",
                "ray_wsis_image_id": row["image_id"],
                "height": row["height"],
                "width": row["width"],
            }
        )
        for inst in row["instances"] or []:
            if inst["score"] < min_score:
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": inst["category_id"],
                    "segmentation": {"size": list(inst["rle"]["size"]), "counts": inst["rle"]["counts"]},
                    "bbox": [float(v) for v in inst["bbox"]],
                    "area": int(inst["area"]),
                    "iscrowd": 0,
                    "score": float(inst["score"]),
                }
            )
    document = {
        "info": {"description": "ray_wsis pseudo-labels"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(class_names)],
    }
    write_bytes_atomic(resolve(out, storage), json.dumps(document).encode())
    return {"images": len(images), "annotations": len(annotations)}


def _png(label: np.ndarray) -> Image.Image:
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    return img


def export_voc(
    labels_uri: str, out_dir: str, storage: Optional[StorageConfig] = None, min_score: float = 0.0
) -> dict[str, int]:
    shard_location(labels_uri, storage)  # no labels: an error, and no empty folders left behind
    os.makedirs(os.path.join(out_dir, "SegmentationClass"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "SegmentationObject"), exist_ok=True)
    count = 0
    for row in iter_pseudo_labels(labels_uri, storage, min_score=min_score):
        _png(row["semantic"]).save(os.path.join(out_dir, "SegmentationClass", f"{row['image_id']}.png"))
        keep = row["scores"] > 0  # zero-score fragments are not objects
        objects = (
            instance_label_map(row["masks"][keep], row["scores"][keep])
            if keep.any()
            else np.zeros((row["height"], row["width"]), np.uint8)
        )
        _png(objects).save(os.path.join(out_dir, "SegmentationObject", f"{row['image_id']}.png"))
        count += 1
    return {"images": count}
