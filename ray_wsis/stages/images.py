"""What the per-image (Ray Data) stages share: which ids to process, the write, the accounting.

A stage reads its inputs, drops the image_ids already committed, decodes images in CPU
tasks, runs the per-image work in tasks (CRF) or an actor pool (models; one GPU per actor
when ray.use_gpu), and writes through :class:`ShardSink`. Which ids it processes follows the
plan (stages/base.py): everything not yet committed (a first run, a redo, or the resume of an
interrupted one), only images new to the split, or only the images that failed before.

Errors: each attempt writes the failures it sees to errors/<stage>/; at the end the folder is
folded into one table with one row per image still failed or skipped, so a retried image
that now succeeds leaves it, and one that fails again is not counted twice.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import ray

from ray_wsis.pipeline.context import SplitRecords, StageContext
from ray_wsis.pipeline.decode_task import decode_images
from ray_wsis.pipeline.progress import images_progress
from ray_wsis.pipeline.schema import ERRORS
from ray_wsis.pipeline.sink import (
    Output,
    ShardSink,
    commit,
    committed_ids,
    drop_orphans,
    read_table,
    shard_names,
    shard_paths,
)
from ray_wsis.pipeline.timings import summarise
from ray_wsis.stages.base import StageRun, digest
from ray_wsis.storage import Location, delete_files


def blocks(n: int, batch_size: int) -> int:
    return max(1, min(200, math.ceil(n / max(1, batch_size))))


def actor_op(ctx: StageContext, ds: ray.data.Dataset, actor: type) -> ray.data.Dataset:
    """The model actor pool: one GPU per actor when ray.use_gpu, restarted on crashes; it
    receives ray.inference_batch_size rows a call, the most images one forward pass holds.

    A task on a dead actor waits for its restart (unbounded task retries; the restarts are
    bounded by ray.actor_max_restarts), so losing the node under an actor costs that actor's
    start-up elsewhere, not the stage (tests/test_cluster.py)."""
    r = ctx.config.ray
    extra = {"resources": {r.accelerator_resource: 1}} if r.accelerator_resource else {}
    return ds.map_batches(
        actor,
        fn_constructor_kwargs={"config": ctx.config.to_dict()},
        compute=ray.data.ActorPoolStrategy(size=r.inference_actors),
        num_gpus=1 if r.use_gpu else 0,
        num_cpus=r.cpus_per_actor,
        batch_size=r.inference_batch_size,
        batch_format="pyarrow",
        max_restarts=r.actor_max_restarts,
        max_task_retries=-1,
        **extra,
    )


def decode_op(ctx: StageContext, ds: ray.data.Dataset) -> ray.data.Dataset:
    return ds.map_batches(
        decode_images,
        fn_kwargs={"config": ctx.config.to_dict()},
        batch_format="pyarrow",
        batch_size=ctx.config.ray.inference_batch_size,
        num_cpus=1,
    )


@contextlib.contextmanager
def without_operator_reservation() -> Iterator[None]:
    """Let one operator use every free CPU while the block runs.

    Ray Data reserves a share of the CPUs for each operator; on a small Ray (2 CPUs) that
    left the CRF operator of make-ir-labels one task at a time beside an idle write operator
    (docs/performance.md). A Dataset copies the DataContext when it is built, so this must
    wrap the building of the dataset too.
    """
    context = ray.data.DataContext.get_current()
    before = context.op_resource_reservation_enabled
    context.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        context.op_resource_reservation_enabled = before


def error_rows(stage: str, entries: list[tuple[str, str, str]]) -> pa.Table:
    """(image_id, kind, reason) entries as a table of the errors schema, sorted by id."""
    table = pa.table(
        {
            "image_id": [e[0] for e in entries],
            "stage": [stage] * len(entries),
            "kind": [e[1] for e in entries],
            "reason": [e[2] for e in entries],
        },
        schema=ERRORS,
    )
    return table.sort_by("image_id")


def failed_ids(errors: Location) -> set[str]:
    table = read_table(errors, ["image_id", "kind"])
    if table is None:
        return set()
    return set(table.filter(pc.equal(table.column("kind"), "failed")).column("image_id").to_pylist())


def fold_errors(errors: Location, stage: str, keep: Callable[[str], bool], retries: int) -> pa.Table:
    """Rewrite errors/<stage>/ as one table: the last row of each image for which keep(id) holds."""
    paths = shard_paths(errors)
    table = read_table(errors)
    if table is None:
        return error_rows(stage, [])
    last: dict[str, tuple[str, str, str]] = {}
    for row in table.to_pylist():  # shards list in name order; a later attempt's row replaces an earlier one
        last[row["image_id"]] = (row["image_id"], row["kind"], row["reason"])
    folded = error_rows(stage, [entry for image_id, entry in last.items() if keep(image_id)])
    kept_path = commit(errors, folded, retries) if folded.num_rows else ""
    delete_files(errors, [p for p in paths if p != kept_path])
    return folded


def from_previous(previous: Location, records: SplitRecords) -> SplitRecords:
    """Records whose previous-stage output exists; the others are failed with the reason."""
    available = set(committed_ids(previous))
    missing = [
        (r.image_id, "no output from the previous stage (see its errors)")
        for r in records.records
        if r.image_id not in available
    ]
    kept = [r for r in records.records if r.image_id in available]
    return SplitRecords(kept, records.skipped, records.failed + missing)


def run_images(
    run: StageRun,
    outputs: list[Output],
    records: SplitRecords,
    build: Callable[[list[str]], Optional[ray.data.Dataset]],
    metadata: dict[str, str],
    reserve_per_operator: bool = True,
) -> dict[str, Any]:
    """Process the ids the plan calls for, write them exactly once, account for every image.

    ``outputs``: the tables written from the stage's rows, the commit table last (ShardSink).
    """
    ctx, stage = run.ctx, run.stage.name
    commit_table, errors = outputs[-1][0], ctx.layout.errors(stage)
    retries = ctx.config.storage.retries
    drop_orphans(commit_table, [location for location, _ in outputs[:-1]])
    committed = set(committed_ids(commit_table))
    failed_before = failed_ids(errors)
    wanted = [r.image_id for r in records.records]
    if run.plan.action == "retry":
        pending = [i for i in wanted if i in failed_before and i not in committed]
    elif run.plan.action == "new":
        pending = [i for i in wanted if i not in committed and i not in failed_before]
    else:
        pending = [i for i in wanted if i not in committed]
    kept = sum(1 for i in wanted if i in committed)
    driver_errors = [(i, "failed", r) for i, r in records.failed] + [(i, "skipped", r) for i, r in records.skipped]
    if driver_errors:
        commit(errors, error_rows(stage, driver_errors), retries)
    if kept:
        run.log(f"{kept} images already committed, {len(pending)} to process")
    sink = ShardSink(outputs, errors, stage, ctx.config.ray.rows_per_file, metadata, retries)
    if pending:
        showing = images_progress(stage, len(pending), ctx.config.ray.progress_bars, ctx.log)
        with contextlib.nullcontext() if reserve_per_operator else without_operator_reservation(), showing as counted:
            ds = build(pending)
            if ds is not None:
                counted(ds).write_datasink(sink)
    ids = committed_ids(commit_table)
    done = set(ids)
    if len(done) != len(ids):
        raise RuntimeError(f"[{stage}] duplicate image_ids in {commit_table.uri}: the commit protocol was bypassed")
    now_failed = {i for i, _ in records.failed}
    now_skipped = {i for i, _ in records.skipped}
    in_split = set(wanted) | now_failed | now_skipped
    folded = fold_errors(errors, stage, lambda i: i in in_split and i not in done, retries)
    kinds = dict(zip(folded.column("image_id").to_pylist(), folded.column("kind").to_pylist()))
    in_output = sum(1 for i in wanted if i in done)
    summary: dict[str, Any] = {
        "input": records.total,
        "processed": in_output - kept,
        "kept": kept,
        "skipped": sum(1 for k in kinds.values() if k == "skipped"),
        "failed": sum(1 for k in kinds.values() if k == "failed"),
    }
    summary["unaccounted"] = summary["input"] - in_output - summary["skipped"] - summary["failed"]
    if sink.timings:
        summary["timing"] = summarise(sink.timings, len(pending))
    summary["content"] = digest(shard_names(commit_table))
    run.log(f"{summary['processed']} processed, {kept} kept, {summary['skipped']} skipped, {summary['failed']} failed")
    return summary
