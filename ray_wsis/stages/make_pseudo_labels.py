"""make-pseudo-labels: the walk and the instance assembly, the product (irn make_sem_seg_labels.py
and make_ins_seg_labels.py; psa infer_aff.py for AffinityNet).

An actor pool holds IRNet (or AffinityNet): per image it predicts boundaries and
displacements, walks the CAMs on the boundary affinities, clusters displacements into
instances and walks the instance CAMs (method/predictors.py). It writes two tables with the
same shard names: scores/ (the walked maps, the evidence) and pseudo_labels/ (the labels cut
from those maps at walk.sem_bg_threshold / walk.ins_bg_threshold; calibrate re-cuts them).
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Sequence
from typing import Any, Optional

import pyarrow as pa
import ray

from ray_wsis.config import Config, config_from_dict
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.decode_task import pixels
from ray_wsis.pipeline.faults import maybe_kill_actor
from ray_wsis.pipeline.layout import Layout
from ray_wsis.pipeline.reads import read_stage
from ray_wsis.pipeline.schema import (
    ERROR_COLUMN,
    PSEUDO_LABELS,
    SCORES,
    THRESHOLDS_KEY,
    WALK_OUTPUT,
    at_original_size,
    cam_array,
    describe_error,
    error_row,
    error_text,
    pseudo_label_row,
    rows_to_table,
    scores_row,
    thresholds_metadata,
)
from ray_wsis.stages.base import Stage, StageRun
from ray_wsis.stages.evaluate import reference_thresholds
from ray_wsis.stages.images import actor_op, decode_op, from_previous, run_images
from ray_wsis.storage import Location


class PseudoLabelActor:
    """Actor: IRNet (or AffinityNet) + sparse random walk + instance assembly per image."""

    def __init__(self, config: dict[str, Any]) -> None:
        import torch

        from ray_wsis.method.predictors import AffinityPredictor, IRNetPredictor, device_for, load_model

        self.config = config_from_dict(config)
        torch.set_num_threads(max(1, int(self.config.ray.cpus_per_actor)))
        device = device_for(self.config)
        lowest = min(self.config.calibration.candidates)
        model = load_model(self.config, self.config.method)
        if self.config.method == "irnet":
            self.predictor: Any = IRNetPredictor(model, self.config.walk, device, lowest_threshold=lowest)
        else:
            self.predictor = AffinityPredictor(
                model, self.config.affinity, self.config.walk.min_fragment_fraction, device
            )

    def __call__(self, batch: pa.Table) -> pa.Table:
        maybe_kill_actor("pseudo_labels")
        rows = []
        for row in batch.to_pylist():
            known = {k: row.get(k) for k in ("height", "width", "labels")}
            if row.get(ERROR_COLUMN):
                rows.append(error_row(WALK_OUTPUT, row["image_id"], row[ERROR_COLUMN], **known))
                continue
            try:
                result = self.predictor(pixels(row), cam_array(row), row["labels"])
                if result.scores is None or result.confidence is None:
                    raise RuntimeError(f"the {self.config.method} predictor kept no walk scores")
                h, w = row["height"], row["width"]
                rows.append(
                    pseudo_label_row(
                        row["image_id"],
                        h,
                        w,
                        row["labels"],
                        *at_original_size(result.semantic, result.confidence, result.instances.masks, h, w),
                        result.instances.class_ids,
                        result.instances.scores,
                    )
                    | scores_row(row["image_id"], h, w, result.scores)
                )
            except Exception as exc:  # recorded per image
                rows.append(
                    error_row(
                        WALK_OUTPUT,
                        row["image_id"],
                        error_text("failed", describe_error(exc) + " | " + _last_frame(exc)),
                        **known,
                    )
                )
        return rows_to_table(rows, WALK_OUTPUT)


def _last_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""


def label_records(ctx: StageContext):  # type: ignore[no-untyped-def]
    """The images to label: the infer split, plus the few-shot calibration images."""
    d = ctx.config.dataset
    return ctx.splits(d.infer_split, *([d.calibration_split] if d.calibration_split else []))


def make_pseudo_labels(run: StageRun) -> dict[str, Any]:
    ctx = run.ctx
    ctx.check_model(ctx.config.method, "train-irn")
    records = from_previous(ctx.layout.cams, label_records(ctx))

    def build(pending: list[str]) -> Optional[ray.data.Dataset]:
        ds = read_stage(ctx.layout.cams, pending, ctx.config.ray.inference_batch_size)
        return None if ds is None else actor_op(ctx, decode_op(ctx, ds), PseudoLabelActor)

    metadata = ctx.parquet_metadata("cam", ctx.config.method) | {
        THRESHOLDS_KEY: thresholds_metadata(*reference_thresholds(ctx.config), "config")
    }
    return run_images(
        run, [(ctx.layout.scores, SCORES), (ctx.layout.pseudo_labels, PSEUDO_LABELS)], records, build, metadata
    )


def _outputs(layout: Layout, config: Config) -> tuple[Location, ...]:
    return layout.scores, layout.pseudo_labels, layout.errors("make-pseudo-labels")


def _inputs(ctx: StageContext) -> Sequence[str]:
    return [r.image_id for r in label_records(ctx).records]


STAGE = Stage(
    name="make-pseudo-labels",
    about="boundaries -> random walk -> semantic labels; displacements -> instances (irn make_*_seg_labels)",
    kind="images",
    reads=(
        "method",
        "walk.radius",
        "walk.beta",
        "walk.exp_times",
        "walk.centroid_iterations",
        "walk.cluster_threshold",
        "walk.flip",
        "calibration.candidates",
    ),
    consumes=("make-cams", "train-irn"),
    body=make_pseudo_labels,
    outputs=_outputs,
    inputs=_inputs,
)

AFFINITY_STAGE = dataclasses.replace(
    STAGE,
    about="feature affinities -> random walk with psa's background channel; instances are connected regions "
    "(Ray Data actors; psa infer_aff)",
    reads=(
        "method",
        "affinity.radius",
        "affinity.beta",
        "affinity.exp_times",
        "affinity.bg_alpha",
        "calibration.candidates",
    ),
)
"""The same stage for ``method: affinitynet``."""
