"""calibrate: choose the walk's background thresholds for this data.

irn fixes both thresholds at 0.25, fitted to ImageNet CAMs; the best ones move with the data,
the backbone and the training. This stage chooses them from the walk's stored scores
(method/calibration.py: label-free by default, fitted to ``dataset.calibration_split``'s
masks when one is given) and records them, with the criterion at every candidate, in
<output>/calibration.json (the configured thresholds when calibration is off). It writes no
labels: cut-labels cuts them at the recorded thresholds. No network runs: CPU tasks only.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_wsis.config import config_from_dict
from ray_wsis.data.records import DatasetError
from ray_wsis.method.calibration import (
    NOTHING_OPEN,
    WITHOUT_RELATION_LABELS,
    ImageCut,
    LabelFreeStats,
    RelationStats,
    agreement_confusions,
    chances_above,
    choose_by_expected_iou,
    choose_by_majority,
    choose_by_steepness,
    choose_few_shot,
    choose_instance,
    choose_semantic,
    expected_ious,
    relation_confusions,
    without_relation_labels,
)
from ray_wsis.method.scores import Thresholds
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.layout import Layout
from ray_wsis.pipeline.progress import QUIET, Progress
from ray_wsis.pipeline.schema import walk_scores
from ray_wsis.pipeline.sink import committed_ids, shard_paths
from ray_wsis.stages.base import StageRun, digest
from ray_wsis.stages.relation_labels import (
    kept_from,
    kept_relation_labels,
    read_relation_labels,
    relation_labels_of,
)
from ray_wsis.stages.thresholds import reference_thresholds, sweep, sweep_candidates
from ray_wsis.stages.whole import map_rows, map_shards
from ray_wsis.storage import write_bytes_atomic


# --------------------------------------------------------------------------- CPU tasks
def label_free_task(batch: pa.Table, candidates: list[float]) -> pa.Table:
    """The batch's LabelFreeStats: Otsu's ratio and the instance contour steepness, summed."""
    stats = LabelFreeStats.empty(candidates)
    for row in batch.to_pylist():
        stats.add(ImageCut.of(walk_scores(row)), candidates)
    return pa.Table.from_pylist([stats.as_row()])


def agreement_task(
    batch: pa.Table,
    semantic_threshold: float,
    candidates: list[float],
    num_classes: int,
    kept: Optional[dict[str, Any]] = None,
) -> pa.Table:
    """Confusions of the united instances against the semantic labels, at every candidate; with
    ``kept`` (relation_labels.kept_from) against the semantic labels as shipped, relation labels kept."""
    rows = batch.to_pylist()
    relation = kept_relation_labels(kept, [r["image_id"] for r in rows])
    total = np.zeros((len(candidates), num_classes + 1, num_classes + 1), np.int64)
    for row in rows:
        cut = ImageCut.of(walk_scores(row), relation.get(row["image_id"]))
        total += agreement_confusions(cut, semantic_threshold, candidates, num_classes + 1)
    return pa.table({"confusions": [total.tobytes()]})


def _shard_cuts(layout: Layout, path: str) -> list[tuple[str, ImageCut]]:
    rows = pq.read_table(path, filesystem=layout.scores.fs).to_pylist()
    return [(r["image_id"], ImageCut.of(walk_scores(r))) for r in rows]


def relation_task(batch: pa.Table, config: dict[str, Any], semantic: bool = False) -> pa.Table:
    """Per scores shard: relation-labelled pixels per bin of the winning instance score (with
    ``semantic``: of the winning class score, against the relation labels the run trained on)."""
    cfg = config_from_dict(config)
    layout = Layout.of(cfg)
    labels = relation_labels_of(layout, cfg) if semantic else layout.ir_labels
    stats = RelationStats.empty()
    for path in batch.column("path").to_pylist():
        cuts = _shard_cuts(layout, path)
        relation = read_relation_labels(labels, [image_id for image_id, _ in cuts], path)
        for image_id, cut in cuts:
            if image_id in relation:
                stats.add(cut, relation[image_id], semantic)
    return pa.table({"labelled": [stats.labelled.tolist()], "same_class": [stats.same_class.tolist()]})


def relation_agreement_task(
    batch: pa.Table, config: dict[str, Any], candidates: list[float], num_classes: int
) -> pa.Table:
    """Per scores shard: confusions of the semantic cut at every candidate against the relation
    labels the run trained on, summed over the shard's images that have them."""
    cfg = config_from_dict(config)
    layout = Layout.of(cfg)
    total = np.zeros((len(candidates), num_classes + 1, num_classes + 1), np.int64)
    images = 0
    for path in batch.column("path").to_pylist():
        cuts = [(i, c) for i, c in _shard_cuts(layout, path) if len(c.scores.class_ids)]
        relation = read_relation_labels(relation_labels_of(layout, cfg), [i for i, _ in cuts], path)
        for image_id, cut in cuts:
            label = relation.get(image_id)
            if label is not None and label.shape == (cut.scores.height, cut.scores.width):
                total += relation_confusions(cut, label, candidates, num_classes + 1)
                images += 1
    return pa.table({"confusions": [total.tobytes()], "images": [images]})


