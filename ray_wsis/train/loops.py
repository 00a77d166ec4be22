"""Model set-up, one training step per model kind, and the epoch loop.

The same functions run inside Ray Train workers (where the model is wrapped by
``prepare_model`` and batches come from ``get_dataset_shard``) and in plain single-process
loops (benchmarks, tests), so both train exactly the same way.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ray_wsis.config import Config
from ray_wsis.method.negatives import ContextPrototypes, negative_peak_loss
from ray_wsis.method.path_index import path_index
from ray_wsis.method.relations import irn_loss, psa_loss
from ray_wsis.models.backbone import freeze_batch_norm
from ray_wsis.models.checkpoints import build_model
from ray_wsis.models.precision import autocast
from ray_wsis.train.optim import poly_optimizer, set_poly_lr

Batch = dict[str, torch.Tensor]


def build_classifier(config: Config, num_classes: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    c = config.cam
    model = build_model(
        "cam",
        config.model.backbone,
        num_classes,
        weights=config.model.weights,
        batch_norm=config.model.batch_norm,
        frozen_stages=c.frozen_stages,
    )
    backbone, head = model.parameter_groups()
    optimizer = poly_optimizer(
        c.optimizer,
        [(backbone, c.learning_rate), (head, c.head_lr_scale * c.learning_rate)],
        c.weight_decay,
        c.momentum,
    )
    return model, optimizer


def backbone_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `backbone.*` tensors of a model state, keyed for a bare Backbone."""
    return {k[len("backbone.") :]: v for k, v in model_state.items() if k.startswith("backbone.")}


