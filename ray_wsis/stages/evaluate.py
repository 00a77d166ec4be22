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
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from ray_wsis.config import Config, config_from_dict
from ray_wsis.data.decode import inference_size, resize_label
from ray_wsis.data.records import DatasetSource
from ray_wsis.eval.instance import ImageMatches, InstanceEvaluator, match_image
from ray_wsis.eval.semantic import SemanticEvaluator, cam_to_label, confusion_matrix, precision_of_ir_labels
from ray_wsis.masks import decode_label_png, decode_rle
from ray_wsis.method.calibration import FewShotStats, ImageCut
from ray_wsis.method.scores import WALKED_BACKGROUND, Thresholds, cut_labels
from ray_wsis.method.upsample import upsample_cams
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.layout import Layout
from ray_wsis.pipeline.reads import READ_BLOCK_ROWS, read_stage
from ray_wsis.pipeline.schema import at_original_size, cam_array, walk_scores
from ray_wsis.stages.base import Stage, StageRun
from ray_wsis.storage import Location, exists, read_bytes, write_bytes_atomic

CAM_SWEEP = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60)
"""Background thresholds of the CAM mIoU sweep (from-scratch CAMs need others than ImageNet ones)."""


# --------------------------------------------------------------------------- CPU tasks
def _fit(label: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return resize_label(label, *shape)


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
            conf[k] += confusion_matrix(_fit(label, gt.semantic.shape), gt.semantic, num_classes + 1)
        images += 1
    return pa.table({"confusion": [conf.tobytes()], "images": [images]})


def eval_ir_labels(batch: pa.Table, source: DatasetSource) -> pa.Table:
    totals = np.zeros(3, np.int64)
    images = 0
    for row in batch.to_pylist():
        gt = source.ground_truth(row["image_id"])
        if gt is None or gt.semantic is None:
            continue
        stats = precision_of_ir_labels(_fit(decode_label_png(row["ir_label"]), gt.semantic.shape), gt.semantic)
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


def relation_labels_of(layout: Layout, config: Config) -> Location:
    """The relation labels the run trained on: IRN's, or psa's for AffinityNet (affinity.labels)."""
    psa = config.method == "affinitynet" and config.affinity.labels == "psa"
    return layout.affinity_labels if psa else layout.ir_labels


def reference_thresholds(config: Config) -> tuple[Thresholds, Thresholds]:
    """The cut the reference code ships: irn's constant 0.25 planes, or psa's walked background."""
    if config.method == "affinitynet":
        return WALKED_BACKGROUND, WALKED_BACKGROUND
    return Thresholds(config.walk.sem_bg_threshold), Thresholds(config.walk.ins_bg_threshold)


def eval_sweep(
    batch: pa.Table, candidates: list[float], source: DatasetSource, num_classes: int, min_fragment_fraction: float
) -> pa.Table:
    """Semantic confusions and instance matches at every candidate threshold, from the scores of
    the batch's images with ground truth (evaluate's sweeps; calibrate's few-shot fit)."""
    stats = FewShotStats.empty(candidates, num_classes)
    images = 0
    for row in batch.to_pylist():
        gt = source.ground_truth(row["image_id"])
        if gt is not None and gt.semantic is not None:
            stats.add(ImageCut.of(walk_scores(row)), gt, candidates, min_fragment_fraction, num_classes)
            images += 1
    matches = [e.matches().as_dict() for e in stats.evaluators]
    return pa.table({"confusions": [stats.confusions.tobytes()], "matches": [json.dumps(matches)], "images": [images]})


def sweep(ctx: StageContext, ids: list[str], candidates: list[float]) -> tuple[FewShotStats, int]:
    """eval_sweep over ``ids``, summed: the statistics and how many images had ground truth."""
    n = ctx.num_classes
    stats = FewShotStats.empty(candidates, n)
    images = 0
    for row in _rows(
        ctx.layout.scores,
        ids,
        eval_sweep,
        candidates=candidates,
        source=ctx.source,
        num_classes=n,
        min_fragment_fraction=ctx.config.walk.min_fragment_fraction,
    ):
        stats.confusions += np.frombuffer(row["confusions"], np.int64).reshape(stats.confusions.shape)
        for evaluator, record in zip(stats.evaluators, json.loads(row["matches"])):
            evaluator.add_matches(ImageMatches.from_dict(record))
        images += int(row["images"])
    return stats, images


# --------------------------------------------------------------------------- driver
def _rows(location: Location, ids: list[str], fn: Any, **kwargs: Any) -> list[dict[str, Any]]:
    ds = read_stage(location, ids, READ_BLOCK_ROWS)
    if ds is None:
        return []
    return ds.map_batches(fn, fn_kwargs=kwargs, batch_format="pyarrow", batch_size=32, num_cpus=1).take_all()


def _confusion(rows: list[dict[str, Any]], n: int, index: int = 0) -> SemanticEvaluator:
    """Sum the index-th confusion matrix of every task's row."""
    evaluator = SemanticEvaluator(n)
    for row in rows:
        if row["images"]:
            matrices = np.frombuffer(row["confusion"], np.int64).reshape(-1, n, n)
            evaluator.add_confusion(matrices[index], images=int(row["images"]))
    return evaluator


def _sweep(ctx: StageContext, ids: list[str]) -> dict[str, dict[str, Optional[float]]]:
    """sem_miou_by_threshold and ins_map50_by_threshold over the calibration candidates."""
    candidates = [float(t) for t in ctx.config.calibration.candidates]
    stats, _ = sweep(ctx, ids, candidates)
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


def scored_ids(ctx: StageContext) -> list[str]:
    """The eval split, less the few-shot calibration images (their masks chose the thresholds)."""
    d = ctx.config.dataset
    held = set()
    if d.calibration_split and ctx.config.calibration.enabled:
        held = {r.image_id for r in ctx.split(d.calibration_split).records}
    return [r.image_id for r in ctx.split(d.eval_split or d.infer_split).records if r.image_id not in held]


def evaluate(run: StageRun) -> dict[str, Any]:
    ctx = run.ctx
    split = ctx.config.dataset.eval_split or ctx.config.dataset.infer_split
    if not ctx.source.has_ground_truth(split):
        run.log(f"split {split!r} has no ground truth: nothing to evaluate")
        return {"evaluated": False}
    ids = scored_ids(ctx)
    n = ctx.num_classes
    source, config = ctx.source, ctx.config.to_dict()
    cam_rows = _rows(ctx.layout.cams, ids, eval_cams, config=config, source=source, num_classes=n)
    ir_rows = _rows(relation_labels_of(ctx.layout, ctx.config), ids, eval_ir_labels, source=source)
    label_rows = _rows(ctx.layout.pseudo_labels, ids, eval_pseudo_labels, source=source, num_classes=n)

    cams, semantic = _confusion(cam_rows, n + 1), _confusion(label_rows, n + 1)
    instances = InstanceEvaluator(n)
    for row in label_rows:
        for record in json.loads(row["matches"]):
            instances.add_matches(ImageMatches.from_dict(record))
    ir = np.sum([[r["correct"], r["labelled"], r["valid"]] for r in ir_rows], axis=0) if ir_rows else np.zeros(3)
    cam_result, sem_result, ins_result = cams.result(), semantic.result(), instances.result()
    sweep = (
        {f"{t:.2f}": _confusion(cam_rows, n + 1, k + 1).result()["miou"] for k, t in enumerate(CAM_SWEEP)}
        if cam_rows
        else {}
    )
    walk = _sweep(ctx, ids)
    sem_ref, ins_ref = reference_thresholds(ctx.config)
    ref_rows = _rows(
        ctx.layout.scores,
        ids,
        eval_cut,
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
        "cam_miou_by_threshold": sweep,
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
        "per_class": {
            "names": ["background", *source.class_names],
            "cam_iou": cam_result["iou"],
            "sem_iou": sem_result["iou"],
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


def metrics_table(metrics: dict[str, Any]) -> str:
    """The one-screen table `run` and `demo` end with: shipped labels beside the threshold sweep."""

    def show(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:6.1f}"

    lines = [f"{'':<28}{'mIoU':>8}{'mAP50':>8}"]
    lines.append(f"{'CAM (cam.eval_threshold)':<28}{show(metrics.get('cam_miou')):>8}{'':>8}")
    sem_ref, ins_ref = metrics.get("sem_miou_at_reference"), metrics.get("ins_map50_at_reference")
    reference = (metrics.get("reference") or {}).get("semantic", {})
    name = (
        "walk, psa's background"
        if reference.get("plane") == "walked"
        else f"walk at {reference.get('default', 0.25):.2f} (reference)"
    )
    lines.append(f"{name:<28}{show(sem_ref):>8}{show(ins_ref):>8}")
    calibrated = metrics.get("calibrated")
    label = f"walk calibrated ({calibrated['mode']})" if calibrated else "walk as shipped"
    lines.append(f"{label:<28}{show(metrics.get('sem_miou')):>8}{show(metrics.get('ins_map50')):>8}")
    oracle = metrics.get("oracle") or {}
    sem_o, ins_o = oracle.get("semantic"), oracle.get("instance")
    lines.append(
        f"{'oracle (best with masks)':<28}{show(sem_o and sem_o['value']):>8}{show(ins_o and ins_o['value']):>8}"
    )
    if calibrated:
        lines.append(
            f"thresholds: calibrated semantic {calibrated['semantic']['default']:.2f} / instance "
            f"{calibrated['instance']['default']:.2f}; oracle "
            f"{sem_o['threshold'] if sem_o else '-'} / {ins_o['threshold'] if ins_o else '-'}"
        )
    lines.append(
        f"relation labels: {show(metrics.get('ir_label_precision')).strip()}% precise, "
        f"{show(metrics.get('ir_label_coverage')).strip()}% of pixels labelled"
    )
    return "\n".join(lines)


def _outputs(layout: Layout, config: Config) -> tuple[Location, ...]:
    return (layout.metrics,)


def _inputs(ctx: StageContext) -> Sequence[str]:
    return scored_ids(ctx)


STAGE = Stage(
    name="evaluate",
    about="CAM / relation-label / semantic mIoU, instance AP, threshold sweeps -> metrics.json (CPU tasks)",
    kind="whole",
    reads=("dataset.eval_split", "dataset.segmentation_class_dir", "cam.eval_threshold"),
    consumes=("make-cams", "make-ir-labels", "cut-labels"),
    body=evaluate,
    outputs=_outputs,
    inputs=_inputs,
)
