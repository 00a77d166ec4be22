"""The model actors of the inference stages: CAMs (make-cams) and pseudo-labels (make-pseudo-labels).

Like the CPU tasks (decode_task.py, crf_task.py, eval_tasks.py) they take and return
``pyarrow.Table`` batches of plain types (strings, ints, lists, binary): decoded pixels travel
as raw bytes with their shape, CAMs as float16 bytes, masks as PNG/RLE. One bad image becomes
one row with a non-empty ``error``; it never fails the batch.
"""

from __future__ import annotations

import traceback
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ray_wsis.config import Config, config_from_dict
from ray_wsis.data.decode import resize_label
from ray_wsis.infer.predictors import AffinityPredictor, CamPredictor, IRNetPredictor
from ray_wsis.models.checkpoints import model_from_checkpoint
from ray_wsis.pipeline.decode_task import pixels
from ray_wsis.pipeline.faults import maybe_kill_actor
from ray_wsis.pipeline.schema import (CAMS, ERROR_COLUMN, PSEUDO_LABELS, cam_array, cam_row, describe_error,
                                      error_row, error_text, pseudo_label_row, rows_to_table)
from ray_wsis.storage import read_bytes, resolve


def _rows(batch: pa.Table) -> list[dict[str, Any]]:
    return batch.to_pylist()


def device_for(config: Config) -> torch.device:
    return torch.device("cuda" if config.ray.use_gpu and torch.cuda.is_available() else "cpu")


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
                cams = self.predictor(pixels(row), row["labels"])
                rows.append(cam_row(row["image_id"], base["uri"], base["height"], base["width"], base["labels"], cams))
            except Exception as exc:  # one image must not fail the batch; recorded with its reason
                rows.append(error_row(CAMS, row["image_id"], error_text("failed", describe_error(exc)), **base))
        return rows_to_table(rows, CAMS)


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
                    masks = np.stack([resize_label(m.astype(np.uint8), h, w) > 0 for m in masks]) if len(masks) \
                        else np.zeros((0, h, w), bool)
                rows.append(pseudo_label_row(row["image_id"], h, w, row["labels"],
                                             resize_label(result.semantic, h, w), masks,
                                             result.instances.class_ids, result.instances.scores))
            except Exception as exc:  # recorded per image
                rows.append(error_row(PSEUDO_LABELS, row["image_id"],
                                      error_text("failed", describe_error(exc) + " | " + _last_frame(exc)), **known))
        return rows_to_table(rows, PSEUDO_LABELS)


def _last_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