def build_relation_net(
    config: Config, num_classes: int, classifier_state: Optional[dict[str, torch.Tensor]] = None
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """IRNet (method irnet) or AffinityNet (method affinitynet) with its optimiser.

    irn starts IRNet from ImageNet weights with the backbone frozen; from scratch the backbone
    must start from the trained classifier and train (irn.backbone_init, irn.train_backbone).
    """
    if config.method == "irnet":
        c = config.irn
        model = build_model(
            "irnet",
            config.model.backbone,
            num_classes,
            weights=config.model.weights,
            batch_norm=config.model.batch_norm,
            train_backbone=c.train_backbone,
        )
        if c.backbone_init == "classifier":
            if classifier_state is None:
                raise ValueError("irn.backbone_init is 'classifier' but no classifier checkpoint was given")
            model.backbone.load_state_dict(backbone_state(classifier_state))
        edge, dp, backbone = model.parameter_groups()
        groups = [(edge, c.learning_rate), (dp, c.dp_lr_scale * c.learning_rate)]
        if c.train_backbone:
            groups.append((backbone, c.backbone_lr_scale * c.learning_rate))
        return model, poly_optimizer(c.optimizer, groups, c.weight_decay, c.momentum)
    a = config.affinity
    model = build_model(
        "affinitynet",
        config.model.backbone,
        num_classes,
        weights=config.model.weights,
        batch_norm=config.model.batch_norm,
        frozen_stages=("conv1", "layer1"),
    )
    if classifier_state is not None:  # psa starts AffinityNet from the trained classifier
        model.backbone.load_state_dict(backbone_state(classifier_state))
    if a.batch_norm == "frozen":  # psa: statistics and affine of every BatchNorm stay as loaded
        freeze_batch_norm(model.backbone)  # type: ignore[arg-type]
    backbone, head = model.parameter_groups()
    return model, poly_optimizer(
        "sgd", [(backbone, a.learning_rate), (head, 10 * a.learning_rate)], a.weight_decay, a.momentum
    )


def training_autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """A training forward pass's autocast (models/precision.py): bfloat16 on CUDA when ``model.amp``
    is set, nothing (float32) otherwise; the CPU always trains in float32."""
    return autocast(device, torch.bfloat16 if amp and device.type == "cuda" else torch.float32)


def classifier_step(model: nn.Module, batch: Batch, amp: bool = False) -> dict[str, torch.Tensor]:
    with training_autocast(batch["image"].device, amp):
        logits = model(batch["image"])
    return {"loss": F.multilabel_soft_margin_loss(logits.float(), batch["target"])}


class NegativeMiningStep:
    """The classifier's step with negative mining (method/negatives.py): irn's multi-label loss
    plus ``cam.negative_peak_weight`` x the negative-peak loss and ``cam.context_prototype_weight``
    x the context-prototype loss. With ``cam.context_rectify`` the prototypes are mined into the
    model's buffers (so its file keeps them and make-cams gates the CAMs by them); otherwise they
    live here, one set per training worker."""

    def __init__(self, config: Config, amp: bool = False) -> None:
        self.cam, self.amp = config.cam, amp
        self.prototypes: Optional[ContextPrototypes] = None

    def _prototypes(self, model: nn.Module, features: torch.Tensor, num_classes: int) -> ContextPrototypes:
        if self.prototypes is None:
            if self.cam.context_rectify:
                inner = unwrap(model)
                self.prototypes = ContextPrototypes(inner.context_negative, inner.context_positive)  # type: ignore[arg-type]
            else:
                self.prototypes = ContextPrototypes.empty(num_classes, features.shape[1]).to(features.device)
        return self.prototypes

    def __call__(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        image, target = batch["image"], batch["target"]
        with training_autocast(image.device, self.amp):
            logits, features, raw = model(image, maps=True)
        logits, raw = logits.float(), raw.float()
        losses = {"classification_loss": F.multilabel_soft_margin_loss(logits, target)}
        total = losses["classification_loss"]
        if self.cam.negative_peak_weight > 0:
            losses["negative_peak_loss"] = negative_peak_loss(raw, target, self.cam.negative_top)
            total = total + self.cam.negative_peak_weight * losses["negative_peak_loss"]
        if self.cam.context_prototype_weight > 0 or self.cam.context_rectify:
            prototypes = self._prototypes(model, features, target.shape[1])
            prototypes.update(features.detach(), raw.detach(), target)
            if self.cam.context_prototype_weight > 0:
                losses["context_loss"] = prototypes.loss(features, raw, target)
                total = total + self.cam.context_prototype_weight * losses["context_loss"]
        return {"loss": total, **losses}


def irn_step(model: nn.Module, batch: Batch, radius: int, amp: bool = False) -> dict[str, torch.Tensor]:
    with training_autocast(batch["image"].device, amp):
        edge, dp = model(batch["image"])
    return irn_loss(edge.float(), dp.float(), batch["label"], path_index(radius))


def affinity_step(model: nn.Module, batch: Batch, radius: int, amp: bool = False) -> dict[str, torch.Tensor]:
    with training_autocast(batch["image"].device, amp):
        features = model(batch["image"])
    return psa_loss(features.float(), batch["label"], path_index(radius))


def step_function(kind: str, config: Config) -> Callable[[nn.Module, Batch], dict[str, torch.Tensor]]:
    amp = config.model.amp
    if kind == "cam":
        c = config.cam
        if c.negative_peak_weight > 0 or c.context_prototype_weight > 0 or c.context_rectify:
            return NegativeMiningStep(config, amp)
        return lambda model, batch: classifier_step(model, batch, amp)
    if kind == "irnet":
        return lambda model, batch: irn_step(model, batch, config.irn.radius, amp)
    if kind == "affinitynet":
        return lambda model, batch: affinity_step(model, batch, config.affinity.radius, amp)
    raise ValueError(f"unknown model kind {kind!r}")


def max_steps(num_images: int, batch_size: int, epochs: int, world_size: int = 1) -> int:
    """irn: (len(dataset) // batch) * epochs, per worker when the data is split."""
    return max(1, math.ceil(num_images / world_size) // batch_size) * epochs


def run_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: Callable[[nn.Module, Batch], dict[str, torch.Tensor]],
    batches: Iterable[Batch],
    global_step: int,
    max_step: int,
    device: torch.device,
    on_step: Optional[Callable[[int, int, float, int, float], None]] = None,
    steps_per_epoch: int = 0,
) -> tuple[int, dict[str, float]]:
    """One pass over `batches`; returns the new global step and the epoch's mean losses.

    ``on_step(step, steps_per_epoch, loss, samples, seconds)`` is told of every step (progress)."""
    model.train()
    sums: dict[str, float] = {}
    count, samples, start, waited = 0, 0, time.perf_counter(), 0.0
    iterator = iter(batches)
    while True:
        fetch = time.perf_counter()
        batch = next(iterator, None)
        waited += time.perf_counter() - fetch  # time the step waited for its input (data-bound if large)
        if batch is None:
            break
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if batch["image"].shape[0] == 0:
            continue
        set_poly_lr(optimizer, global_step, max_step)
        losses = step(model, batch)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        global_step += 1
        count += 1
        samples += batch["image"].shape[0]
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        if on_step is not None:
            on_step(count, max(steps_per_epoch, count), sums["loss"] / count, samples, time.perf_counter() - start)
    metrics = {k: v / max(count, 1) for k, v in sums.items()}
    metrics.update(steps=count, samples=samples, seconds=time.perf_counter() - start, data_wait_seconds=waited)
    return global_step, metrics


@torch.no_grad()
def displacement_mean(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> torch.Tensor:
    """irn's post-training pass: the mean displacement over plain crops, (2,) (sum, count) form."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for batch in batches:
        image = batch["image"].to(device)
        if image.shape[0] == 0:
            continue
        _, dp = model(image)
        total += dp.double().mean(dim=(2, 3)).sum(dim=0)
        count += image.shape[0]
    return torch.cat([total, count.view(1)])


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP/FSDP wrapper."""
    inner: nn.Module = model.module if hasattr(model, "module") else model  # type: ignore[assignment]
    return inner


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    global_step: int,
    extra: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    return {
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "global_step": global_step,
        **(extra or {}),
    }
