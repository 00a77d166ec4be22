"""The evaluate stage: CAM, relation-label, semantic and instance quality -> metrics.json.

Each map task evaluates a batch against ground truth and returns a confusion matrix and
instance match records (no masks), so the driver only sums small arrays.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

import numpy as np

from ray_wsis.eval.instance import ImageMatches, InstanceEvaluator
from ray_wsis.eval.semantic import SemanticEvaluator
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.reads import READ_BLOCK_ROWS, read_stage
from ray_wsis.pipeline.layout import STAGES
from ray_wsis.pipeline.eval_tasks import CAM_SWEEP, eval_cams, eval_ir_labels, eval_pseudo_labels
from ray_wsis.storage import Location, write_bytes_atomic


def _collect(ds: Any) -> list[dict[str, Any]]:
    return [] if ds is None else ds.take_all()


def _confusion(rows: list[dict[str, Any]], n: int, index: int = 0) -> SemanticEvaluator:
    """Sum the index-th confusion matrix of every task's row."""
    evaluator = SemanticEvaluator(n)
    for row in rows:
        if row["images"]:
            matrices = np.frombuffer(row["confusion"], np.int64).reshape(-1, n, n)
            evaluator.add_confusion(matrices[index], images=int(row["images"]))
    return evaluator


def _stage_rows(ctx: StageContext, location: Location, ids: list[str], fn: Any, **kwargs: Any) -> list[dict[str, Any]]:
    ds = read_stage(location, ids, READ_BLOCK_ROWS)
    if ds is None:
        return []
    return _collect(ds.map_batches(fn, fn_kwargs=kwargs, batch_format="pyarrow", batch_size=32, num_cpus=1))


def evaluate(ctx: StageContext) -> Optional[dict[str, Any]]:
    stage = "evaluate"
    done = ctx.should_skip(stage)
    if done:
        return done["summary"]
    split = ctx.config.dataset.eval_split or ctx.config.dataset.infer_split
    if not ctx.source.has_ground_truth(split):
        ctx.log(f"[{stage}] split {split!r} has no ground truth: nothing to evaluate")
        return None
    start = time.perf_counter()
    ids = [r.image_id for r in ctx.split(split).records]
    n = ctx.num_classes
    source, config = ctx.source, ctx.config.to_dict()
    cam_rows = _stage_rows(ctx, ctx.layout.cams, ids, eval_cams, config=config, source=source, num_classes=n)
    ir_rows = _stage_rows(ctx, ctx.layout.ir_labels, ids, eval_ir_labels, source=source)
    label_rows = _stage_rows(ctx, ctx.layout.pseudo_labels, ids, eval_pseudo_labels, source=source, num_classes=n)

    cams, semantic = _confusion(cam_rows, n + 1), _confusion(label_rows, n + 1)
    instances = InstanceEvaluator(n)
    for row in label_rows:
        for record in json.loads(row["matches"]):
            instances.add_matches(ImageMatches.from_dict(record))
    ir = np.sum([[r["correct"], r["labelled"], r["valid"]] for r in ir_rows], axis=0) if ir_rows else np.zeros(3)

    cam_result, sem_result, ins_result = cams.result(), semantic.result(), instances.result()
    sweep = {f"{t:.2f}": _confusion(cam_rows, n + 1, k + 1).result()["miou"] for k, t in enumerate(CAM_SWEEP)} \
        if cam_rows else {}
    metrics: dict[str, Any] = {
        "cam_miou": cam_result["miou"],
        "cam_miou_by_threshold": sweep,
        "ir_label_precision": float(100.0 * ir[0] / ir[1]) if ir[1] else None,
        "ir_label_coverage": float(100.0 * ir[1] / ir[2]) if ir[2] else None,
        "sem_miou": sem_result["miou"],
        "ins_map25": ins_result["map25"], "ins_map50": ins_result["map50"],
        "ins_map70": ins_result["map70"], "ins_map75": ins_result["map75"],
        "per_class": {"names": ["background", *source.class_names], "cam_iou": cam_result["iou"],
                      "sem_iou": sem_result["iou"], "ins_ap50": ins_result["ap50"]},
        "images": {"split": split, "cam": cam_result["images"], "ir_label": int(sum(r["images"] for r in ir_rows)),
                   "semantic": sem_result["images"], "instance": ins_result["images"]},
        "seconds_per_stage": {},
    }
    for name in STAGES:
        marker = ctx.marker(name)
        if marker:
            metrics["seconds_per_stage"][name] = marker["seconds"]
    metrics["seconds_per_stage"][stage] = round(time.perf_counter() - start, 2)
    write_bytes_atomic(ctx.layout.metrics, json.dumps(metrics, indent=2, allow_nan=False).encode())
    summary = {k: metrics[k] for k in ("cam_miou", "ir_label_precision", "sem_miou", "ins_map50")}
    ctx.mark_done(stage, summary, time.perf_counter() - start)
    ctx.log(f"[{stage}] {summary}")
    return metrics


def metrics_table(metrics: dict[str, Any]) -> str:
    """The one-screen table `run` and `demo` end with."""
    lines = ["metric                 value"]
    for key in ("cam_miou", "ir_label_precision", "ir_label_coverage", "sem_miou", "ins_map25", "ins_map50",
                "ins_map70", "ins_map75"):
        value = metrics.get(key)
        lines.append(f"{key:<22} {'-' if value is None else f'{value:6.2f}'}")
    return "\n".join(lines)

