"""The CPU task of make-ir-labels: CAM rows with decoded pixels -> relation labels (dense CRF).

Free of torch on purpose (like decode_task.py): every Ray worker that runs it imports it once.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ray_wsis.config import config_from_dict
from ray_wsis.masks import encode_label_png
from ray_wsis.method.ir_labels import relation_labels
from ray_wsis.method.upsample import upsample_cams
from ray_wsis.pipeline.decode_task import decode_images, pixels
from ray_wsis.pipeline.schema import (ERROR_COLUMN, IR_LABELS, cam_array, describe_error, error_row, error_text,
                                      rows_to_table)


def ir_label_batch(batch: pa.Table, config: dict[str, Any]) -> pa.Table:
    """CPU task: relation labels (thresholds + dense CRF) from CAM rows with decoded pixels."""
    cfg = config_from_dict(config)
    rows = []
    for row in batch.to_pylist():
        base = {k: row.get(k) for k in ("uri", "height", "width", "labels")}
        if row.get(ERROR_COLUMN):
            rows.append(error_row(IR_LABELS, row["image_id"], row[ERROR_COLUMN], **base))
            continue
        try:
            image = pixels(row)
            cams = upsample_cams(cam_array(row), *image.shape[:2])
            label = relation_labels(image, cams, row["labels"], cfg.ir_label)
            rows.append({**base, "image_id": row["image_id"], "ir_label": encode_label_png(label), ERROR_COLUMN: ""})
        except Exception as exc:  # recorded per image
            rows.append(error_row(IR_LABELS, row["image_id"], error_text("failed", describe_error(exc)), **base))
    return rows_to_table(rows, IR_LABELS)


def decode_and_label(batch: pa.Table, config: dict[str, Any]) -> pa.Table:
    """CPU task of make-ir-labels: decode the images of CAM rows, then ir_label_batch."""
    return ir_label_batch(decode_images(batch, config), config)
