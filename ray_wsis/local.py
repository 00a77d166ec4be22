"""The whole method in one process, without Ray: for benchmarks, ablations and debugging.

Stages call the same batch UDFs, training loop and predictors as the Ray pipeline; only
the distribution and the storage of intermediate results differ (here: dicts in memory).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Optional

import numpy as np
import torch

from ray_wsis.config import Config
from ray_wsis.data.decode import resize_long_side
from ray_wsis.data.records import DatasetSource, ImageRecord
from ray_wsis.data.sources import load_image
from ray_wsis.eval.instance import InstanceEvaluator
from ray_wsis.eval.semantic import SemanticEvaluator, cam_to_label, precision_of_ir_labels
from ray_wsis.masks import encode_label_png
from ray_wsis.method.ir_labels import relation_labels
from ray_wsis.method.predictors import AffinityPredictor, CamPredictor, IRNetPredictor, PseudoLabel
from ray_wsis.method.upsample import upsample_cams
from ray_wsis.train.batches import ClassifierBatches, RelationBatches, TopLeftBatches, records_to_rows, rows_to_batch
from ray_wsis.train.loops import (
    build_classifier,
    build_relation_net,
    displacement_mean,
    max_steps,
    run_epoch,
    step_function,
)


def _batches(
    rows: list[dict[str, Any]],
    maker: Callable[[dict[str, Any]], dict[str, np.ndarray]],
    batch_size: int,
    rng: Optional[np.random.Generator],
) -> Iterator[dict[str, torch.Tensor]]:
    order = rng.permutation(len(rows)) if rng is not None else np.arange(len(rows))
    for start in range(0, len(rows) - batch_size + 1 if rng is not None else len(rows), batch_size):
        chunk = [rows[i] for i in order[start : start + batch_size]]
        yield {k: torch.from_numpy(v) for k, v in maker(rows_to_batch(chunk)).items()}


def train_classifier(
    config: Config,
    records: Sequence[ImageRecord],
    num_classes: int,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> dict[str, torch.Tensor]:
    model, optimizer = build_classifier(config, num_classes)
    model.to(device)
    rows = records_to_rows([r for r in records if r.class_ids])
    maker, rng = ClassifierBatches(config, num_classes), np.random.default_rng(config.seed)
    total = max_steps(len(rows), config.cam.batch_size, config.cam.epochs)
    step, step_fn = 0, step_function("cam", config)
    for epoch in range(config.cam.epochs):
        step, metrics = run_epoch(
            model, optimizer, step_fn, _batches(rows, maker, config.cam.batch_size, rng), step, total, device
        )
        log(f"cam epoch {epoch}: loss {metrics['loss']:.4f} ({metrics['seconds']:.1f}s)")
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_inputs(records: Sequence[ImageRecord], config: Config) -> dict[str, np.ndarray]:
    return {r.image_id: resize_long_side(load_image(r, config.storage), config.dataset.max_long_side) for r in records}


def make_cams(
    config: Config, records: Sequence[ImageRecord], images: dict[str, np.ndarray], predictor: CamPredictor
) -> dict[str, np.ndarray]:
    return {r.image_id: predictor(images[r.image_id], r.class_ids).astype(np.float16) for r in records}


def make_ir_labels(
    config: Config, records: Sequence[ImageRecord], images: dict[str, np.ndarray], cams: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    out = {}
    for r in records:
        image = images[r.image_id]
        full = upsample_cams(cams[r.image_id], *image.shape[:2])
        out[r.image_id] = relation_labels(image, full, r.class_ids, config.ir_label)
    return out


def train_relation_net(
    config: Config,
    records: Sequence[ImageRecord],
    ir_labels: dict[str, np.ndarray],
    num_classes: int,
    classifier_state: Optional[dict[str, torch.Tensor]],
    device: torch.device,
    log: Callable[[str], None] = print,
) -> dict[str, torch.Tensor]:
    model, optimizer = build_relation_net(config, num_classes, classifier_state)
    model.to(device)
    rows = [
        dict(row, ir_label=encode_label_png(ir_labels[row["image_id"]]))
        for row in records_to_rows([r for r in records if r.image_id in ir_labels])
    ]
    if config.method == "irnet":
        c, kind, stride = config.irn, "irnet", 4
        maker = RelationBatches(config, c.crop_size, c.rescale, stride)
        batch_size, epochs = c.batch_size, c.epochs
    else:
        a, kind = config.affinity, "affinitynet"
        maker = RelationBatches(config, a.crop_size, (0.9, 1.1), 8)
        batch_size, epochs = a.batch_size, a.epochs
    rng = np.random.default_rng(config.seed + 1)
    total = max_steps(len(rows), batch_size, epochs)
    step, step_fn = 0, step_function(kind, config)
    for epoch in range(epochs):
        step, metrics = run_epoch(
            model, optimizer, step_fn, _batches(rows, maker, batch_size, rng), step, total, device
        )
        log(f"{kind} epoch {epoch}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "steps"))
    if kind == "irnet":
        sums = displacement_mean(
            model, _batches(rows, TopLeftBatches(config, config.irn.crop_size), config.irn.batch_size, None), device
        )
        model.mean_shift.running_mean.copy_((sums[:2] / sums[2].clamp(min=1)).float())
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def make_pseudo_labels(
    records: Sequence[ImageRecord],
    images: dict[str, np.ndarray],
    cams: dict[str, np.ndarray],
    predictor: IRNetPredictor | AffinityPredictor,
) -> dict[str, PseudoLabel]:
    return {
        r.image_id: predictor(images[r.image_id], cams[r.image_id].astype(np.float32), r.class_ids) for r in records
    }


def evaluate(
    config: Config,
    source: DatasetSource,
    records: Iterable[ImageRecord],
    images: dict[str, np.ndarray],
    cams: dict[str, np.ndarray],
    ir_labels: Optional[dict[str, np.ndarray]] = None,
    labels: Optional[dict[str, PseudoLabel]] = None,
) -> dict[str, Any]:
    n = len(source.class_names) + 1
    cam_eval, sem_eval, ins_eval = SemanticEvaluator(n), SemanticEvaluator(n), InstanceEvaluator(n - 1)
    ir_stats = None
    for r in records:
        gt = source.ground_truth(r.image_id)
        if gt is None or gt.semantic is None:
            continue
        h, w = gt.semantic.shape
        full = upsample_cams(cams[r.image_id], h, w)
        cam_eval.add(cam_to_label(full, r.class_ids, config.cam.eval_threshold), gt.semantic)
        if ir_labels is not None:
            stats = precision_of_ir_labels(ir_labels[r.image_id], gt.semantic)
            ir_stats = stats if ir_stats is None else ir_stats + stats
        if labels is not None:
            label = labels[r.image_id]
            sem_eval.add(label.semantic, gt.semantic)
            if gt.instance_masks is not None:
                inst = label.instances
                ins_eval.add(inst.masks, inst.class_ids, inst.scores, gt.instance_masks, gt.instance_class_ids)
    out: dict[str, Any] = {"cam_miou": cam_eval.result()["miou"]}
    if ir_stats is not None:
        out["ir_label_precision"] = 100 * ir_stats.precision
        out["ir_label_coverage"] = 100 * ir_stats.coverage
    if labels is not None:
        out["sem_miou"] = sem_eval.result()["miou"]
        out.update({f"ins_{k}": v for k, v in ins_eval.result().items() if k.startswith("map")})
    return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def semantic_threshold_sweep(
    config: Config,
    source: DatasetSource,
    records: Sequence[ImageRecord],
    images: dict[str, np.ndarray],
    cams: dict[str, np.ndarray],
    predictor: IRNetPredictor,
    thresholds: Sequence[float] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5),
) -> dict[str, float]:
    """Semantic mIoU of the walked CAMs at several background thresholds (one walk per image)."""
    from ray_wsis.method.labels import boundary_walk, semantic_from_walk

    n = len(source.class_names) + 1
    evaluators = {t: SemanticEvaluator(n) for t in thresholds}
    for r in records:
        gt = source.ground_truth(r.image_id)
        if gt is None or gt.semantic is None:
            continue
        image = images[r.image_id]
        boundary, _ = predictor.boundary_displacement(image)
        cam = torch.from_numpy(cams[r.image_id].astype(np.float32))
        walked = boundary_walk(boundary, config.walk.radius, config.walk.beta)(
            cam * (1 - boundary), 2**config.walk.exp_times
        )
        for t, evaluator in evaluators.items():
            height, width = image.shape[:2]
            evaluator.add(semantic_from_walk(walked, r.class_ids, height, width, t), gt.semantic)
    return {f"{t:.2f}": round(e.result()["miou"], 2) for t, e in evaluators.items()}
