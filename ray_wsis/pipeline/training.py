"""What the Ray Train stages share (train-cam, train-irn, the downstream trainers).

Ray Data decodes and augments in CPU tasks; every worker pulls its shard with
``iter_torch_batches``; the model is wrapped by ``prepare_model`` (DDP when several
workers). A checkpoint is reported every epoch under <output>/checkpoints/<run>-<model>;
re-running with the same run name resumes from the latest one (Train V2), and
``FailureConfig(max_failures)`` restarts failed workers from it. At the end the final
weights are exported to <output>/models/<kind>.pt for the inference stages.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

import ray
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

from ray_wsis.config import Config, config_from_dict
from ray_wsis.models.checkpoints import CheckpointError, checkpoint_bytes, checkpoint_header, read_checkpoint
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.faults import maybe_fail_epoch
from ray_wsis.pipeline.model_files import write_model
from ray_wsis.pipeline.progress import poster
from ray_wsis.storage import Location, exists, is_remote, read_bytes

# The batch UDFs live in a module without torch or ray.train: every Ray Data worker that runs them
# imports it (0.2 s instead of 5.3 s for this module; the first epoch waited 17-20 s on such imports).
from ray_wsis.train.loops import (
    build_classifier,
    build_relation_net,
    displacement_mean,
    max_steps,
    run_epoch,
    step_function,
    training_state,
    unwrap,
)

STATE_FILE = "state.pt"


def classifier_state(config: Config, kind: str) -> Optional[dict[str, torch.Tensor]]:
    """The trained classifier's weights when the relation net starts from them."""
    if kind == "irnet" and config.irn.backbone_init != "classifier":
        return None
    from ray_wsis.pipeline.layout import Layout

    location = Layout.of(config).model("cam")
    if not exists(location):
        raise CheckpointError(f"{location.uri} is missing: run train-cam first")
    return read_checkpoint(read_bytes(location), "cam", config.model.backbone, location.uri)["state_dict"]


def restore_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, 0
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]) + 1, int(state["global_step"])


def report_epoch(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int, step: int, metrics: dict[str, float]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            torch.save(training_state(model, optimizer, epoch, step), os.path.join(folder, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"epoch": epoch, **metrics}, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch:03d}")


def _train_loop(kind: str, loop: dict[str, Any]) -> None:
    """Per-worker loop shared by both stages: restore, prepare, epochs, report."""
    config = config_from_dict(loop["config"])
    torch.manual_seed(config.seed + ray.train.get_context().get_world_rank())
    device = ray.train.torch.get_device()
    if kind == "cam":
        model, optimizer = build_classifier(config, loop["num_classes"])
        batch_size, epochs = config.cam.batch_size, config.cam.epochs
    else:
        model, optimizer = build_relation_net(config, loop["num_classes"], classifier_state(config, kind))
        c = config.irn if kind == "irnet" else config.affinity
        batch_size, epochs = c.batch_size, c.epochs
    start_epoch, step = restore_state(model, optimizer)
    model = ray.train.torch.prepare_model(model)
    world = ray.train.get_context().get_world_size()
    total = max_steps(loop["num_images"], batch_size, epochs, world)
    step_fn = step_function(kind, config)
    shard = ray.train.get_dataset_shard("train")
    board = loop.get("progress") if ray.train.get_context().get_world_rank() == 0 else None
    steps_per_epoch = total // max(1, epochs)
    for epoch in range(start_epoch, epochs):
        maybe_fail_epoch(epoch)
        batches = shard.iter_torch_batches(
            batch_size=batch_size, drop_last=True, local_shuffle_buffer_size=max(2 * batch_size, 64)
        )
        step, metrics = run_epoch(
            model, optimizer, step_fn, batches, step, total, device, poster(board, epoch + 1, epochs), steps_per_epoch
        )
        if board is not None:
            board.epoch.remote(
                epoch=epoch + 1,
                epochs=epochs,
                loss=metrics.get("loss", float("nan")),
                seconds=metrics["seconds"],
                data_wait_seconds=metrics["data_wait_seconds"],
                images_per_s=metrics["samples"] / max(metrics["seconds"], 1e-6),
            )
        if kind == "irnet" and epoch == epochs - 1:
            _set_displacement_mean(model, ray.train.get_dataset_shard("mean"), batch_size, device, world)
        report_epoch(model, optimizer, epoch, step, {**metrics, "start_epoch": start_epoch})


def _set_displacement_mean(
    model: torch.nn.Module, shard: Any, batch_size: int, device: torch.device, world: int
) -> None:
    sums = displacement_mean(model, shard.iter_torch_batches(batch_size=batch_size), device)
    if world > 1:
        torch.distributed.all_reduce(sums)
    unwrap(model).mean_shift.running_mean.copy_((sums[:2] / sums[2].clamp(min=1)).float())


def cam_train_loop(loop: dict[str, Any]) -> None:
    _train_loop("cam", loop)


def relation_train_loop(loop: dict[str, Any]) -> None:
    _train_loop(config_from_dict(loop["config"]).method, loop)


def run_config(ctx: StageContext, suffix: str) -> RunConfig:
    location = ctx.layout.checkpoints
    remote = is_remote(location.uri)
    return RunConfig(
        name=f"{ctx.config.run_name}-{suffix}",
        storage_path=location.path,
        storage_filesystem=location.fs if remote else None,
        failure_config=FailureConfig(max_failures=ctx.config.ray.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
    )


def scaling_config(config: Config) -> ScalingConfig:
    r = config.ray
    resources = (
        {"CPU": r.cpus_per_worker}
        | ({"GPU": 1} if r.use_gpu else {})
        | ({r.accelerator_resource: 1} if r.accelerator_resource else {})
    )
    return ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=resources)


def final_state(result: Any, kind: str) -> dict[str, Any]:
    """The training state (model, optimizer, epoch, global_step) of a training's last checkpoint."""
    if result.checkpoint is None:
        raise RuntimeError(f"training of {kind} reported no checkpoint")
    with result.checkpoint.as_directory() as folder:
        state: dict[str, Any] = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    return state


def export_model(ctx: StageContext, result: Any, kind: str, num_classes: int) -> str:
    state = final_state(result, kind)
    model_state = state["model"]
    from ray_wsis.models.checkpoints import build_model  # local: keeps the import graph flat

    model = build_model(kind, ctx.config.model.backbone, num_classes)
    model.load_state_dict(model_state)
    data = checkpoint_bytes(
        model,
        kind,
        ctx.config.model.backbone,
        num_classes,
        {"epochs": int(state["epoch"]) + 1, "config_hash": ctx.config.hash()},
    )
    write_model(ctx.layout.model(kind), data, checkpoint_header(kind, ctx.config.model.backbone, num_classes))
    return ctx.layout.model(kind).uri


def checkpoint_folder(ctx: StageContext, kind: str) -> Location:
    return ctx.layout.checkpoints.child(f"{ctx.config.run_name}-{kind}")


def latest_checkpoint_epoch(ctx: StageContext, suffix: str) -> Optional[int]:
    """The last epoch checkpointed by a training run (for tests and status)."""
    location = checkpoint_folder(ctx, suffix)
    if not exists(location):
        return None
    from pyarrow.fs import FileSelector, FileType

    names = [
        i.base_name
        for i in location.fs.get_file_info(FileSelector(location.path))
        if i.type == FileType.Directory and i.base_name.startswith("epoch_")
    ]
    return max((int(n.split("_")[1]) for n in names), default=None)
