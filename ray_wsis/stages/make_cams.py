"""make-cams: multi-scale CAMs of every image (irn step/make_cam.py).

Images are decoded in CPU tasks and fed to an actor pool holding the classifier (one GPU per
actor when ray.use_gpu); each image is run at every ``cam.scales`` scale and its mirror, and
the CAMs of its present classes are stored at stride 4 as float16 (method/cam.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import ray

from ray_wsis.config import Config, config_from_dict
from ray_wsis.pipeline.context import SplitRecords, StageContext
from ray_wsis.pipeline.decode_task import pixels
from ray_wsis.pipeline.faults import maybe_kill_actor
from ray_wsis.pipeline.layout import Layout
from ray_wsis.pipeline.schema import CAMS, ERROR_COLUMN, cam_row, describe_error, error_row, error_text, rows_to_table
from ray_wsis.stages.base import Stage, StageRun
from ray_wsis.stages.images import actor_op, blocks, decode_op, run_images
from ray_wsis.storage import Location


class CamActor:
    """Actor: multi-scale CAMs of each decoded image (one model per actor, GPU when given)."""

    def __init__(self, config: dict[str, Any]) -> None:
        import torch

        from ray_wsis.method.predictors import CamPredictor, device_for, load_model

        self.config = config_from_dict(config)
        torch.set_num_threads(max(1, int(self.config.ray.cpus_per_actor)))
        model = load_model(self.config, "cam")
        self.predictor = CamPredictor(model, self.config.cam.scales, device_for(self.config))

    def __call__(self, batch: pa.Table) -> pa.Table:
        maybe_kill_actor("cam")
        rows = []
        for row in batch.to_pylist():
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


def _outputs(layout: Layout, config: Config) -> tuple[Location, ...]:
    return layout.cams, layout.errors("make-cams")


def _inputs(ctx: StageContext) -> Sequence[str]:
    return [r.image_id for r in cam_records(ctx).records]


STAGE = Stage(
    name="make-cams",
    about="multi-scale CAMs of the train and infer images, stride 4, float16 (Ray Data actors; irn make_cam)",
    kind="images",
    reads=("cam.scales", "dataset.max_long_side"),
    consumes=("train-cam",),
    body=make_cams,
    outputs=_outputs,
    inputs=_inputs,
)
