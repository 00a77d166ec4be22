"""Ray Data UDFs of the inference stages: decode (CPU tasks), models (actors), evaluation.

All of them take and return ``pyarrow.Table`` batches of plain types (strings, ints, lists,
binary): decoded pixels travel as raw bytes with their shape, CAMs as float16 bytes, masks
as PNG/RLE. One bad image becomes one row with a non-empty ``error``; it never fails the batch.
"""

from __future__ import annotations

import json
import traceback
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from ray_wsis.config import Config, config_from_dict
from ray_wsis.data.decode import ImageDecodeError, inference_size, resize_long_side
from ray_wsis.data.records import DatasetSource, ImageRecord
from ray_wsis.data.sources import load_image
from ray_wsis.eval.instance import match_image
from ray_wsis.eval.semantic import cam_to_label, confusion_matrix, precision_of_ir_labels
from ray_wsis.infer.predictors import AffinityPredictor, CamPredictor, IRNetPredictor
from ray_wsis.masks import decode_label_png, decode_rle, encode_label_png
from ray_wsis.method.cam import upsample_cams
from ray_wsis.method.ir_labels import relation_labels
from ray_wsis.models.checkpoints import model_from_checkpoint
from ray_wsis.pipeline.faults import maybe_kill_actor
from ray_wsis.pipeline.schema import (CAMS, ERROR_COLUMN, IR_LABELS, PSEUDO_LABELS, cam_array, error_row,
                                      error_text, pseudo_label_row, rows_to_table)
from ray_wsis.storage import StorageError, read_bytes, resolve

PIXEL_COLUMNS = ("pixels", "pixel_height", "pixel_width", "height", "width")


def _rows(batch: pa.Table) -> list[dict[str, Any]]:
    return batch.to_pylist()


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def device_for(config: Config) -> torch.device:
    return torch.device("cuda" if config.ray.use_gpu and torch.cuda.is_available() else "cpu")


