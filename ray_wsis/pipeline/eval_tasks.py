"""Evaluation tasks: each returns one row of partial results (confusions, matches), merged on
the driver. Free of torch, like the other CPU tasks (decode_task.py).
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from ray_wsis.config import config_from_dict
from ray_wsis.data.decode import inference_size, resize_label
from ray_wsis.data.records import DatasetSource
from ray_wsis.eval.instance import match_image
from ray_wsis.eval.semantic import cam_to_label, confusion_matrix, precision_of_ir_labels
from ray_wsis.masks import decode_label_png, decode_rle
from ray_wsis.method.upsample import upsample_cams
from ray_wsis.pipeline.schema import cam_array


def _ground_truth_semantic(source: DatasetSource, image_id: str) -> Optional[np.ndarray]:
    gt = source.ground_truth(image_id)
    return None if gt is None else gt.semantic


def _fit(label: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return resize_label(label, *shape)


CAM_SWEEP = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60)
"""Background thresholds of the CAM mIoU sweep: from-scratch CAMs need other thresholds than
ImageNet ones, and a few labelled images are enough to see which (README, "Thresholds")."""


def eval_cams(batch: pa.Table, config: dict[str, Any], source: DatasetSource, num_classes: int) -> pa.Table:
    """Confusion of the CAM label at cam.eval_threshold (first) and at every CAM_SWEEP threshold."""
    cfg = config_from_dict(config)
    thresholds = (cfg.cam.eval_threshold, *CAM_SWEEP)
    conf = np.zeros((len(thresholds), num_classes + 1, num_classes + 1), np.int64)
    images = 0
    for row in batch.to_pylist():
        gt = _ground_truth_semantic(source, row["image_id"])
        if gt is None:
            continue
        inference = inference_size(row["height"], row["width"], cfg.dataset.max_long_side)
        full = upsample_cams(cam_array(row), *inference)
        for k, threshold in enumerate(thresholds):
            label = cam_to_label(full, row["labels"], threshold)
            conf[k] += confusion_matrix(_fit(label, gt.shape), gt, num_classes + 1)
        images += 1
    return pa.table({"confusion": [conf.tobytes()], "images": [images]})


def eval_ir_labels(batch: pa.Table, source: DatasetSource) -> pa.Table:
    totals = np.zeros(3, np.int64)
    images = 0
    for row in batch.to_pylist():
        gt = _ground_truth_semantic(source, row["image_id"])
        if gt is None:
            continue
        stats = precision_of_ir_labels(_fit(decode_label_png(row["ir_label"]), gt.shape), gt)
        totals += (stats.correct, stats.labelled, stats.valid)
        images += 1
    return pa.table({"correct": [int(totals[0])], "labelled": [int(totals[1])], "valid": [int(totals[2])],
                     "images": [images]})


def eval_pseudo_labels(batch: pa.Table, source: DatasetSource, num_classes: int) -> pa.Table:
    conf = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    matches, images = [], 0
    for row in batch.to_pylist():
        gt = source.ground_truth(row["image_id"])
        if gt is None or gt.semantic is None:
            continue
        conf += confusion_matrix(decode_label_png(row["semantic"]), gt.semantic, num_classes + 1)
        images += 1
        if gt.instance_masks is None:
            continue
        instances = row["instances"] or []
        h, w = gt.semantic.shape
        masks = np.stack([decode_rle(i["rle"]) for i in instances]) if instances else np.zeros((0, h, w), bool)
        record = match_image(masks, [i["category_id"] for i in instances], [i["score"] for i in instances],
                             gt.instance_masks, gt.instance_class_ids, num_classes=num_classes)
        matches.append(record.as_dict())
    return pa.table({"confusion": [conf.tobytes()], "images": [images], "matches": [json.dumps(matches)]})
