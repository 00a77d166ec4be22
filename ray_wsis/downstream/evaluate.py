"""Evaluate a trained downstream model on a split with ground truth.

An actor pool (one GPU each when ray.use_gpu) predicts and compares against ground truth
next to the data, returning small results only: a confusion matrix (DeepLab), or match
records plus RLE strings (Mask R-CNN). The driver sums them into our evaluators (mIoU;
VOC mask AP at 0.25/0.5/0.7/0.75, as IRNet reports) and runs pycocotools' COCOeval for
COCO mask AP@[.5:.95] and AP50, so the numbers compare with both literatures.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import ray
import torch
import torch.nn.functional as F

from ray_wsis.config import Config, config_from_dict
from ray_wsis.data.decode import resize_long_side
from ray_wsis.data.records import DatasetError, ImageRecord
from ray_wsis.data.sources import build_source, load_image
from ray_wsis.downstream.data import eval_rows
from ray_wsis.downstream.models import load_model
from ray_wsis.eval.instance import ImageMatches, InstanceEvaluator, match_image
from ray_wsis.eval.semantic import SemanticEvaluator, confusion_matrix
from ray_wsis.masks import encode_rles
from ray_wsis.storage import read_bytes, resolve
from ray_wsis.train.augment import normalize

MASK_THRESHOLD = 0.5
"""Mask R-CNN mask probabilities above this are the instance (torchvision's convention)."""


def _device(config: Config) -> torch.device:
    return torch.device("cuda" if config.ray.use_gpu and torch.cuda.is_available() else "cpu")


@torch.no_grad()
def predict_semantic(model: torch.nn.Module, image: np.ndarray, device: torch.device, max_long_side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8 class map at the image's own size."""
    h, w = image.shape[:2]
    x = torch.from_numpy(normalize(resize_long_side(image, max_long_side)).transpose(2, 0, 1).copy())
    logits = model(x[None].to(device))["out"]
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return logits[0].argmax(0).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def predict_instances(
    model: torch.nn.Module, image: np.ndarray, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 -> masks (N, H, W) bool, class ids (N,), scores (N,)."""
    x = torch.from_numpy(image.transpose(2, 0, 1).copy()).to(device).float().div_(255.0)
    out = model([x])[0]
    masks = (out["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy()
    return masks, out["labels"].cpu().numpy().astype(np.int64), out["scores"].float().cpu().numpy()


def _rles(masks: np.ndarray) -> list[dict[str, Any]]:
    return (
        [{"size": [int(v) for v in r["size"]], "counts": r["counts"]} for r in encode_rles(masks)] if len(masks) else []
    )


class _EvalActor:
    """Loads the model file once per actor; each call evaluates a batch of (image_id, uri)."""

    kind = ""

    def __init__(self, config: dict[str, Any], model_uri: str) -> None:
        self.config = config_from_dict(config)
        torch.set_num_threads(max(1, int(self.config.ray.cpus_per_actor)))
        self.device = _device(self.config)
        data = read_bytes(resolve(model_uri, self.config.storage))
        model, header = load_model(data, self.kind, model_uri)
        self.model = model.to(self.device).eval()
        self.num_classes = int(header["num_classes"])  # with background
        self.source = build_source(self.config.dataset, self.config.storage)

    def _images(self, batch: dict[str, Any]):
        for image_id, uri in zip(batch["image_id"], batch["uri"]):
            gt = self.source.ground_truth(str(image_id))
            if gt is None or gt.semantic is None:
                continue
            image = load_image(ImageRecord(str(image_id), str(uri), ()), self.config.storage)
            if image.shape[:2] != gt.semantic.shape:
                continue  # ground truth of another size cannot be scored pixel by pixel
            yield str(image_id), image, gt


class SemanticEvalActor(_EvalActor):
    kind = "deeplab"

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        conf = np.zeros((self.num_classes, self.num_classes), np.int64)
        images = 0
        for _, image, gt in self._images(batch):
            pred = predict_semantic(self.model, image, self.device, self.config.dataset.max_long_side)
            conf += confusion_matrix(pred, gt.semantic, self.num_classes)
            images += 1
        out = np.empty(1, dtype=object)
        out[0] = conf.tobytes()
        return {"confusion": out, "images": np.asarray([images], np.int64)}


class InstanceEvalActor(_EvalActor):
    kind = "maskrcnn"

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        records = []
        for image_id, image, gt in self._images(batch):
            if gt.instance_masks is None:
                continue
            masks, labels, scores = predict_instances(self.model, image, self.device)
            keep = (labels >= 1) & (labels < self.num_classes)
            masks, labels, scores = masks[keep], labels[keep], scores[keep]
            matches = match_image(
                masks, labels, scores, gt.instance_masks, gt.instance_class_ids, num_classes=self.num_classes - 1
            )
            records.append(
                {
                    "image_id": image_id,
                    "height": int(image.shape[0]),
                    "width": int(image.shape[1]),
                    "matches": matches.as_dict(),
                    "gt": [
                        {"category_id": int(c), "rle": r}
                        for c, r in zip(gt.instance_class_ids, _rles(gt.instance_masks))
                    ],
                    "dt": [
                        {"category_id": int(c), "score": float(s), "rle": r}
                        for c, s, r in zip(labels, scores, _rles(masks))
                    ],
                }
            )
        out = np.empty(1, dtype=object)
        out[0] = json.dumps(records)
        return {"records": out}


# --------------------------------------------------------------------------- COCO
def coco_mask_ap(records: list[dict[str, Any]], num_classes: int) -> dict[str, Optional[float]]:
    """COCO mask AP@[.5:.95] and AP50 in percent with pycocotools (None without ground truth).

    ``records`` are per image: height, width, gt [{category_id, rle}], dt [{category_id,
    score, rle}]; ``num_classes`` excludes background (category ids 1..num_classes).
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    for number, record in enumerate(records, start=1):
        images.append({"id": number, "height": record["height"], "width": record["width"]})
        for gt in record["gt"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": gt["category_id"],
                    "segmentation": gt["rle"],
                    "area": float(mask_utils.area(gt["rle"])),
                    "bbox": [float(v) for v in mask_utils.toBbox(gt["rle"])],
                    "iscrowd": 0,
                }
            )
        detections += [
            {"image_id": number, "category_id": dt["category_id"], "segmentation": dt["rle"], "score": dt["score"]}
            for dt in record["dt"]
        ]
    if not annotations:
        return {"coco_ap": None, "coco_ap50": None}
    if not detections:
        return {"coco_ap": 0.0, "coco_ap50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k, "name": str(k)} for k in range(1, num_classes + 1)],
        }
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    def percent(value: float) -> Optional[float]:
        return None if value < 0 or not math.isfinite(value) else float(value) * 100.0

    return {"coco_ap": percent(evaluator.stats[0]), "coco_ap50": percent(evaluator.stats[1])}


# --------------------------------------------------------------------------- driver
def _semantic_metrics(rows: list[dict[str, Any]], num_classes: int) -> dict[str, Any]:
    evaluator = SemanticEvaluator(num_classes + 1)
    for row in rows:
        if int(row["images"]):
            evaluator.add_confusion(
                np.frombuffer(row["confusion"], np.int64).reshape(num_classes + 1, -1), images=int(row["images"])
            )
    result = evaluator.result()
    return {
        "miou": result["miou"],
        "pixel_accuracy": result["pixel_accuracy"],
        "iou": result["iou"],
        "images": result["images"],
    }


def _instance_metrics(rows: list[dict[str, Any]], num_classes: int) -> dict[str, Any]:
    evaluator = InstanceEvaluator(num_classes)
    records = [r for row in rows for r in json.loads(row["records"])]
    for record in records:
        evaluator.add_matches(ImageMatches.from_dict(record["matches"]))
    result = evaluator.result()
    metrics = {k: result[k] for k in ("map25", "map50", "map70", "map75")}
    metrics.update(coco_mask_ap(records, num_classes))
    metrics.update(ap50=result["ap50"], predictions=result["predictions"], images=result["images"])
    return metrics


def evaluate_model(
    config: Config, task: str, model_uri: str, log: Callable[[str], None] = print
) -> Optional[dict[str, Any]]:
    """Metrics of the model file on downstream.eval_split, or None when it has no ground truth."""
    split = config.downstream.eval_split
    if not split:
        return None
    source = build_source(config.dataset, config.storage)
    try:
        rows = eval_rows(config, split, config.downstream.max_eval_images or None)
    except DatasetError as exc:
        log(f"[train-downstream-{task}] not evaluated: {exc}")
        return None
    if not rows or not source.has_ground_truth(split):
        log(f"[train-downstream-{task}] split {split!r} has no ground truth: not evaluated")
        return None
    r = config.ray
    actor = SemanticEvalActor if task == "semantic" else InstanceEvalActor
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(64, len(rows) // max(1, r.inference_batch_size))))
    ds = ds.map_batches(
        actor,
        fn_constructor_kwargs={"config": config.to_dict(), "model_uri": model_uri},
        compute=ray.data.ActorPoolStrategy(size=r.inference_actors),
        num_gpus=1 if r.use_gpu else 0,
        num_cpus=r.cpus_per_actor,
        batch_size=r.inference_batch_size,
        batch_format="numpy",
    )
    results = ds.take_all()
    n = len(source.class_names)
    metrics = _semantic_metrics(results, n) if task == "semantic" else _instance_metrics(results, n)
    return {"split": split, "class_names": ["background", *source.class_names], **metrics}
