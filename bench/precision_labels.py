"""The labels of one finished run's trained models at two inference precisions, same images.

Runs make-cams' and make-pseudo-labels' networks (CamPredictor.many, IRNetPredictor.networks) on
the first ``--images`` images of the run's infer split at float32 and at ``--dtype``, walks and cuts
both at the run's calibrated thresholds, and scores both semantic label maps against the dataset's
masks: mIoU of each and the share of pixels on which they agree. Training is not involved, so the
difference is the precision's alone.

    python bench/precision_labels.py --output ./demo_output --images 60 --dtype bfloat16

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine  # noqa: E402
from ray_wsis.config import load_config  # noqa: E402
from ray_wsis.eval.semantic import confusion_matrix, mean_iou  # noqa: E402
from ray_wsis.method.predictors import CamPredictor, Inference, IRNetPredictor, irnet_scores, load_model  # noqa: E402
from ray_wsis.method.scores import Thresholds, cut_labels  # noqa: E402


def labels_at(config, images, class_ids, dtype: torch.dtype, thresholds) -> tuple[list[np.ndarray], float]:  # type: ignore[no-untyped-def]
    inference = Inference(torch.device("cpu"), dtype, config.ray.inference_batch_size)
    start = time.perf_counter()
    cams = CamPredictor(load_model(config, "cam"), config.cam.scales, inference).many(images, class_ids)
    lowest = min([*config.calibration.candidates, config.walk.sem_bg_threshold, config.walk.ins_bg_threshold])
    irnet = IRNetPredictor(load_model(config, "irnet"), config.walk, inference, lowest)
    maps = irnet.networks(images)
    seconds = time.perf_counter() - start
    out = []
    for image, cam, ids, m in zip(images, cams, class_ids, maps):
        walked = irnet_scores(m, cam, ids, *image.shape[:2], config.walk, lowest)
        semantic, _ = cut_labels(walked.scores, *thresholds, config.walk.min_fragment_fraction)
        out.append(semantic.label)
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.output)
    config = load_config(str(out / "config.yaml"), [])
    calibration = json.loads((out / "calibration.json").read_text())
    thresholds = tuple(Thresholds.from_dict(calibration[k]["threshold"]) for k in ("semantic", "instance"))
    rows = pq.read_table(next((out / "scores").glob("part-*.parquet")), columns=["image_id", "labels"]).to_pylist()
    rows = sorted(rows, key=lambda r: r["image_id"])[: args.images]
    root = Path(config.dataset.root)
    images = [np.asarray(Image.open(root / "JPEGImages" / f"{r['image_id']}.jpg").convert("RGB")) for r in rows]
    truth = [np.asarray(Image.open(root / "SegmentationClass" / f"{r['image_id']}.png")) for r in rows]
    class_ids = [r["labels"] for r in rows]
    result: dict[str, object] = {"output": str(out), "images": len(rows), "machine": machine()}
    labels = {}
    for name, dtype in (("float32", torch.float32), (args.dtype, getattr(torch, args.dtype))):
        labels[name], seconds = labels_at(config, images, class_ids, dtype, thresholds)
        confusion = sum(confusion_matrix(p, t, 21) for p, t in zip(labels[name], truth))
        result[f"{name}_miou"] = round(100 * mean_iou(confusion), 2)
        result[f"{name}_network_seconds"] = round(seconds, 1)
    equal = sum(int((a == b).sum()) for a, b in zip(labels["float32"], labels[args.dtype]))
    result["pixel_agreement"] = round(equal / sum(a.size for a in labels["float32"]), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