def expected_iou_task(
    batch: pa.Table, config: dict[str, Any], probability: list[float], candidates: list[float], num_classes: int
) -> pa.Table:
    """Per scores shard: expected IoU at every candidate, summed over each class's instances."""
    layout = Layout.of(config_from_dict(config))
    total = np.zeros((num_classes + 1, len(candidates)))
    p = np.asarray(probability)
    instances = 0
    for path in batch.column("path").to_pylist():
        for _, cut in _shard_cuts(layout, path):
            iou, classes = expected_ious(cut, p, candidates)
            np.add.at(total, classes, iou)
            instances += len(classes)
    return pa.table({"iou_sum": [total.tobytes()], "instances": [instances]})


# --------------------------------------------------------------------------- driver
def calibration_ids(ctx: StageContext) -> list[str]:
    split = ctx.config.dataset.calibration_split
    return [r.image_id for r in ctx.split(split).records] if split else []


def _per_shard(ctx: StageContext, fn: Any, progress: Progress, what: str, **kwargs: Any) -> list[dict[str, Any]]:
    """``fn`` over the scores shards, one CPU task a shard (its path in a "path" column)."""
    return map_shards(ctx.layout.scores, fn, progress, what, config=ctx.config.to_dict(), **kwargs)


def _instance_by_relation_labels(
    ctx: StageContext, candidates: list[float], progress: Progress = QUIET
) -> dict[str, Any] | str:
    """The instance threshold of highest expected IoU, or why it cannot be read off the relation
    labels (the caller falls back to agreement and records the reason)."""
    if ctx.config.method != "irnet":
        return f"expected IoU needs IRNet's relation labels (method is {ctx.config.method})"
    if not shard_paths(ctx.layout.ir_labels):
        return f"no relation labels under {ctx.layout.ir_labels.uri}"
    stats = RelationStats.empty()
    for row in _per_shard(ctx, relation_task, progress, "relation labels"):
        stats = stats.merge(RelationStats(np.asarray(row["labelled"]), np.asarray(row["same_class"])))
    if stats.labelled.sum() == 0:
        return "no relation-labelled pixel under an instance score (no image has an instance channel)"
    probability = stats.probability()
    n = ctx.num_classes
    total = np.zeros((n + 1, len(candidates)))
    instances = 0
    for row in _per_shard(
        ctx,
        expected_iou_task,
        progress,
        "expected IoU",
        probability=probability.tolist(),
        candidates=candidates,
        num_classes=n,
    ):
        total += np.frombuffer(row["iou_sum"], np.float64).reshape(total.shape)
        instances += int(row["instances"])
    chosen = choose_by_expected_iou(total, candidates, ctx.config.calibration.per_class_instances)
    return {
        "threshold": chosen.as_dict(),
        "criterion": "expected IoU of the instances, foreground chance per score read off the relation labels",
        "values": dict(zip(map(str, candidates), map(float, total.sum(axis=0) / max(1, instances)))),
        "instances": instances,
        "probability": [round(float(x), 4) for x in probability],
    }


