"""train-cam: the multi-label classifier whose CAMs seed everything (irn step/train_cam.py).

Ray Train trains a ResNet with strides (2, 2, 2, 1) on the train split's image-level labels
(multilabel soft margin loss, poly lr); Ray Data decodes and augments in CPU tasks. The
per-worker loop is pipeline/training.py's; the weights end in <output>/models/cam.pt.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

import numpy as np
import pyarrow.parquet as pq
import ray
from ray.train.torch import TorchTrainer

from ray_wsis.data.decode import ImageDecodeError
from ray_wsis.data.records import DatasetError, ImageRecord
from ray_wsis.data.sources import load_image
from ray_wsis.pipeline.layout import Layout
from ray_wsis.pipeline.progress import training_progress
from ray_wsis.pipeline.sink import shard_paths
from ray_wsis.pipeline.training import cam_train_loop, export_model, run_config, scaling_config
from ray_wsis.stages.base import StageRun
from ray_wsis.storage import resolve
from ray_wsis.train.batches import classifier_batch, records_to_rows
from ray_wsis.train.paste import PASTE_COLUMNS, PasteObject, object_bank


def train_cam(run: StageRun) -> dict[str, Any]:
    ctx = run.ctx
    split = ctx.split(ctx.config.dataset.train_split)
    rows = records_to_rows(split.records)
    if not rows:
        raise DatasetError(f"split {ctx.config.dataset.train_split!r} has no image with labels to train on")
    config = ctx.config.to_dict()
    bank = paste_bank(run, split.records) if ctx.config.cam.paste_from else []
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(64, len(rows) // 16)))
    # Unseeded on purpose: Ray Train re-executes the dataset every epoch, and a seeded shuffle
    # replays one order, so every epoch sees the same batches (docs/from-scratch.md).
    ds = ds.random_shuffle().map_batches(
        classifier_batch,
        fn_kwargs={"config": config, "num_classes": ctx.num_classes, "bank": bank},
        batch_format="pyarrow",
        batch_size=16,
        num_cpus=1,
    )
    with training_progress(run.stage.name, ctx.config.ray.progress_bars, ctx.log) as board:
        trainer = TorchTrainer(
            cam_train_loop,
            train_loop_config={
                "config": config,
                "num_classes": ctx.num_classes,
                "num_images": len(rows),
                "progress": board,
            },
            scaling_config=scaling_config(ctx.config),
            run_config=run_config(ctx, "cam"),
            datasets={"train": ds},
        )
        result = trainer.fit()
    uri = export_model(ctx, result, "cam", ctx.num_classes)
    metrics = result.metrics or {}
    return {
        "images": len(rows),
        "epochs": ctx.config.cam.epochs,
        "model": uri,
        "model_id": ctx.model_id("cam"),
        "final_loss": metrics.get("loss"),
        **({"paste_objects": len(bank)} if ctx.config.cam.paste_from else {}),
        "resumed_from_epoch": metrics.get("start_epoch"),
    }


def paste_bank(run: StageRun, records: list[ImageRecord]) -> list[PasteObject]:
    """The first round's objects (cam.paste_from's instance pseudo-labels) cut out of their images."""
    c = run.config
    names = run.ctx.source.class_names
    by_id = {r.image_id: r for r in records}

    def load(image_id: str) -> Optional[np.ndarray]:
        record = by_id.get(image_id)
        if record is None:
            return None
        try:
            return load_image(record, c.storage)
        except ImageDecodeError:
            return None

    shards = Layout(resolve(c.cam.paste_from, c.storage)).pseudo_labels
    rows = (
        row
        for path in shard_paths(shards)
        for row in pq.read_table(path, filesystem=shards.fs, columns=list(PASTE_COLUMNS)).to_pylist()
    )
    bank = object_bank(rows, load, c.cam.paste_min_score)
    if not bank:
        raise DatasetError(
            f"cam.paste_from {c.cam.paste_from}: no instance scoring at least cam.paste_min_score "
            f"{c.cam.paste_min_score} on an image of split {c.dataset.train_split!r} (is it a finished "
            "output of this dataset? ray-wsis status says)"
        )
    counts = sorted(Counter(names[o.class_id - 1] for o in bank).items())
    run.log(f"pasting objects from {c.cam.paste_from}: {len(bank)} ({', '.join(f'{n} {k}' for k, n in counts)})")
    return bank
