"""The train-downstream stage: DeepLabV3 (semantic) or Mask R-CNN (instance) on the pseudo-labels.

Same shape as the pipeline's Ray Train stages (``ray_wsis.pipeline.training``): Ray Data
streams and augments the shards in CPU tasks, a ``TorchTrainer`` trains with a checkpoint
reported every epoch under <output>/checkpoints/<run>-deeplab|maskrcnn, and re-running with
the same run name resumes from the latest one (Train V2). The final weights go to
<output>/models/deeplab.pt|maskrcnn.pt, the model is evaluated on downstream.eval_split, and
<output>/downstream_<task>_metrics.json plus the stage marker are written.

The driver runs in the stage skeleton (stages/base.py): a finished run is a no-op unless
``force`` or its settings changed; a change of downstream.epochs continues from its checkpoints,
so raising it trains only the extra epochs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional

import pyarrow.parquet as pq
import ray
import ray.train
import torch
import torch.nn.functional as F
from ray.train.torch import TorchTrainer

from ray_wsis.classes import IGNORE
from ray_wsis.config import Config, ConfigError, config_from_dict
from ray_wsis.downstream import MODEL_KINDS, TASKS
from ray_wsis.downstream.data import count_rows, detection_inputs, labels_uri, training_dataset
from ray_wsis.downstream.evaluate import evaluate_model
from ray_wsis.downstream.models import ModelSpec, build, check_weights, model_bytes, spec_for
from ray_wsis.labels import shard_files
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.layout import Layout
from ray_wsis.pipeline.model_files import fingerprint_location, write_model
from ray_wsis.pipeline.training import (
    checkpoint_folder,
    final_state,
    latest_checkpoint_epoch,
    report_epoch,
    restore_state,
    run_config,
    scaling_config,
)
from ray_wsis.stages.base import RunOptions, Stage, StageRun, run_stage
from ray_wsis.storage import Location, exists, read_bytes, write_bytes_atomic
from ray_wsis.train.loops import max_steps, training_autocast
from ray_wsis.train.optim import poly_sgd, set_poly_lr

Step = Callable[[torch.nn.Module, Any], dict[str, torch.Tensor]]


def stage_name(task: str) -> str:
    return f"train-downstream-{task}"


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task


# --------------------------------------------------------------------------- worker side
def semantic_batches(shard: Any, batch_size: int, device: torch.device) -> Iterator[tuple[Any, int]]:
    """(image, label) tensors on the device; DeepLab's image-pooling BatchNorm needs 2+ images."""
    for batch in shard.iter_torch_batches(
        batch_size=batch_size, drop_last=True, device=device, local_shuffle_buffer_size=max(4 * batch_size, 64)
    ):
        if batch["image"].shape[0] >= 2:
            yield (batch["image"], batch["label"].long()), batch["image"].shape[0]


def instance_batches(shard: Any, batch_size: int, device: torch.device) -> Iterator[tuple[Any, int]]:
    """Ragged rows -> (images, list-of-dict targets) built here in the worker."""
    for batch in shard.iter_batches(
        batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=max(4 * batch_size, 64)
    ):
        if len(batch["count"]):
            yield detection_inputs(batch, device), len(batch["count"])


def semantic_step(model: torch.nn.Module, inputs: Any) -> dict[str, torch.Tensor]:
    image, label = inputs
    return {"loss": F.cross_entropy(model(image)["out"], label, ignore_index=IGNORE)}


def instance_step(model: torch.nn.Module, inputs: Any) -> dict[str, torch.Tensor]:
    images, targets = inputs
    losses = model(images, targets)
    return {"loss": sum(losses.values()), **losses}


def run_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: Step,
    batches: Iterable[tuple[Any, int]],
    global_step: int,
    max_step: int,
    amp: bool,
    device: torch.device,
) -> tuple[int, dict[str, float]]:
    """One pass with poly lr decay; returns the new global step and the epoch's mean losses."""
    model.train()
    sums: dict[str, float] = {}
    count, samples, start = 0, 0, time.perf_counter()
    for inputs, n in batches:
        set_poly_lr(optimizer, global_step, max_step)
        with training_autocast(device, amp):
            losses = step(model, inputs)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        global_step += 1
        count += 1
        samples += n
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
    metrics = {k: v / max(count, 1) for k, v in sums.items()}
    metrics.update(steps=count, samples=samples, seconds=time.perf_counter() - start)
    return global_step, metrics