def _label_free_stats(ctx: StageContext, ids: list[str], candidates: list[float], progress: Progress) -> LabelFreeStats:
    stats = LabelFreeStats.empty(candidates)
    for row in map_rows(
        ctx.layout.scores, ids, label_free_task, progress, "label-free criteria", candidates=candidates
    ):
        stats = stats.merge(LabelFreeStats.from_row(row))
    return stats


AGREEMENT = "mIoU of the united instances against the calibrated semantic labels"
FOLLOWS = "the semantic threshold: the instances tile the semantic label (walk.instances_follow_semantic)"


def _instance_by_agreement(
    ctx: StageContext, ids: list[str], semantic: float, candidates: list[float], progress: Progress
) -> tuple[Thresholds, dict[str, float]]:
    """The instance threshold whose united instances agree best with the semantic labels."""
    from ray_wsis.eval.semantic import mean_iou

    n = ctx.num_classes
    confusions = np.zeros((len(candidates), n + 1, n + 1), np.int64)
    for row in map_rows(
        ctx.layout.scores,
        ids,
        agreement_task,
        progress,
        "agreement",
        semantic_threshold=semantic,
        candidates=candidates,
        num_classes=n,
        kept=kept_from(ctx.config),
    ):
        confusions += np.frombuffer(row["confusions"], np.int64).reshape(confusions.shape)
    instance = choose_instance(confusions, candidates, ctx.config.calibration.per_class_instances)
    return instance, dict(zip(map(str, candidates), (100.0 * mean_iou(c) for c in confusions)))


OTSU = "mean over images of Otsu's between-class share of the walked score's variance"
RELATION_AGREEMENT = "mIoU of the semantic labels against the relation labels' confident pixels"


def _semantic_by_relation_labels(
    ctx: StageContext, candidates: list[float], progress: Progress
) -> dict[str, Any] | str:
    """The semantic threshold whose cut agrees best with the relation labels, or why it cannot be
    read off them (the caller falls back to Otsu's criterion and records the reason)."""
    from ray_wsis.eval.semantic import mean_iou

    labels = relation_labels_of(ctx.layout, ctx.config)
    if not shard_paths(labels):
        return f"no relation labels under {labels.uri}"
    n = ctx.num_classes
    confusions = np.zeros((len(candidates), n + 1, n + 1), np.int64)
    images = 0
    for row in _per_shard(
        ctx, relation_agreement_task, progress, "relation agreement", candidates=candidates, num_classes=n
    ):
        confusions += np.frombuffer(row["confusions"], np.int64).reshape(confusions.shape)
        images += int(row["images"])
    if not images:
        return "no scored image has relation labels (they are made for the train split)"
    agreement = np.asarray([100.0 * mean_iou(c) for c in confusions])
    return {
        "threshold": Thresholds(choose_semantic(agreement, candidates)).as_dict(),
        "criterion": RELATION_AGREEMENT,
        "values": dict(zip(map(str, candidates), map(float, agreement))),
        "relation_images": images,
    }


RELATION_MAJORITY = (
    "lowest cut above which the relation labels' confident pixels are more often the winning class than not"
)


