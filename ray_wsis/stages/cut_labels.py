"""cut-labels: the one writer of pseudo_labels/, cut from the walk's scores at the chosen thresholds.

make-pseudo-labels stores the walked maps (scores/), calibrate chooses and records the
background thresholds (calibration.json: calibrated ones, or the configured ones when
calibration is off), and this stage cuts every scores shard into the pseudo-label shard of
the same name with method/scores.py's ``cut_labels``: the one cut of the pipeline. With
``walk.keep_relation_labels`` the shipped semantic labels keep the relation labels' confident
pixels (read from the same-named relation-label shard; an image without them is cut at
calibrate's threshold for such images when the chosen one opens nothing); with
``walk.instances_follow_semantic`` the instances tile the semantic label cut at the instance
threshold (the shipped one where calibrate found no instance edge step). No network
runs: CPU tasks only, one per shard, so re-thresholding costs a few seconds per 1,000 images.

Exactly once: a scores shard and its label shard hold the same ids under the same name, and
each label shard is written atomically. Every label shard records the identity of the cut it
came from (this stage's plan identity: its thresholds, the scores it read, everything
upstream); a run killed half-way is continued by the next, which skips the shards already
cut under the same identity and replaces the others in place. Label shards without a scores
twin (left from an earlier walk) are deleted first.

Reviewed images (``ray-wsis review pull``: <output>/review/human_labels.parquet) ship the
reviewer's masks instead of the cut, with ``source: human`` and full confidence; their mask
digests are inputs of this stage, so a new or changed correction re-cuts and the same one does not.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_wsis.config import config_from_dict
from ray_wsis.data.records import DatasetError
from ray_wsis.data.reviewed import HumanLabel, read_human_labels
from ray_wsis.method.calibration import NOTHING_OPEN, WITHOUT_RELATION_LABELS
from ray_wsis.method.scores import LEVELS, Thresholds, cut_labels
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.faults import maybe_slow_cut
from ray_wsis.pipeline.layout import Layout
from ray_wsis.pipeline.progress import Progress
from ray_wsis.pipeline.schema import (
    PSEUDO_LABELS,
    SEMANTIC_WITHOUT_RELATION_LABELS,
    THRESHOLDS_KEY,
    at_original_size,
    pseudo_label_row,
    rows_to_table,
    thresholds_metadata,
    walk_scores,
)
from ray_wsis.pipeline.sink import base_name, commit, committed_ids, shard_paths, split_rows
from ray_wsis.stages.base import StageRun, digest
from ray_wsis.stages.relation_labels import read_relation_labels, relation_labels_of
from ray_wsis.stages.whole import map_shards
from ray_wsis.storage import Location, read_bytes

CUT_KEY = "ray_wsis.cut"
"""Parquet metadata key of a label shard: the identity of the cut that wrote it."""


def human_row(row: dict[str, Any], label: HumanLabel) -> dict[str, Any]:
    """A reviewed image's shipped row: the reviewer's masks, full confidence, ``source: human``."""
    h, w = int(row["height"]), int(row["width"])
    n = len(label.class_ids)
    full = np.full((h, w), LEVELS, np.uint8)
    return pseudo_label_row(
        row["image_id"], h, w, row["labels"], label.semantic, full, label.masks, label.class_ids, np.ones(n), "human"
    )


def cut_shard_task(batch: pa.Table, config: dict[str, Any], metadata: dict[str, str], reviewed: list[str]) -> pa.Table:
    """Cut whole scores shards (one path a row) into their pseudo-label shards, same names.

    A reviewed image (``reviewed``: ids with a reviewer's masks) ships the reviewer's masks."""
    cfg = config_from_dict(config)
    layout = Layout.of(cfg)
    thresholds = json.loads(metadata[THRESHOLDS_KEY])
    sem, ins = Thresholds.from_dict(thresholds["semantic"]), Thresholds.from_dict(thresholds["instance"])
    bare = Thresholds.from_dict(thresholds.get(SEMANTIC_WITHOUT_RELATION_LABELS, thresholds["semantic"]))
    # an image without relation labels has nothing kept: where a threshold opens nothing, it gets bare
    bare_sem, bare_ins = (bare if t.default == NOTHING_OPEN else t for t in (sem, ins))
    wanted = set(reviewed)
    out = []
    for path in batch.column("path").to_pylist():
        target = layout.pseudo_labels.child(base_name(path))
        if _cut_identity(target) == metadata[CUT_KEY]:
            out.append({"path": path, "rows": 0, "cut": False})
            continue
        scores = pq.read_table(path, filesystem=layout.scores.fs)
        ids = scores.column("image_id").to_pylist()
        here = wanted & set(ids)
        human = read_human_labels(layout.human_labels, here) if here else {}
        relation = (
            read_relation_labels(relation_labels_of(layout, cfg), ids, path) if cfg.walk.keep_relation_labels else {}
        )
        rows = []
        for row in scores.to_pylist():
            h, w = int(row["height"]), int(row["width"])
            label = human.get(row["image_id"])
            if label is not None and label.semantic.shape == (h, w):
                rows.append(human_row(row, label))
                continue
            kept = relation.get(row["image_id"])
            cut, found = cut_labels(
                walk_scores(row),
                sem if kept is not None else bare_sem,
                ins if kept is not None else bare_ins,
                cfg.walk.min_fragment_fraction,
                kept,
                cfg.walk.instances_follow_semantic,
            )
            rows.append(
                pseudo_label_row(
                    row["image_id"],
                    h,
                    w,
                    row["labels"],
                    *at_original_size(cut.label, cut.confidence, found.masks, h, w),
                    found.class_ids,
                    found.scores,
                )
            )
        good, _ = split_rows(rows_to_table(rows, PSEUDO_LABELS), "cut-labels", PSEUDO_LABELS, metadata)
        commit(layout.pseudo_labels, good, cfg.storage.retries)
        maybe_slow_cut()
        out.append({"path": path, "rows": scores.num_rows, "cut": True})
    return pa.Table.from_pylist(
        out, schema=pa.schema([("path", pa.string()), ("rows", pa.int64()), ("cut", pa.bool_())])
    )


def _cut_identity(location: Location) -> Optional[str]:
    """The cut identity a pseudo-label shard records (None if it does not exist)."""
    try:
        meta = pq.read_schema(location.path, filesystem=location.fs).metadata or {}
    except (FileNotFoundError, OSError):
        return None
    value = meta.get(CUT_KEY.encode())
    return value.decode() if value else None


def chosen_thresholds(ctx: StageContext) -> dict[str, Any]:
    """The thresholds calibrate recorded, and where they came from ("config" when it was off)."""
    if not ctx.layout.calibration.fs.get_file_info(ctx.layout.calibration.path).is_file:
        raise DatasetError(f"no {ctx.layout.calibration.uri}: run calibrate first")
    calibration = json.loads(read_bytes(ctx.layout.calibration))
    semantic = calibration["semantic"]
    without = {k: v for k, v in semantic.items() if k == WITHOUT_RELATION_LABELS}
    return {
        "semantic": semantic["threshold"],
        "instance": calibration["instance"]["threshold"],
        "source": "config" if calibration["mode"] == "off" else "calibration",
        **without,
    }


def cut(run: StageRun) -> dict[str, Any]:
    ctx = run.ctx
    paths = shard_paths(ctx.layout.scores)
    if not paths:
        raise DatasetError(f"no walk scores under {ctx.layout.scores.uri}: run make-pseudo-labels first")
    chosen = chosen_thresholds(ctx)
    sem, ins = Thresholds.from_dict(chosen["semantic"]), Thresholds.from_dict(chosen["instance"])
    bare = Thresholds.from_dict(chosen[WITHOUT_RELATION_LABELS]) if WITHOUT_RELATION_LABELS in chosen else None
    metadata = ctx.parquet_metadata("cam", ctx.config.method) | {
        THRESHOLDS_KEY: thresholds_metadata(sem, ins, chosen["source"], bare),
        CUT_KEY: run.plan.identity,
    }
    names = {base_name(p) for p in paths}
    stale = [p for p in shard_paths(ctx.layout.pseudo_labels) if base_name(p) not in names]
    for path in stale:
        ctx.layout.pseudo_labels.fs.delete_file(path)
    done = map_shards(
        ctx.layout.scores,
        cut_shard_task,
        Progress(run.stage.name, ctx.config.ray.progress_bars, ctx.log),
        config=ctx.config.to_dict(),
        metadata=metadata,
        reviewed=sorted(ctx.human_digests()),
    )
    ids = committed_ids(ctx.layout.pseudo_labels)
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"[cut-labels] duplicate image_ids in {ctx.layout.pseudo_labels.uri}")
    human = len(set(ctx.human_digests()) & set(ids))
    run.log(
        f"semantic {sem.default:.2f}, instance {ins.default:.2f} ({chosen['source']}): "
        f"{sum(bool(r['cut']) for r in done)} of {len(paths)} shards cut, {len(ids)} images"
        + (f", {human} of them with a reviewer's masks" if human else "")
    )
    return {
        "shards": len(paths),
        "cut": sum(bool(r["cut"]) for r in done),
        "images": len(ids),
        "human": human,
        "removed": len(stale),
        "thresholds": chosen,
        "content": digest([*(base_name(p) for p in paths), json.dumps(chosen, sort_keys=True), run.plan.inputs_digest]),
    }
