"""The decode task of the inference stages: image bytes -> raw RGB pixels with their sizes.

Kept apart from the model actors' modules (torch) on purpose: decode tasks run in many Ray
worker processes, and each imports this module once (torch and torchvision cost seconds).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from ray_wsis.config import config_from_dict
from ray_wsis.data.decode import ImageDecodeError, resize_long_side
from ray_wsis.data.records import ImageRecord
from ray_wsis.data.sources import load_image
from ray_wsis.pipeline.schema import ERROR_COLUMN, error_text
from ray_wsis.pipeline.timings import SECONDS
from ray_wsis.storage import StorageError


def pixels(row: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(row["pixels"], np.uint8).reshape(row["pixel_height"], row["pixel_width"], 3)


def decode_images(batch: pa.Table, config: dict[str, Any]) -> pa.Table:
    """CPU task: read and decode each image, downscale above max_long_side, keep its size.

    Adds pixels (raw RGB bytes), pixel_height/width (inference size), height/width (original
    size) and error to whatever columns came in.
    """
    cfg = config_from_dict(config)
    out = []
    for row in batch.to_pylist():
        row = dict(row)
        row.setdefault(ERROR_COLUMN, "")
        start = time.perf_counter()
        try:
            image = load_image(ImageRecord(row["image_id"], row["uri"], ()), cfg.storage)
            height, width = image.shape[:2]
            image = resize_long_side(image, cfg.dataset.max_long_side)
            row.update(
                pixels=image.tobytes(),
                pixel_height=image.shape[0],
                pixel_width=image.shape[1],
                height=height,
                width=width,
            )
        except ImageDecodeError as exc:
            row.update(pixels=b"", pixel_height=0, pixel_width=0, error=error_text("failed", exc.reason))
        except StorageError as exc:
            row.update(pixels=b"", pixel_height=0, pixel_width=0, error=error_text("failed", str(exc)))
        if "height" not in row or row.get("height") is None:
            row.update(height=0, width=0)
        row[f"{SECONDS}decode"] = time.perf_counter() - start
        out.append(row)
    return pa.Table.from_pylist(out)