def _semantic_by_relation_majority(
    ctx: StageContext, candidates: list[float], progress: Progress
) -> dict[str, Any] | str:
    """The lowest semantic threshold above which a pixel is more likely its winning class than
    background, that chance per walked score read off the relation labels' confident pixels
    (isotonic); or why it cannot be read off them (the caller falls back to Otsu's criterion)."""
    labels = relation_labels_of(ctx.layout, ctx.config)
    if not shard_paths(labels):
        return f"no relation labels under {labels.uri}"
    stats = RelationStats.empty()
    for row in _per_shard(ctx, relation_task, progress, "relation majority", semantic=True):
        stats = stats.merge(RelationStats(np.asarray(row["labelled"]), np.asarray(row["same_class"])))
    if stats.labelled.sum() == 0:
        return "no relation-labelled pixel under a class score (they are made for the train split)"
    probability = stats.probability()
    kept = ctx.config.walk.keep_relation_labels
    chosen = choose_by_majority(probability, candidates, NOTHING_OPEN if kept else None)
    criterion = RELATION_MAJORITY
    extra: dict[str, Any] = {}
    if chosen not in candidates:
        criterion += "; no score level is: the pixels the relation labels leave open are background"
        # an image without relation labels has nothing kept: cut it at the rule's choice without them
        extra[WITHOUT_RELATION_LABELS] = Thresholds(without_relation_labels(candidates)).as_dict()
    return {
        "threshold": Thresholds(chosen).as_dict(),
        "criterion": criterion,
        "values": dict(zip(map(str, candidates), map(float, chances_above(probability, candidates)))),
        "relation_pixels": int(stats.labelled.sum()),
        **extra,
    }


def _label_free(ctx: StageContext, ids: list[str], candidates: list[float], progress: Progress) -> dict[str, Any]:
    stats = _label_free_stats(ctx, ids, candidates, progress)
    criterion = stats.criterion()
    otsu = {
        "threshold": Thresholds(choose_semantic(criterion, candidates)).as_dict(),
        "criterion": OTSU,
        "values": dict(zip(map(str, candidates), map(float, criterion))),
    }
    semantic_part: dict[str, Any] = otsu
    chooser = {
        "relation-agreement": _semantic_by_relation_labels,
        "relation-majority": _semantic_by_relation_majority,
    }.get(ctx.config.calibration.semantic_criterion)
    if chooser is not None:
        by_relation = chooser(ctx, candidates, progress)
        if isinstance(by_relation, dict):
            semantic_part = {**by_relation, "otsu": otsu}
        else:
            semantic_part = {**otsu, "criterion": f"{by_relation}, so: {OTSU}"}
    semantic = float(semantic_part["threshold"]["default"])
    result: dict[str, Any] = {"mode": "label-free", "images": stats.images, "semantic": semantic_part}
    instance = _label_free_instance(ctx, ids, stats, semantic, candidates, progress)
    return {**result, "instance": instance}