def downstream_train_loop(loop: dict[str, Any]) -> None:
    """Per-worker loop: build, restore the latest checkpoint, prepare (DDP), epochs, report."""
    config = config_from_dict(loop["config"])
    task, spec, d = loop["task"], ModelSpec(**loop["spec"]), config.downstream
    context = ray.train.get_context()
    torch.manual_seed(config.seed + context.get_world_rank())
    device = ray.train.torch.get_device()
    model = build(spec, d.weights)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = poly_sgd([(params, d.learning_rate)], d.weight_decay, d.momentum)
    start_epoch, step = restore_state(model, optimizer)
    model = ray.train.torch.prepare_model(model)
    total = max_steps(loop["num_images"], d.batch_size, d.epochs, context.get_world_size())
    shard = ray.train.get_dataset_shard("train")
    batches, step_fn = (semantic_batches, semantic_step) if task == "semantic" else (instance_batches, instance_step)
    for epoch in range(start_epoch, d.epochs):
        step, metrics = run_epoch(
            model, optimizer, step_fn, batches(shard, d.batch_size, device), step, total, config.model.amp, device
        )
        report_epoch(model, optimizer, epoch, step, {**metrics, "start_epoch": start_epoch})


# --------------------------------------------------------------------------- driver side
def _export(ctx: StageContext, result: Any, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """The final checkpoint's weights -> <output>/models/<kind>.pt (weights-only file)."""
    state = final_state(result, spec.kind)
    model = build(spec)
    model.load_state_dict(state["model"])
    location = ctx.layout.model(spec.kind)
    meta = {
        "epochs": int(state["epoch"]) + 1,
        "global_step": int(state["global_step"]),
        "config_hash": ctx.config.hash(),
    }
    write_model(location, model_bytes(model, spec, meta), spec.header())
    return location.uri, meta


def _check_enough(config: Config, task: str, num_images: int) -> None:
    """Each worker needs a full batch (DeepLab drops partial ones) or it would train no step at all."""
    needed = config.ray.num_workers * (config.downstream.batch_size if task == "semantic" else 1)
    if num_images < needed:
        raise ConfigError(
            f"{num_images} pseudo-labelled images under {labels_uri(config)} are too few for "
            f"ray.num_workers={config.ray.num_workers} x downstream.batch_size="
            f"{config.downstream.batch_size}"
        )


def _spec_file(ctx: StageContext, kind: str) -> Location:
    """Next to the Ray run folder: the architecture its checkpoints hold."""
    return ctx.layout.checkpoints.child(f"{ctx.config.run_name}-{kind}.spec.json")


def _check_resumable(ctx: StageContext, spec: ModelSpec, resumed: Optional[int]) -> None:
    """Refuse to resume checkpoints of another architecture; record this run's architecture."""
    location = _spec_file(ctx, spec.kind)
    wanted = spec.header()
    if resumed is not None and exists(location):
        found = json.loads(read_bytes(location))
        if found != wanted:
            changed = sorted(k for k in wanted if found.get(k) != wanted[k])
            what = ", ".join(f"{k} {found.get(k)} (now {wanted[k]})" for k in changed)
            raise ConfigError(
                f"checkpoints of run {ctx.config.run_name!r} hold another {spec.kind}: {what}; "
                f"use --force to start over, or another run_name"
            )
    write_bytes_atomic(location, json.dumps(wanted).encode())


def _train(run: StageRun, task: str) -> dict[str, Any]:
    ctx, config = run.ctx, run.config
    kind = MODEL_KINDS[task]
    if task == "semantic" and config.downstream.batch_size < 2:
        raise ConfigError("downstream.batch_size must be at least 2 for DeepLab (BatchNorm after image pooling)")
    num_images = count_rows(config)
    _check_enough(config, task, num_images)
    spec = spec_for(kind, config, ctx.num_classes + 1)
    check_weights(config.downstream.weights)
    resumed = latest_checkpoint_epoch(ctx, kind)
    _check_resumable(ctx, spec, resumed)
    if resumed is not None:
        run.log(f"resuming after epoch {resumed} from {checkpoint_folder(ctx, kind).uri}")
    trainer = TorchTrainer(
        downstream_train_loop,
        train_loop_config={
            "config": config.to_dict(),
            "task": task,
            "spec": dataclasses.asdict(spec),
            "num_images": num_images,
        },
        scaling_config=scaling_config(config),
        run_config=run_config(ctx, kind),
        datasets={"train": training_dataset(config, task)},
    )
    result = trainer.fit()
    model_uri, meta = _export(ctx, result, spec)
    last = result.metrics or {}
    train = {
        "backbone": spec.arch,
        "images": num_images,
        "epochs": meta["epochs"],
        "start_epoch": 0 if resumed is None else resumed + 1,
        "global_step": meta["global_step"],
        "final_loss": last.get("loss"),
        "model": model_uri,
        "labels": labels_uri(config),
    }
    run.log(f"trained: {train}")
    evaluation = evaluate_model(config, task, model_uri, run.ctx.log) or {}
    summary = {"task": task, "model": kind, **evaluation, "train": train, "model_id": ctx.model_id(kind)}
    write_bytes_atomic(_metrics_file(ctx.layout, task), json.dumps(summary, indent=2).encode())
    return summary


def _metrics_file(layout: Layout, task: str) -> Location:
    return layout.root.child(f"downstream_{task}_metrics.json")


def _stage(task: str) -> Stage:
    kind = MODEL_KINDS[task]

    def outputs(layout: Layout, config: Config) -> tuple[Location, ...]:
        return (
            layout.model(kind),
            fingerprint_location(layout.model(kind)),
            layout.checkpoints.child(f"{config.run_name}-{kind}"),
            _metrics_file(layout, task),
            layout.checkpoints.child(f"{config.run_name}-{kind}.spec.json"),
        )

    def inputs(ctx: StageContext) -> list[str]:
        location, paths = shard_files(labels_uri(ctx.config), ctx.config.storage)
        return [
            i
            for p in paths
            for i in pq.read_table(p, columns=["image_id"], filesystem=location.fs).column("image_id").to_pylist()
        ]

    return Stage(
        name=stage_name(task),
        about=f"train {'DeepLabV3' if task == 'semantic' else 'Mask R-CNN'} on the pseudo-labels (Ray Train)",
        kind="train",
        reads=(
            "seed",
            "model.amp",
            "downstream.labels",
            "downstream.backbone",
            "downstream.weights",
            "downstream.epochs",
            "downstream.batch_size",
            "downstream.learning_rate",
            "downstream.momentum",
            "downstream.weight_decay",
            "downstream.crop_size",
            "downstream.rescale",
            "downstream.min_score",
            "downstream.ignore_uncertain",
            "downstream.min_confidence",
            "downstream.eval_split",
            "downstream.max_eval_images",
        ),
        consumes=("calibrate",),
        body=lambda run: _train(run, task),
        outputs=outputs,
        inputs=inputs,
        resume_on=("downstream.epochs", "downstream.eval_split", "downstream.max_eval_images"),
    )


STAGES = {task: _stage(task) for task in TASKS}
"""The downstream trainers as stages (outside the pipeline: run by train-downstream and the demo)."""


def train_downstream(
    config: Config, task: str, force: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train DeepLabV3 ("semantic") or Mask R-CNN ("instance") on the pseudo-labels; returns the metrics.

    Needs a running Ray (``ray_wsis.pipeline.context.init_ray``). A finished run is a no-op
    unless ``force`` or its settings changed; a change of downstream.epochs continues from its
    checkpoints (so raising it trains only the extra epochs). The returned dict (also in
    <output>/downstream_<task>_metrics.json) holds ``train`` (images, epochs, start_epoch,
    final_loss, model) and, when downstream.eval_split has ground truth, the evaluation:
    semantic ``miou``/``pixel_accuracy``/``iou``; instance ``map25``/``map50``/``map70``/
    ``map75`` (VOC mask AP, our evaluator) and ``coco_ap``/``coco_ap50`` (pycocotools).
    """
    stage = STAGES[_check_task(task)]
    ctx = StageContext(config, log=log)
    options = RunOptions(frozenset({stage.name}) if force else frozenset())
    result = run_stage(ctx, stage, options, announce=lambda s, p, pos: log(f"[{s.name}] {p.action}: {p.why}"))
    if result["action"] in ("skip", "kept"):
        return json.loads(read_bytes(_metrics_file(ctx.layout, task)))
    result.pop("action")
    return result
