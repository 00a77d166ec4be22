"""What the relation-label stages share: their CPU task and body, and which labels a run trains on.

make-ir-labels (irn's labels) and make-affinity-labels (psa's) run the same CPU task over the
CAMs of the train split, with a different labelling (method/ir_labels.py,
method/affinity_labels.py); train-irn and evaluate read whichever the method trained on. Not a
stage: the stage modules import it, never each other. This module imports no torch: every Ray
worker that runs its task imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from ray_wsis.config import Config, config_from_dict
from ray_wsis.masks import decode_label_png, encode_label_png
from ray_wsis.method.affinity_labels import psa_relation_labels
from ray_wsis.method.ir_labels import relation_labels
from ray_wsis.method.upsample import upsample_cams
from ray_wsis.pipeline.decode_task import decode_images, pixels
from ray_wsis.pipeline.layout import Layout
from ray_wsis.pipeline.reads import read_stage
from ray_wsis.pipeline.schema import (
    ERROR_COLUMN,
    IR_LABELS,
    cam_array,
    describe_error,
    error_row,
    error_text,
    rows_to_table,
)
from ray_wsis.pipeline.sink import shard_paths
from ray_wsis.stages.base import StageRun
from ray_wsis.stages.images import from_previous, run_images
from ray_wsis.storage import Location, exists


def ir_label_batch(batch: pa.Table, config: dict[str, Any], labels: str = "irn") -> pa.Table:
    """CPU task: relation labels from CAM rows with decoded pixels: irn's (thresholds + CRF on
    labels) or, with labels="psa", psa's (two CRFs on background-powered scores)."""
    cfg = config_from_dict(config)
    rows = []
    for row in batch.to_pylist():
        base = {k: row.get(k) for k in ("uri", "height", "width", "labels")}
        if row.get(ERROR_COLUMN):
            rows.append(error_row(IR_LABELS, row["image_id"], row[ERROR_COLUMN], **base))
            continue
        try:
            image = pixels(row)
            cams = upsample_cams(cam_array(row), *image.shape[:2])
            if labels == "psa":
                label = psa_relation_labels(image, cams, row["labels"], cfg.affinity)
            else:
                label = relation_labels(image, cams, row["labels"], cfg.ir_label)
            rows.append({**base, "image_id": row["image_id"], "ir_label": encode_label_png(label), ERROR_COLUMN: ""})
        except Exception as exc:  # recorded per image
            rows.append(error_row(IR_LABELS, row["image_id"], error_text("failed", describe_error(exc)), **base))
    return rows_to_table(rows, IR_LABELS)


def decode_and_label(batch: pa.Table, config: dict[str, Any], labels: str = "irn") -> pa.Table:
    """CPU task of make-ir-labels (and make-affinity-labels): decode the images of CAM rows, then label."""
    return ir_label_batch(decode_images(batch, config), config, labels)


def label_stage(run: StageRun, output: Location, labels: str) -> dict[str, Any]:
    """The relation labels of the train split's images, written to ``output``."""
    ctx = run.ctx
    records = from_previous(ctx.layout.cams, ctx.split(ctx.config.dataset.train_split))

    def build(pending: list[str]) -> Optional[ray.data.Dataset]:
        ds = read_stage(ctx.layout.cams, pending, ctx.config.ray.inference_batch_size)
        if ds is None:
            return None
        # Decode and CRF in one task, kept apart from the shard write by an explicit max_retries
        # (Ray's default, -1): with equal remote args Ray Data 2.58 fuses a MapBatches into a Write
        # that bundles rows_per_file rows, and the whole CRF stage then ran as one task on one CPU.
        return ds.map_batches(
            decode_and_label,
            fn_kwargs={"config": ctx.config.to_dict(), "labels": labels},
            batch_format="pyarrow",
            batch_size=ctx.config.ray.inference_batch_size,
            num_cpus=1,
            max_retries=-1,
        )

    return run_images(
        run, [(output, IR_LABELS)], records, build, ctx.parquet_metadata("cam"), reserve_per_operator=False
    )


def relation_labels_of(layout: Layout, config: Config) -> Location:
    """The relation labels the run trained on: IRN's, or psa's for AffinityNet (affinity.labels)."""
    psa = config.method == "affinitynet" and config.affinity.labels == "psa"
    return layout.affinity_labels if psa else layout.ir_labels


def kept_from(config: Config) -> Optional[dict[str, Any]]:
    """What CPU tasks get to read the relation labels the cut keeps: the run's config as a dict
    with ``walk.keep_relation_labels``, else None (nothing kept)."""
    return config.to_dict() if config.walk.keep_relation_labels else None


def kept_relation_labels(kept: Optional[dict[str, Any]], ids: Iterable[str]) -> dict[str, np.ndarray]:
    """The relation labels of ``ids`` that the cut keeps (``kept`` from :func:`kept_from`), by id;
    none when ``kept`` is None. Rows without their shard's name: the shards that hold them are read."""
    if kept is None:
        return {}
    config = config_from_dict(kept)
    return read_relation_labels(relation_labels_of(Layout.of(config), config), ids)


def read_relation_labels(
    labels: Location, ids: Iterable[str], shard_path: Optional[str] = None
) -> dict[str, np.ndarray]:
    """The relation labels of ``ids`` under ``labels``, by id (ids without one are left out).

    With ``shard_path`` (a scores shard), only the relation-label shard of the same name is read
    when there is one: make-ir-labels and make-pseudo-labels shard one split alike, so a shard's
    ids are there or have no relation labels. Otherwise only the shards that hold ``ids`` are read,
    found through :func:`shard_of_ids` (an index of the shards' id columns, kept per process)."""
    wanted = set(ids)
    same = labels.child(shard_path.rsplit("/", 1)[-1]) if shard_path else None
    if same is not None and exists(same):
        return _read_labels(labels, [same.path], wanted)
    index = shard_of_ids(labels, shard_paths(labels))
    return _read_labels(labels, sorted({index[i] for i in wanted if i in index}), wanted)


_INDEXES: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}
"""Per process: (folder URI, its shard paths) -> {image_id: shard path}."""


def shard_of_ids(labels: Location, paths: list[str]) -> dict[str, str]:
    """Which shard of ``paths`` holds each image id. Their id columns only are read, once per
    process and listing: a shard's name is a digest of its ids (sink.shard_name), so a listing of
    the same names holds the same ids."""
    key = (labels.uri, tuple(paths))
    if key not in _INDEXES:
        index: dict[str, str] = {}
        for path in paths:
            table = pq.read_table(path, columns=["image_id"], filesystem=labels.fs)
            index.update((image_id, path) for image_id in table.column("image_id").to_pylist())
        _INDEXES.clear()
        _INDEXES[key] = index
    return _INDEXES[key]


def _read_labels(labels: Location, paths: list[str], wanted: set[str]) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for path in paths:
        table = pq.read_table(path, columns=["image_id", "ir_label"], filesystem=labels.fs)
        for image_id, png in zip(table.column("image_id").to_pylist(), table.column("ir_label").to_pylist()):
            if image_id in wanted and png is not None:
                found[image_id] = decode_label_png(png)
    return found
