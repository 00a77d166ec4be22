"""make-cams: multi-scale CAMs of every image (irn step/make_cam.py).

Images are decoded in CPU tasks and fed to an actor pool holding the classifier (one GPU per
actor when ray.use_gpu); each batch of images is run at every ``cam.scales`` scale with its
mirrors, many images per forward pass (model.precision, channels-last), and the CAMs of each
image's present classes are stored at stride 4 as float16 (method/cam.py).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import pyarrow as pa
import ray

from ray_wsis.config import config_from_dict
from ray_wsis.pipeline.context import SplitRecords, StageContext
from ray_wsis.pipeline.decode_task import pixels
from ray_wsis.pipeline.faults import maybe_kill_actor
from ray_wsis.pipeline.schema import CAMS, ERROR_COLUMN, cam_row, describe_error, error_row, error_text, rows_to_table
from ray_wsis.pipeline.timings import actor_timings, with_timings
from ray_wsis.stages.base import StageRun
from ray_wsis.stages.images import actor_op, blocks, decode_op, run_images


class CamActor:
    """Actor: multi-scale CAMs of a batch of decoded images, many per forward pass (GPU when given)."""

    def __init__(self, config: dict[str, Any]) -> None:
        import torch

        from ray_wsis.method.predictors import CamPredictor, Inference, load_model

        self.config = config_from_dict(config)
        torch.set_num_threads(max(1, int(self.config.ray.cpus_per_actor)))
        model = load_model(self.config, "cam")
        self.predictor = CamPredictor(model, self.config.cam.scales, Inference.of(self.config))

    def __call__(self, batch: pa.Table) -> pa.Table:
        maybe_kill_actor("cam")
        start, before = time.perf_counter(), dataclasses.replace(self.predictor.stats)
        rows: list[dict[str, Any]] = []
        good = []
        for row in batch.to_pylist():
            if row.get(ERROR_COLUMN):
                base = {k: row.get(k) for k in ("uri", "height", "width", "labels")}
                rows.append(error_row(CAMS, row["image_id"], row[ERROR_COLUMN], **base))
            else:
                good.append(row)
        rows += self._cams(good)
        return with_timings(rows_to_table(rows, CAMS), actor_timings(self.predictor.stats, before, start), batch)

    def _cams(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """CAM rows of decoded rows: all in one call, each alone if that call fails (to name the image)."""
        try:
            cams = self.predictor.many([pixels(r) for r in rows], [r["labels"] for r in rows])
        except Exception:  # one image must not fail the batch: find it, record its reason
            if len(rows) == 1:
                return [self._failed(rows[0], sys.exc_info()[1])]
            return [out for r in rows for out in self._cams([r])]
        return [cam_row(r["image_id"], r["uri"], r["height"], r["width"], r["labels"], c) for r, c in zip(rows, cams)]

    @staticmethod
    def _failed(row: dict[str, Any], exc: BaseException | None) -> dict[str, Any]:
        base = {k: row.get(k) for k in ("uri", "height", "width", "labels")}
        return error_row(CAMS, row["image_id"], error_text("failed", describe_error(exc or RuntimeError())), **base)


def cam_records(ctx: StageContext) -> SplitRecords:
    """Every image a later stage needs CAMs of: train (relation labels) and infer (labels) splits."""
    d = ctx.config.dataset
    return ctx.splits(d.train_split, d.infer_split, *([d.calibration_split] if d.calibration_split else []))


def make_cams(run: StageRun) -> dict[str, Any]:
    ctx = run.ctx
    ctx.check_model("cam", "train-cam")
    records = cam_records(ctx)
    by_id = {r.image_id: r for r in records.records}

    def build(pending: list[str]) -> ray.data.Dataset:
        rows = [{"image_id": i, "uri": by_id[i].uri, "labels": list(by_id[i].class_ids)} for i in pending]
        ds = ray.data.from_items(rows, override_num_blocks=blocks(len(rows), ctx.config.ray.inference_batch_size))
        return actor_op(ctx, decode_op(ctx, ds), CamActor)

    return run_images(run, [(ctx.layout.cams, CAMS)], records, build, ctx.parquet_metadata("cam"))