def pixels(row: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(row["pixels"], np.uint8).reshape(row["pixel_height"], row["pixel_width"], 3)


def decode_images(batch: pa.Table, config: dict[str, Any]) -> pa.Table:
    """CPU task: read and decode each image, downscale above max_long_side, keep its size.

    Adds pixels (raw RGB bytes), pixel_height/width (inference size), height/width (original
    size) and error to whatever columns came in.
    """
    cfg = config_from_dict(config)
    out = []
    for row in _rows(batch):
        row = dict(row)
        row.setdefault(ERROR_COLUMN, "")
        try:
            image = load_image(ImageRecord(row["image_id"], row["uri"], ()), cfg.storage)
            height, width = image.shape[:2]
            image = resize_long_side(image, cfg.dataset.max_long_side)
            row.update(pixels=image.tobytes(), pixel_height=image.shape[0], pixel_width=image.shape[1],
                       height=height, width=width)
        except ImageDecodeError as exc:
            row.update(pixels=b"", pixel_height=0, pixel_width=0, error=error_text("failed", exc.reason))
        except StorageError as exc:
            row.update(pixels=b"", pixel_height=0, pixel_width=0, error=error_text("failed", str(exc)))
        if "height" not in row or row.get("height") is None:
            row.update(height=0, width=0)
        out.append(row)
    return pa.Table.from_pylist(out)


def _load_model(config: Config, kind: str):
    location = resolve(config.output, config.storage).child("models", f"{kind}.pt")
    model, payload = model_from_checkpoint(read_bytes(location), kind, config.model.backbone, source=location.uri)
    return model, payload


class CamActor:
    """Actor: multi-scale CAMs of each decoded image (one model per actor, GPU when given)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config_from_dict(config)
        torch.set_num_threads(max(1, int(self.config.ray.cpus_per_actor)))
        model, _ = _load_model(self.config, "cam")
        self.predictor = CamPredictor(model, self.config.cam.scales, device_for(self.config))

    def __call__(self, batch: pa.Table) -> pa.Table:
        maybe_kill_actor("cam")
        rows = []
        for row in _rows(batch):
            base = {k: row.get(k) for k in ("uri", "height", "width", "labels")}
            if row.get(ERROR_COLUMN):
                rows.append(error_row(CAMS, row["image_id"], row[ERROR_COLUMN], **base))
                continue
            try:
                cams = self.predictor(pixels(row), row["labels"]).astype(np.float16)
                rows.append({**base, "image_id": row["image_id"], "cam_height": cams.shape[1],
                             "cam_width": cams.shape[2], "cam": cams.tobytes(), ERROR_COLUMN: ""})
            except Exception as exc:  # one image must not fail the batch; recorded with its reason
                rows.append(error_row(CAMS, row["image_id"], error_text("failed", _describe(exc)), **base))
        return rows_to_table(rows, CAMS)


def ir_label_batch(batch: pa.Table, config: dict[str, Any]) -> pa.Table:
    """CPU task: relation labels (thresholds + dense CRF) from CAM rows with decoded pixels."""
    cfg = config_from_dict(config)
    rows = []
    for row in _rows(batch):
        base = {k: row.get(k) for k in ("uri", "height", "width", "labels")}
        if row.get(ERROR_COLUMN):
            rows.append(error_row(IR_LABELS, row["image_id"], row[ERROR_COLUMN], **base))
            continue
        try:
            image = pixels(row)
            cams = upsample_cams(torch.from_numpy(cam_array(row)), *image.shape[:2]).numpy()
            label = relation_labels(image, cams, row["labels"], cfg.ir_label)
            rows.append({**base, "image_id": row["image_id"], "ir_label": encode_label_png(label), ERROR_COLUMN: ""})
        except Exception as exc:  # recorded per image
            rows.append(error_row(IR_LABELS, row["image_id"], error_text("failed", _describe(exc)), **base))
    return rows_to_table(rows, IR_LABELS)


def _to_original(label: np.ndarray, height: int, width: int) -> np.ndarray:
    if label.shape == (height, width):
        return label
    return np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))


class PseudoLabelActor:
    """Actor: IRNet (or AffinityNet) + sparse random walk + instance assembly per image."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config_from_dict(config)
        torch.set_num_threads(max(1, int(self.config.ray.cpus_per_actor)))
        device = device_for(self.config)
        if self.config.method == "irnet":
            model, _ = _load_model(self.config, "irnet")
            self.predictor: IRNetPredictor | AffinityPredictor = IRNetPredictor(model, self.config.walk, device)
        else:
            model, _ = _load_model(self.config, "affinitynet")
            self.predictor = AffinityPredictor(model, self.config.affinity, self.config.walk.min_fragment_fraction,
                                               device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        maybe_kill_actor("pseudo_labels")
        rows = []
        for row in _rows(batch):
            known = {k: row.get(k) for k in ("height", "width", "labels")}
            if row.get(ERROR_COLUMN):
                rows.append(error_row(PSEUDO_LABELS, row["image_id"], row[ERROR_COLUMN], **known))
                continue
            try:
                image = pixels(row)
                cams = cam_array(row)
                result = self.predictor(image, cams, row["labels"])
                h, w = row["height"], row["width"]
                masks = result.instances.masks
                if masks.shape[1:] != (h, w):
                    masks = np.stack([_to_original(m.astype(np.uint8), h, w) > 0 for m in masks]) if len(masks) \
                        else np.zeros((0, h, w), bool)
                rows.append(pseudo_label_row(row["image_id"], h, w, row["labels"],
                                             _to_original(result.semantic, h, w), masks,
                                             result.instances.class_ids, result.instances.scores))
            except Exception as exc:  # recorded per image
                rows.append(error_row(PSEUDO_LABELS, row["image_id"],
                                      error_text("failed", _describe(exc) + " | " + _last_frame(exc)), **known))
        return rows_to_table(rows, PSEUDO_LABELS)


def _last_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""


# ----------------------------------------------------------------------------------------
# Evaluation: each task returns one row of partial results, merged on the driver


def _ground_truth_semantic(source: DatasetSource, image_id: str) -> Optional[np.ndarray]:
    gt = source.ground_truth(image_id)
    return None if gt is None else gt.semantic


def _fit(label: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return _to_original(label, *shape)


CAM_SWEEP = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60)
"""Background thresholds of the CAM mIoU sweep: from-scratch CAMs need other thresholds than
ImageNet ones, and a few labelled images are enough to see which (README, "Thresholds")."""


def eval_cams(batch: pa.Table, config: dict[str, Any], source: DatasetSource, num_classes: int) -> pa.Table:
    """Confusion of the CAM label at cam.eval_threshold (first) and at every CAM_SWEEP threshold."""
    cfg = config_from_dict(config)
    thresholds = (cfg.cam.eval_threshold, *CAM_SWEEP)
    conf = np.zeros((len(thresholds), num_classes + 1, num_classes + 1), np.int64)
    images = 0
    for row in _rows(batch):
        gt = _ground_truth_semantic(source, row["image_id"])
        if gt is None:
            continue
        inference = inference_size(row["height"], row["width"], cfg.dataset.max_long_side)
        full = upsample_cams(torch.from_numpy(cam_array(row)), *inference).numpy()
        for k, threshold in enumerate(thresholds):
            label = cam_to_label(full, row["labels"], threshold)
            conf[k] += confusion_matrix(_fit(label, gt.shape), gt, num_classes + 1)
        images += 1
    return pa.table({"confusion": [conf.tobytes()], "images": [images]})


def eval_ir_labels(batch: pa.Table, source: DatasetSource) -> pa.Table:
    totals = np.zeros(3, np.int64)
    images = 0
    for row in _rows(batch):
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
    for row in _rows(batch):
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
