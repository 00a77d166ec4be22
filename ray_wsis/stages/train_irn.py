"""train-irn: the relation network on the relation labels (irn step/train_irn.py, psa train_aff.py).

IRNet (``method: irnet``) learns a class-boundary map and a displacement field from the
relation labels of make-ir-labels; after the last epoch the displacement mean of the infer
split is stored as its offset (irn's mean-shift pass). AffinityNet (``method: affinitynet``)
learns feature affinities from psa's labels (make-affinity-labels). Ray Train, with the
per-worker loop of pipeline/training.py; the weights end in <output>/models/<method>.pt.
"""

from __future__ import annotations

from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer

from ray_wsis.data.records import DatasetError
from ray_wsis.pipeline.progress import training_progress
from ray_wsis.pipeline.reads import READ_BLOCK_ROWS, read_stage
from ray_wsis.pipeline.sink import committed_ids
from ray_wsis.pipeline.training import classifier_state, export_model, relation_train_loop, run_config, scaling_config
from ray_wsis.stages.base import StageRun
from ray_wsis.stages.relation_labels import relation_labels_of
from ray_wsis.train.batches import records_to_rows, relation_batch, top_left_batch


def train_irn(run: StageRun) -> dict[str, Any]:
    ctx = run.ctx
    kind = ctx.config.method
    labels = relation_labels_of(ctx.layout, ctx.config)
    ids = committed_ids(labels)
    if not ids:
        raise DatasetError(
            f"no relation labels under {labels.uri} to train on: run "
            f"{'make-affinity-labels' if labels.uri.endswith('affinity_labels') else 'make-ir-labels'} first"
        )
    config = ctx.config.to_dict()
    read = read_stage(labels, ids, READ_BLOCK_ROWS)
    assert read is not None  # ids came from these shards
    ds = read.random_shuffle().map_batches(  # unseeded: a new order every epoch, as in train-cam
        relation_batch, fn_kwargs={"config": config}, batch_format="pyarrow", batch_size=16, num_cpus=1
    )
    datasets = {"train": ds}
    if kind == "irnet":
        infer = ctx.split(ctx.config.dataset.infer_split).records
        datasets["mean"] = ray.data.from_items(records_to_rows(infer)).map_batches(
            top_left_batch, fn_kwargs={"config": config}, batch_format="pyarrow", batch_size=16, num_cpus=1
        )
    classifier_state(ctx.config, kind)  # fail here, not in the workers, when it is missing
    with training_progress(run.stage.name, ctx.config.ray.progress_bars, ctx.log) as board:
        trainer = TorchTrainer(
            relation_train_loop,
            train_loop_config={
                "config": config,
                "num_classes": ctx.num_classes,
                "num_images": len(ids),
                "progress": board,
            },
            scaling_config=scaling_config(ctx.config),
            run_config=run_config(ctx, kind),
            datasets=datasets,
            dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        )
        result = trainer.fit()
    uri = export_model(ctx, result, kind, ctx.num_classes)
    metrics = result.metrics or {}
    return {
        "images": len(ids),
        "model": uri,
        "model_id": ctx.model_id(kind),
        "final_loss": metrics.get("loss"),
        "resumed_from_epoch": metrics.get("start_epoch"),
    }
