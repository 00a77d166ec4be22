"""The Ray Data stages: make-cams, make-ir-labels, make-pseudo-labels.

Each stage reads its inputs, drops the image_ids already committed by an earlier attempt,
decodes images in CPU tasks, runs the per-image work in tasks (CRF) or an actor pool
(models; one GPU per actor when ray.use_gpu), and writes through :class:`ShardSink`.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator, Optional

import pyarrow as pa
import ray

from ray_wsis.pipeline.context import SplitRecords, StageContext
from ray_wsis.pipeline.schema import CAMS, ERRORS, IR_LABELS, PSEUDO_LABELS
from ray_wsis.pipeline.reads import read_stage
from ray_wsis.pipeline.sink import ShardSink, committed_ids, read_table, write_split
from ray_wsis.pipeline.crf_task import decode_and_label
from ray_wsis.pipeline.decode_task import decode_images
from ray_wsis.pipeline.udfs import CamActor, PseudoLabelActor
from ray_wsis.storage import Location, delete_tree


def _record_driver_errors(ctx: StageContext, stage: str, records: SplitRecords, output: Location) -> None:
    rows = [(i, "failed", r) for i, r in records.failed] + [(i, "skipped", r) for i, r in records.skipped]
    if not rows:
        return
    table = pa.table({"image_id": [r[0] for r in rows], "stage": [stage] * len(rows),
                      "kind": [r[1] for r in rows], "reason": [r[2] for r in rows]}, schema=ERRORS)
    empty = pa.Table.from_pylist([], schema=CAMS)
    write_split(output, ctx.layout.errors(stage), empty, table.sort_by("image_id"), ctx.config.storage.retries)


def _summary(ctx: StageContext, stage: str, output: Location, total: int, resumed: int) -> dict[str, Any]:
    ids = committed_ids(output)
    if len(ids) != len(set(ids)):
        raise RuntimeError(f"[{stage}] duplicate image_ids in {output.uri}: the commit protocol was bypassed")
    errors = read_table(ctx.layout.errors(stage))
    kinds = errors.column("kind").to_pylist() if errors is not None else []
    summary = {"input": total, "processed": len(ids) - resumed, "resumed": resumed,
               "skipped": kinds.count("skipped"), "failed": kinds.count("failed")}
    accounted = summary["processed"] + summary["resumed"] + summary["skipped"] + summary["failed"]
    summary["unaccounted"] = total - accounted
    return summary


def _remote_args(ctx: StageContext) -> dict[str, Any]:
    r = ctx.config.ray
    return {"max_restarts": r.actor_max_restarts, "max_task_retries": r.actor_max_restarts}


def _actor_stage(ctx: StageContext, ds: "ray.data.Dataset", actor: type) -> "ray.data.Dataset":
    r = ctx.config.ray
    return ds.map_batches(actor, fn_constructor_kwargs={"config": ctx.config.to_dict()},
                          compute=ray.data.ActorPoolStrategy(size=r.inference_actors),
                          num_gpus=1 if r.use_gpu else 0, num_cpus=r.cpus_per_actor,
                          batch_size=r.inference_batch_size, batch_format="pyarrow", **_remote_args(ctx))


def _decode(ctx: StageContext, ds: "ray.data.Dataset") -> "ray.data.Dataset":
    return ds.map_batches(decode_images, fn_kwargs={"config": ctx.config.to_dict()}, batch_format="pyarrow",
                          batch_size=ctx.config.ray.inference_batch_size, num_cpus=1)


@contextlib.contextmanager
def _without_operator_reservation() -> Iterator[None]:
    """Let one operator use every free CPU while the block runs.

    Ray Data reserves a share of the CPUs for each operator; on a small Ray (2 CPUs here) that
    left the CRF operator of make-ir-labels one task at a time beside an idle write operator
    (Ray's timeline: 8 tasks in a row on one worker). Without it the CRF ran two-wide: 16 images
    in 9.3 s instead of 14.7 s (make-ir-labels run twice on one Ray, second run, 375x500, ResNet-50 CAMs).
    """
    context = ray.data.DataContext.get_current()
    before = context.op_resource_reservation_enabled
    context.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        context.op_resource_reservation_enabled = before


def _run_stage(ctx: StageContext, stage: str, output: Location, records: SplitRecords,
               build: Callable[[list[str]], Optional["ray.data.Dataset"]], schema: pa.Schema,
               metadata: dict[str, str], reserve_per_operator: bool = True) -> dict[str, Any]:
    """Shared skeleton: skip/force, resume by committed ids, write, count, mark done."""
    done = ctx.should_skip(stage)
    if done:
        return done["summary"]
    ctx.reset(stage, output, ctx.layout.errors(stage))
    start = time.perf_counter()
    delete_tree(ctx.layout.errors(stage))  # errors are re-recorded for every attempt
    committed = set(committed_ids(output))
    wanted = [r.image_id for r in records.records]
    pending = [i for i in wanted if i not in committed]
    resumed = len(wanted) - len(pending)
    if resumed:
        ctx.log(f"[{stage}] resuming: {resumed} images already committed, {len(pending)} to go")
    _record_driver_errors(ctx, stage, records, output)
    if pending:
        # a Dataset copies the DataContext when it is built, so the setting must wrap build() too
        with contextlib.nullcontext() if reserve_per_operator else _without_operator_reservation():
            ds = build(pending)
            if ds is not None:
                ds.write_datasink(ShardSink(output, ctx.layout.errors(stage), stage, schema,
                                            ctx.config.ray.rows_per_file, metadata, ctx.config.storage.retries))
    summary = _summary(ctx, stage, output, records.total, resumed)
    ctx.mark_done(stage, summary, time.perf_counter() - start)
    ctx.log(f"[{stage}] {summary}")
    return summary


def _blocks(n: int, batch_size: int) -> int:
    return max(1, min(200, math.ceil(n / max(1, batch_size))))


def make_cams(ctx: StageContext) -> dict[str, Any]:
    """Multi-scale CAMs for every image of the train and infer splits (irn make_cam)."""
    d = ctx.config.dataset
    if ctx.force or ctx.marker("make-cams") is None:
        ctx.check_model("cam", "train-cam")
    records = ctx.splits(d.train_split, d.infer_split)
    by_id = {r.image_id: r for r in records.records}

    def build(pending: list[str]) -> "ray.data.Dataset":
        rows = [{"image_id": i, "uri": by_id[i].uri, "labels": list(by_id[i].class_ids)} for i in pending]
        ds = ray.data.from_items(rows, override_num_blocks=_blocks(len(rows), ctx.config.ray.inference_batch_size))
        return _actor_stage(ctx, _decode(ctx, ds), CamActor)

    return _run_stage(ctx, "make-cams", ctx.layout.cams, records, build, CAMS, ctx.parquet_metadata("cam"))


def _from_previous(ctx: StageContext, stage: str, previous: Location, records: SplitRecords) -> SplitRecords:
    """Records whose previous-stage output exists; the others are failed with the reason."""
    available = set(committed_ids(previous))
    missing = [(r.image_id, "no output from the previous stage (see its errors)") for r in records.records
               if r.image_id not in available]
    kept = [r for r in records.records if r.image_id in available]
    return SplitRecords(kept, records.skipped, records.failed + missing)


def make_ir_labels(ctx: StageContext) -> dict[str, Any]:
    """Relation labels for the training images of IRNet (irn cam_to_ir_label), CPU tasks."""
    records = _from_previous(ctx, "make-ir-labels", ctx.layout.cams, ctx.split(ctx.config.dataset.train_split))

    def build(pending: list[str]) -> Optional["ray.data.Dataset"]:
        ds = read_stage(ctx.layout.cams, pending, ctx.config.ray.inference_batch_size)
        if ds is None:
            return None
        # Decode and CRF in one task, kept apart from the shard write by an explicit max_retries
        # (Ray's default, -1): with equal remote args Ray Data 2.58 fuses a MapBatches into a Write
        # that bundles rows_per_file rows, and the whole CRF stage then ran as one task on one CPU.
        return ds.map_batches(decode_and_label, fn_kwargs={"config": ctx.config.to_dict()}, batch_format="pyarrow",
                              batch_size=ctx.config.ray.inference_batch_size, num_cpus=1, max_retries=-1)

    return _run_stage(ctx, "make-ir-labels", ctx.layout.ir_labels, records, build, IR_LABELS,
                      ctx.parquet_metadata("cam"), reserve_per_operator=False)


def make_pseudo_labels(ctx: StageContext) -> dict[str, Any]:
    """Semantic and instance pseudo-labels of the infer split: the product."""
    records = _from_previous(ctx, "make-pseudo-labels", ctx.layout.cams, ctx.split(ctx.config.dataset.infer_split))

    def build(pending: list[str]) -> Optional["ray.data.Dataset"]:
        ds = read_stage(ctx.layout.cams, pending, ctx.config.ray.inference_batch_size)
        return None if ds is None else _actor_stage(ctx, _decode(ctx, ds), PseudoLabelActor)

    model = "irnet" if ctx.config.method == "irnet" else "affinitynet"
    if ctx.force or ctx.marker("make-pseudo-labels") is None:
        ctx.check_model(model, "train-irn")
    return _run_stage(ctx, "make-pseudo-labels", ctx.layout.pseudo_labels, records, build, PSEUDO_LABELS,
                      ctx.parquet_metadata("cam", model))
