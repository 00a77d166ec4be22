"""make-pseudo-labels: the walk and the instance assembly, the product (irn make_sem_seg_labels.py
and make_ins_seg_labels.py; psa infer_aff.py for AffinityNet).

Two operators after the image decode (method/predictors.py):
1. an actor pool holding IRNet (or AffinityNet), one GPU per actor when ray.use_gpu, runs the
   network on many images per forward pass and hands on its maps as float16 (boundaries and
   displacements at stride 4; AffinityNet's pair affinities at stride 8); on an accelerator
   (walk.runs_in) it also walks the CAMs there, many images per call, and hands on the walked maps;
2. CPU tasks walk the CAMs on those affinities (unless the actor did), cluster the displacements
   into instances, walk the instance CAMs and encode the walked maps.
It writes scores/ (the walked maps, the evidence); calibrate chooses the thresholds and
cut-labels cuts pseudo_labels/ from the scores.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Any, Optional

import pyarrow as pa
import ray

from ray_wsis.config import Config, config_from_dict
from ray_wsis.pipeline.context import StageContext, relation_net_stage
from ray_wsis.pipeline.decode_task import pixels
from ray_wsis.pipeline.faults import maybe_kill_actor
from ray_wsis.pipeline.reads import read_stage
from ray_wsis.pipeline.schema import (
    CAMS,
    ERROR_COLUMN,
    SCORES,
    cam_array,
    describe_error,
    error_row,
    error_text,
    rows_to_table,
    scores_row,
)
from ray_wsis.pipeline.timings import SECONDS, actor_timings, with_timings
from ray_wsis.stages.base import StageRun
from ray_wsis.stages.images import actor_op, decode_op, from_previous, run_images

NETWORK_MAPS = pa.schema(
    [SCORES.field(name) for name in ("image_id", "height", "width", "labels", "infer_height", "infer_width")]
    + [CAMS.field(name) for name in ("cam_height", "cam_width", "cam")]
    + [pa.field("maps_shape", pa.list_(pa.int32())), pa.field("maps", pa.binary()), pa.field("walked", pa.binary())]
)
"""What the model actor hands the walk operator: the CAM row, the inference size, the network's
float16 maps (IRNet: boundary, dy, dx at stride 4; AffinityNet: the pair affinities at stride 8)
and, where the actor walked the CAMs, the walked CAMs in float16 (the CAMs' shape; else null).
Never stored."""


def walks_in_actor(config: Config, device_type: str) -> bool:
    """Whether the model actor runs IRNet's semantic walk (walk.runs_in)."""
    where = config.walk.runs_in
    return config.method == "irnet" and (where == "actor" or (where == "auto" and device_type != "cpu"))


class NetworkActor:
    """Actor: IRNet's boundaries and displacements (or AffinityNet's affinities) of a batch of
    decoded images, many per forward pass; nothing but the network runs here."""

    def __init__(self, config: dict[str, Any]) -> None:
        import torch

        from ray_wsis.method.predictors import AffinityPredictor, Inference, IRNetPredictor, load_model

        self.config = config_from_dict(config)
        torch.set_num_threads(max(1, int(self.config.ray.cpus_per_actor)))
        inference = Inference.of(self.config)
        model = load_model(self.config, self.config.method)
        if self.config.method == "irnet":
            self.predictor: Any = IRNetPredictor(model, self.config.walk, inference)
        else:
            self.predictor = AffinityPredictor(model, self.config.affinity, inference=inference)
        self.walks = walks_in_actor(self.config, inference.device.type)
        self.walk_seconds = 0.0

    def __call__(self, batch: pa.Table) -> pa.Table:
        maybe_kill_actor("pseudo_labels")
        start, before = time.perf_counter(), dataclasses.replace(self.predictor.stats)
        rows: list[dict[str, Any]] = []
        good = []
        for row in batch.to_pylist():
            if row.get(ERROR_COLUMN):
                rows.append(error_row(NETWORK_MAPS, row["image_id"], row[ERROR_COLUMN], **_known(row)))
            else:
                good.append(row)
        walk_before = self.walk_seconds
        rows += self._maps(good)
        timings = actor_timings(self.predictor.stats, before, start)
        if self.walks:
            timings[f"{SECONDS}actor_walk"] = self.walk_seconds - walk_before
        return with_timings(rows_to_table(rows, NETWORK_MAPS), timings, batch)

    def _maps(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows with their network maps: all in one call, each alone if that call fails."""
        import numpy as np

        try:
            images = [pixels(r) for r in rows]
            walked: list[Any] = [None] * len(rows)
            if self.walks:  # the walk reads the maps where the network left them
                on_device = self.predictor.maps_on_device(images)
                start = time.perf_counter()
                walked = [
                    np.asarray(w, np.float16).tobytes()
                    for w in self.predictor.walked(on_device, [cam_array(r) for r in rows])
                ]
                self.walk_seconds += time.perf_counter() - start
                maps = [m.cpu().numpy() for m in on_device]
            else:
                maps = self.predictor.networks(images)
        except Exception as exc:  # one image must not fail the batch: find it, record its reason
            if len(rows) == 1:
                return [error_row(NETWORK_MAPS, rows[0]["image_id"], _failure(exc), **_known(rows[0]))]
            return [out for r in rows for out in self._maps([r])]
        return [
            {
                **_known(r),
                "image_id": r["image_id"],
                "infer_height": r["pixel_height"],
                "infer_width": r["pixel_width"],
                "cam_height": r["cam_height"],
                "cam_width": r["cam_width"],
                "cam": r["cam"],
                "maps_shape": list(m.shape),
                "maps": np.asarray(m, np.float16).tobytes(),
                "walked": w,
                ERROR_COLUMN: "",
            }
            for r, m, w in zip(rows, maps, walked)
        ]


def walk_task(batch: pa.Table, config: dict[str, Any]) -> pa.Table:
    """CPU operator after the model actors: the walk, the instance assembly and the scores'
    encoding of each image (method/predictors.py), in CPU tasks of their own."""
    import numpy as np

    from ray_wsis.method.predictors import affinity_scores, irnet_scores

    cfg = config_from_dict(config)
    lowest = min([*cfg.calibration.candidates, cfg.walk.sem_bg_threshold, cfg.walk.ins_bg_threshold])
    rows: list[dict[str, Any]] = []
    walk_seconds = encode_seconds = 0.0
    for row in batch.to_pylist():
        known = _known(row)
        if row.get(ERROR_COLUMN):
            rows.append(error_row(SCORES, row["image_id"], row[ERROR_COLUMN], **known))
            continue
        try:
            maps = np.frombuffer(row["maps"], np.float16).reshape(row["maps_shape"]).astype(np.float32)
            cams = cam_array(row)
            args = (cams, row["labels"], row["infer_height"], row["infer_width"])
            if cfg.method == "irnet":
                done = None
                if row.get("walked") is not None:  # the model actor walked the CAMs on its device
                    done = np.frombuffer(row["walked"], np.float16).reshape(cams.shape).astype(np.float32)
                walked = irnet_scores(maps, *args, cfg.walk, lowest, done)
            else:
                walked = affinity_scores(maps, *args, cfg.affinity)
            walk_seconds += walked.seconds.get("walk", 0.0) + walked.seconds.get("instance_walk", 0.0)
            encode_seconds += walked.seconds.get("encode", 0.0)
            rows.append(scores_row(row["image_id"], row["height"], row["width"], walked.scores))
        except Exception as exc:  # recorded per image
            rows.append(error_row(SCORES, row["image_id"], _failure(exc), **known))
    totals = {f"{SECONDS}walk": walk_seconds, f"{SECONDS}post": encode_seconds}
    return with_timings(rows_to_table(rows, SCORES), totals, batch)


def _known(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in ("height", "width", "labels")}


def _failure(exc: BaseException) -> str:
    return error_text("failed", describe_error(exc) + " | " + _last_frame(exc))


def _last_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""


def walk_op(ctx: StageContext, ds: ray.data.Dataset) -> ray.data.Dataset:
    """The walk operator: CPU tasks, one CPU each, so a GPU node's model actors never wait on it."""
    return ds.map_batches(
        walk_task,
        fn_kwargs={"config": ctx.config.to_dict()},
        batch_format="pyarrow",
        batch_size=ctx.config.ray.inference_batch_size,
        num_cpus=1,
    )


def label_records(ctx: StageContext):  # type: ignore[no-untyped-def]
    """The images to label: the infer split, plus the few-shot calibration images."""
    d = ctx.config.dataset
    return ctx.splits(d.infer_split, *([d.calibration_split] if d.calibration_split else []))


def make_pseudo_labels(run: StageRun) -> dict[str, Any]:
    ctx = run.ctx
    ctx.check_model(ctx.config.method, relation_net_stage(ctx.config.method))
    records = from_previous(ctx.layout.cams, label_records(ctx))

    def build(pending: list[str]) -> Optional[ray.data.Dataset]:
        ds = read_stage(ctx.layout.cams, pending, ctx.config.ray.inference_batch_size)
        return None if ds is None else walk_op(ctx, actor_op(ctx, decode_op(ctx, ds), NetworkActor))

    return run_images(
        run, [(ctx.layout.scores, SCORES)], records, build, ctx.parquet_metadata("cam", ctx.config.method)
    )