def _by_agreement(
    ctx: StageContext,
    ids: list[str],
    semantic: float,
    candidates: list[float],
    progress: Progress,
    reason: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """The agreement choice as calibration.json records it; ``reason`` says why a rule fell back.
    Instances that follow the semantic label agree with it exactly at the semantic threshold."""
    if ctx.config.walk.instances_follow_semantic:
        criterion = f"{reason}, so: {FOLLOWS}" if reason else FOLLOWS
        curve = {"values": extra["steepness"]} if "steepness" in extra else {}
        return {"threshold": Thresholds(semantic).as_dict(), "criterion": criterion, **curve, **extra}
    instance, agreement = _instance_by_agreement(ctx, ids, semantic, candidates, progress)
    criterion = f"{reason}, so: {AGREEMENT}" if reason else AGREEMENT
    return {"threshold": instance.as_dict(), "criterion": criterion, "values": agreement, **extra}


def _label_free_instance(
    ctx: StageContext,
    ids: list[str],
    stats: LabelFreeStats,
    semantic: float,
    candidates: list[float],
    progress: Progress,
) -> dict[str, Any]:
    chosen_by = ctx.config.calibration.instance_criterion
    if chosen_by == "expected-iou":
        by_relation = _instance_by_relation_labels(ctx, candidates, progress)
        if isinstance(by_relation, dict):
            return by_relation
        return _by_agreement(ctx, ids, semantic, candidates, progress, by_relation)
    if chosen_by == "contour-steepness":
        steepness = stats.steepness()
        steepest = choose_by_steepness(steepness, candidates)
        values = {str(t): (float(v) if np.isfinite(v) else None) for t, v in zip(candidates, steepness)}
        if steepest is not None:
            return {
                "threshold": Thresholds(steepest).as_dict(),
                "criterion": "steepest contour of the winning instance score (mean |grad v| / t over it)",
                "values": values,
            }
        edge = "no edge step (steepest contour at an end of the candidates)"
        return _by_agreement(ctx, ids, semantic, candidates, progress, edge, steepness=values)
    return _by_agreement(ctx, ids, semantic, candidates, progress)


def _few_shot(ctx: StageContext, ids: list[str], candidates: list[float], progress: Progress) -> dict[str, Any]:
    """The thresholds with the best scores on the calibration images' masks, among the sweep's
    candidates: with kept relation labels, leaving their band to the background is one of them."""
    scored = sweep_candidates(ctx.config)
    stats, images = sweep(ctx, ids, scored, progress)
    if not images:
        raise DatasetError(
            f"dataset.calibration_split {ctx.config.dataset.calibration_split!r} has no image with "
            f"ground truth among the labelled images"
        )
    miou, ap = stats.semantic_miou(), stats.instance_map50()
    semantic = choose_few_shot(miou, scored)
    if semantic is None:
        raise DatasetError("the calibration images' masks give no semantic score at any threshold")
    instance = choose_few_shot(ap, scored) or semantic
    extra: dict[str, Any] = {}
    if semantic not in candidates:  # an image without relation labels has nothing kept: as relation-majority
        extra[WITHOUT_RELATION_LABELS] = Thresholds(without_relation_labels(candidates)).as_dict()
    return {
        "mode": "few-shot",
        "images": images,
        "image_ids": sorted(ids),
        "semantic": {
            "threshold": Thresholds(semantic).as_dict(),
            "criterion": "semantic mIoU on the calibration split, averaged with the neighbouring candidates",
            "values": dict(zip(map(str, scored), map(float, miou))),
            **extra,
        },
        "instance": {
            "threshold": Thresholds(instance).as_dict(),
            "criterion": "instance mAP50 on the calibration split, averaged with the neighbouring candidates",
            "values": dict(zip(map(str, scored), map(float, ap))),
        },
    }


def choose(ctx: StageContext, progress: Progress = QUIET) -> dict[str, Any]:
    """calibration.json's content: the chosen thresholds and the criterion at every candidate."""
    c, walk = ctx.config.calibration, ctx.config.walk
    candidates = [float(t) for t in c.candidates]
    reference = {"semantic": walk.sem_bg_threshold, "instance": walk.ins_bg_threshold}
    if not c.enabled:
        sem, ins = reference_thresholds(ctx.config)
        result: dict[str, Any] = {
            "mode": "off",
            "images": 0,
            "semantic": {"threshold": sem.as_dict()},
            "instance": {"threshold": ins.as_dict()},
        }
    else:
        few = calibration_ids(ctx)
        labelled = set(committed_ids(ctx.layout.scores))
        if few:
            result = _few_shot(ctx, [i for i in few if i in labelled], candidates, progress)
        else:
            result = _label_free(ctx, sorted(labelled), candidates, progress)
    return {**result, "candidates": candidates, "reference": reference}


def calibrate(run: StageRun) -> dict[str, Any]:
    ctx = run.ctx
    if not shard_paths(ctx.layout.scores):
        raise DatasetError(f"no walk scores under {ctx.layout.scores.uri}: run make-pseudo-labels first")
    calibration = choose(ctx, Progress(run.stage.name, ctx.config.ray.progress_bars, ctx.log))
    write_bytes_atomic(ctx.layout.calibration, json.dumps(calibration, indent=2).encode())
    sem = calibration["semantic"]["threshold"]
    ins = calibration["instance"]["threshold"]
    run.log(
        f"{calibration['mode']} on {calibration['images']} images: semantic {sem['default']:.2f}, instance "
        f"{ins['default']:.2f}{' (per class)' if ins.get('per_class') else ''}"
    )
    return {
        "mode": calibration["mode"],
        "images": calibration["images"],
        "semantic": sem,
        "instance": ins,
        "content": digest([json.dumps(calibration, sort_keys=True)]),
    }
