"""The walk's background thresholds, as calibrate and evaluate both see them.

The reference cut (irn's constant planes, psa's walked background), and the sweep: semantic
confusions and instance matches at every candidate threshold, from the stored walk scores of
images with ground truth (evaluate's curves; calibrate's few-shot fit). Not a stage: the stage
modules import it, never each other. This module imports no torch: every Ray worker that runs
``eval_sweep`` imports it.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from ray_wsis.config import Config
from ray_wsis.data.records import DatasetSource
from ray_wsis.eval.instance import ImageMatches
from ray_wsis.method.calibration import NOTHING_OPEN, FewShotStats, ImageCut, without_relation_labels
from ray_wsis.method.scores import WALKED_BACKGROUND, Thresholds
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.progress import QUIET, Progress
from ray_wsis.pipeline.schema import walk_scores
from ray_wsis.stages.relation_labels import kept_from, kept_relation_labels
from ray_wsis.stages.whole import map_rows


def reference_thresholds(config: Config) -> tuple[Thresholds, Thresholds]:
    """The cut the reference code ships: irn's constant 0.25 planes, or psa's walked background."""
    if config.method == "affinitynet":
        return WALKED_BACKGROUND, WALKED_BACKGROUND
    return Thresholds(config.walk.sem_bg_threshold), Thresholds(config.walk.ins_bg_threshold)


def sweep_candidates(config: Config) -> list[float]:
    """The thresholds a ground-truth sweep scores: the calibration candidates and, with kept
    relation labels, the cut that labels nothing from the walk (:data:`NOTHING_OPEN`), which
    relation-majority and few-shot calibration may choose."""
    candidates = [float(t) for t in config.calibration.candidates]
    if config.walk.keep_relation_labels and NOTHING_OPEN not in candidates:
        candidates.append(NOTHING_OPEN)
    return candidates


def eval_sweep(
    batch: pa.Table,
    candidates: list[float],
    source: DatasetSource,
    num_classes: int,
    min_fragment_fraction: float,
    kept: Optional[dict[str, Any]] = None,
    follow_semantic: bool = False,
    bare_at_nothing_open: Optional[float] = None,
) -> pa.Table:
    """CPU task: semantic confusions and instance matches at every candidate threshold, from the
    scores of the batch's images with ground truth. ``kept`` (relation_labels.kept_from): the
    semantic labels keep the relation labels' confident pixels, as cut-labels ships them;
    ``follow_semantic``: the instances at a candidate tile the semantic label cut there;
    ``bare_at_nothing_open``: where the candidate is NOTHING_OPEN, the images without relation labels
    are cut there instead, as cut-labels cuts them when calibrate chose it."""
    stats = FewShotStats.empty(candidates, num_classes)
    images = 0
    rows = batch.to_pylist()
    relation = kept_relation_labels(kept, [r["image_id"] for r in rows])
    bare = [t if t != NOTHING_OPEN or bare_at_nothing_open is None else bare_at_nothing_open for t in candidates]
    for row in rows:
        gt = source.ground_truth(row["image_id"])
        if gt is not None and gt.semantic is not None:
            kept_here = relation.get(row["image_id"])
            cut = ImageCut.of(walk_scores(row), kept_here, follow_semantic)
            at = candidates if kept_here is not None else bare  # column k scores candidate k either way
            stats.add(cut, gt, at, min_fragment_fraction, num_classes)
            images += 1
    matches = [e.matches().as_dict() for e in stats.evaluators]
    return pa.table({"confusions": [stats.confusions.tobytes()], "matches": [json.dumps(matches)], "images": [images]})


def sweep(
    ctx: StageContext, ids: list[str], candidates: list[float], progress: Progress = QUIET
) -> tuple[FewShotStats, int]:
    """eval_sweep over the scores of ``ids``, summed: the statistics and how many images had ground truth."""
    n = ctx.num_classes
    stats = FewShotStats.empty(candidates, n)
    images = 0
    kept = kept_from(ctx.config)
    for row in map_rows(
        ctx.layout.scores,
        ids,
        eval_sweep,
        progress,
        "threshold sweep",
        candidates=candidates,
        source=ctx.source,
        num_classes=n,
        min_fragment_fraction=ctx.config.walk.min_fragment_fraction,
        kept=kept,
        follow_semantic=ctx.config.walk.instances_follow_semantic,
        bare_at_nothing_open=None if kept is None else without_relation_labels(ctx.config.calibration.candidates),
    ):
        stats.confusions += np.frombuffer(row["confusions"], np.int64).reshape(stats.confusions.shape)
        for evaluator, record in zip(stats.evaluators, json.loads(row["matches"])):
            evaluator.add_matches(ImageMatches.from_dict(record))
        images += int(row["images"])
    return stats, images
