"""evaluate: CAM, relation-label, semantic and instance quality -> metrics.json (irn eval_*.py).

Each CPU task scores a batch against the ground truth and returns confusion matrices and
instance match records (no masks), so the driver only sums small arrays. Besides the labels
as shipped, it sweeps every calibration candidate from the stored walk scores (cheap: no
network), so each run reports how far its calibrated thresholds are from the best ones the
ground truth would pick (``oracle``). Images of a few-shot ``dataset.calibration_split`` are
left out of the scores: their masks chose the thresholds. Free of torch, like every module
whose functions run as CPU tasks.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from ray_wsis.config import config_from_dict
from ray_wsis.data.decode import inference_size, resize_label
from ray_wsis.data.records import DatasetSource
from ray_wsis.eval.instance import ImageMatches, InstanceEvaluator, match_image
from ray_wsis.eval.semantic import SemanticEvaluator, cam_to_label, confusion_matrix, precision_of_ir_labels
from ray_wsis.masks import decode_label_png, decode_rle
from ray_wsis.method.scores import Thresholds, cut_labels
from ray_wsis.method.upsample import upsample_cams
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.progress import Progress
from ray_wsis.pipeline.schema import at_original_size, cam_array, walk_scores
from ray_wsis.stages.base import StageRun
from ray_wsis.stages.registry import scored_ids
from ray_wsis.stages.relation_labels import relation_labels_of
from ray_wsis.stages.thresholds import reference_thresholds, sweep, sweep_candidates
from ray_wsis.stages.whole import map_rows
from ray_wsis.storage import exists, read_bytes, write_bytes_atomic

CAM_SWEEP = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60)
"""Background thresholds of the CAM mIoU sweep (from-scratch CAMs need others than ImageNet ones)."""


# --------------------------------------------------------------------------- CPU tasks
def eval_cams(batch: pa.Table, config: dict[str, Any], source: DatasetSource, num_classes: int) -> pa.Table:
    """Confusion of the CAM label at cam.eval_threshold (first) and at every CAM_SWEEP threshold."""
    cfg = config_from_dict(config)
    thresholds = (cfg.cam.eval_threshold, *CAM_SWEEP)
    conf = np.zeros((len(thresholds), num_classes + 1, num_classes + 1), np.int64)
    images = 0
    for row in batch.to_pylist():
        gt = source.ground_truth(row["image_id"])
        if gt is None or gt.semantic is None:
            continue
        inference = inference_size(row["height"], row["width"], cfg.dataset.max_long_side)
        full = upsample_cams(cam_array(row), *inference)
        for k, threshold in enumerate(thresholds):
            label = cam_to_label(full, row["labels"], threshold)
            conf[k] += confusion_matrix(resize_label(label, *gt.semantic.shape), gt.semantic, num_classes + 1)
        images += 1
    return pa.table({"confusion": [conf.tobytes()], "images": [images]})


def eval_ir_labels(batch: pa.Table, source: DatasetSource) -> pa.Table:
    totals = np.zeros(3, np.int64)
    images = 0
    for row in batch.to_pylist():
        gt = source.ground_truth(row["image_id"])
        if gt is None or gt.semantic is None:
            continue
        stats = precision_of_ir_labels(resize_label(decode_label_png(row["ir_label"]), *gt.semantic.shape), gt.semantic)
        totals += (stats.correct, stats.labelled, stats.valid)
        images += 1
    return pa.table(
        {"correct": [int(totals[0])], "labelled": [int(totals[1])], "valid": [int(totals[2])], "images": [images]}
    )


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
        record = match_image(
            masks,
            [i["category_id"] for i in instances],
            [i["score"] for i in instances],
            gt.instance_masks,
            gt.instance_class_ids,
            num_classes=num_classes,
        )
        matches.append(record.as_dict())
    return pa.table({"confusion": [conf.tobytes()], "images": [images], "matches": [json.dumps(matches)]})


def eval_cut(
    batch: pa.Table,
    semantic: dict[str, Any],
    instance: dict[str, Any],
    source: DatasetSource,
    num_classes: int,
    min_fragment_fraction: float,
) -> pa.Table:
    """Like eval_pseudo_labels, for labels cut from the scores at other thresholds (the reference ones)."""
    sem, ins = Thresholds.from_dict(semantic), Thresholds.from_dict(instance)
    conf = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    evaluator = InstanceEvaluator(num_classes)
    images = 0
    for row in batch.to_pylist():
        gt = source.ground_truth(row["image_id"])
        if gt is None or gt.semantic is None:
            continue
        cut, found = cut_labels(walk_scores(row), sem, ins, min_fragment_fraction)
        label, _, masks = at_original_size(cut.label, cut.confidence, found.masks, *gt.semantic.shape)
        conf += confusion_matrix(label, gt.semantic, num_classes + 1)
        images += 1
        if gt.instance_masks is not None:
            evaluator.add_matches(
                match_image(
                    masks,
                    found.class_ids,
                    found.scores,
                    gt.instance_masks,
                    gt.instance_class_ids,
                    num_classes=num_classes,
                )
            )
    return pa.table(
        {"confusion": [conf.tobytes()], "images": [images], "matches": [json.dumps([evaluator.matches().as_dict()])]}
    )


# --------------------------------------------------------------------------- driver
def _confusion(rows: list[dict[str, Any]], n: int, index: int = 0) -> SemanticEvaluator:
    """Sum the index-th confusion matrix of every task's row."""
    evaluator = SemanticEvaluator(n)
    for row in rows:
        if row["images"]:
            matrices = np.frombuffer(row["confusion"], np.int64).reshape(-1, n, n)
            evaluator.add_confusion(matrices[index], images=int(row["images"]))
    return evaluator


def _sweep(ctx: StageContext, ids: list[str], progress: Progress) -> dict[str, dict[str, Optional[float]]]:
    """sem_miou_by_threshold and ins_map50_by_threshold over the sweep's candidates."""
    candidates = sweep_candidates(ctx.config)
    stats, _ = sweep(ctx, ids, candidates, progress)
    keys = [f"{t:.2f}" for t in candidates]
    clean = [None if not np.isfinite(v) else float(v) for v in stats.instance_map50()]
    return {
        "sem_miou_by_threshold": dict(zip(keys, map(float, stats.semantic_miou()))),
        "ins_map50_by_threshold": dict(zip(keys, clean)),
    }


def _best(curve: dict[str, Optional[float]]) -> Optional[dict[str, float]]:
    scored = {k: v for k, v in curve.items() if v is not None and np.isfinite(v)}
    if not scored:
        return None
    key = max(scored, key=lambda k: scored[k])
    return {"threshold": float(key), "value": scored[key]}


def evaluate(run: StageRun) -> dict[str, Any]:
    ctx = run.ctx
    split = ctx.config.dataset.eval_split or ctx.config.dataset.infer_split
    if not ctx.source.has_ground_truth(split):
        run.log(f"split {split!r} has no ground truth: nothing to evaluate")
        return {"evaluated": False}
    ids = scored_ids(ctx)
    n = ctx.num_classes
    source, config = ctx.source, ctx.config.to_dict()
    progress = Progress(run.stage.name, ctx.config.ray.progress_bars, ctx.log)
    cam_rows = map_rows(ctx.layout.cams, ids, eval_cams, progress, "CAMs", config=config, source=source, num_classes=n)
    relation = relation_labels_of(ctx.layout, ctx.config)
    ir_rows = map_rows(relation, ids, eval_ir_labels, progress, "relation labels", source=source)
    label_rows = map_rows(
        ctx.layout.pseudo_labels, ids, eval_pseudo_labels, progress, "pseudo-labels", source=source, num_classes=n
    )

    cams, semantic = _confusion(cam_rows, n + 1), _confusion(label_rows, n + 1)
    instances = InstanceEvaluator(n)
    for row in label_rows:
        for record in json.loads(row["matches"]):
            instances.add_matches(ImageMatches.from_dict(record))
    ir = np.sum([[r["correct"], r["labelled"], r["valid"]] for r in ir_rows], axis=0) if ir_rows else np.zeros(3)
    cam_result, sem_result, ins_result = cams.result(), semantic.result(), instances.result()
    cam_sweep = (
        {f"{t:.2f}": _confusion(cam_rows, n + 1, k + 1).result()["miou"] for k, t in enumerate(CAM_SWEEP)}
        if cam_rows
        else {}
    )
    walk = _sweep(ctx, ids, progress)
    sem_ref, ins_ref = reference_thresholds(ctx.config)
    ref_rows = map_rows(
        ctx.layout.scores,
        ids,
        eval_cut,
        progress,
        "reference cut",
        semantic=sem_ref.as_dict(),
        instance=ins_ref.as_dict(),
        source=source,
        num_classes=n,
        min_fragment_fraction=ctx.config.walk.min_fragment_fraction,
    )
    ref_instances = InstanceEvaluator(n)
    for row in ref_rows:
        for record in json.loads(row["matches"]):
            ref_instances.add_matches(ImageMatches.from_dict(record))
    calibrated = json.loads(read_bytes(ctx.layout.calibration)) if exists(ctx.layout.calibration) else None
    metrics: dict[str, Any] = {
        "cam_miou": cam_result["miou"],
        "cam_miou_by_threshold": cam_sweep,
        "ir_label_precision": float(100.0 * ir[0] / ir[1]) if ir[1] else None,
        "ir_label_coverage": float(100.0 * ir[1] / ir[2]) if ir[2] else None,
        "sem_miou": sem_result["miou"],
        "ins_map25": ins_result["map25"],
        "ins_map50": ins_result["map50"],
        "ins_map70": ins_result["map70"],
        "ins_map75": ins_result["map75"],
        **walk,
        "reference": {"semantic": sem_ref.as_dict(), "instance": ins_ref.as_dict()},
        "sem_miou_at_reference": _confusion(ref_rows, n + 1).result()["miou"] if ref_rows else None,
        "ins_map50_at_reference": ref_instances.result()["map50"] if ref_rows else None,
        "calibrated": None
        if calibrated is None
        else {
            "mode": calibrated["mode"],
            "semantic": calibrated["semantic"]["threshold"],
            "instance": calibrated["instance"]["threshold"],
            "images": calibrated["images"],
        },
        "oracle": {"semantic": _best(walk["sem_miou_by_threshold"]), "instance": _best(walk["ins_map50_by_threshold"])},
        "instances_follow_semantic": ctx.config.walk.instances_follow_semantic,
        "per_class": {
            "names": ["background", *source.class_names],
            "cam_iou": cam_result["iou"],
            "sem_iou": sem_result["iou"],
            "sem_precision": sem_result["precision"],
            "sem_recall": sem_result["recall"],
            "ins_ap50": ins_result["ap50"],
        },
        "images": {
            "split": split,
            "scored": len(ids),
            "cam": cam_result["images"],
            "ir_label": int(sum(r["images"] for r in ir_rows)),
            "semantic": sem_result["images"],
            "instance": ins_result["images"],
        },
    }
    write_bytes_atomic(ctx.layout.metrics, json.dumps(metrics, indent=2, allow_nan=False).encode())
    summary = {k: metrics[k] for k in ("cam_miou", "ir_label_precision", "sem_miou", "ins_map50")}
    run.log(", ".join(f"{k} {v:.1f}" for k, v in summary.items() if v is not None))
    return {**summary, "evaluated": True}
