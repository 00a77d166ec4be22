"""The review loop on a finished run: does the uncertainty ranking pick the images where a reviewer helps?

    python bench/review.py --output demo_output --url http://127.0.0.1:8080 --worst 20

For a finished output whose dataset has ground truth (the built-in sets do):

1. ranking: every image's uncertainty under each score of review/uncertainty.py against its
   true IoU (mean over the classes in its ground truth or labels): Spearman's rho, and the mean
   IoU of the K least certain images against all of them;
2. the loop on copies of the output: `ray-wsis review push` of the K least certain images, and of
   K random ones (--random-draws draws, averaged); a reviewer (this script, through Label Studio's REST API)
   submits each pushed image's ground-truth masks, one region per object; `ray-wsis review pull`.
   Measured: push and pull wall time; the whole output's mIoU and mAP50 against the dataset's
   ground truth before and after (every image, the reviewed ones included), and on the images
   nobody reviewed (what `evaluate` reports) before and after: the same images, so what the
   refitted thresholds changed.

The key comes from LABEL_STUDIO_API_KEY. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402
from ray_wsis.cli import main as cli_main  # noqa: E402
from ray_wsis.config import load_config  # noqa: E402
from ray_wsis.data.sources import build_source  # noqa: E402
from ray_wsis.eval.instance import InstanceEvaluator  # noqa: E402
from ray_wsis.eval.semantic import confusion_matrix, iou_from_confusion, mean_iou  # noqa: E402
from ray_wsis.labels import iter_pseudo_labels  # noqa: E402
from ray_wsis.review.brush import prediction_result, regions  # noqa: E402
from ray_wsis.review.client import KEY_VARIABLE  # noqa: E402
from ray_wsis.review.uncertainty import SCORES, image_uncertainty  # noqa: E402


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def image_iou(pred: np.ndarray, gt: np.ndarray, n: int) -> float:
    """Mean IoU over the classes (background included) in the image's ground truth or labels."""
    conf = confusion_matrix(pred, gt, n)
    present = (conf.sum(axis=0) + conf.sum(axis=1)) > 0
    return float(np.nanmean(iou_from_confusion(conf)[present]))


def quality(output: str, source: Any, n: int, only: set[str] | None = None) -> dict[str, Any]:
    """Shipped labels against the dataset's ground truth: mIoU, mAP50 and per-image IoU."""
    conf = np.zeros((n, n), np.int64)
    instances = InstanceEvaluator(n - 1)
    per_image: dict[str, float] = {}
    rows = {}
    for row in iter_pseudo_labels(output):
        if only is not None and row["image_id"] not in only:
            continue
        gt = source.ground_truth(row["image_id"])
        conf += confusion_matrix(row["semantic"], gt.semantic, n)
        instances.add(row["masks"], row["category_ids"], row["scores"], gt.instance_masks, gt.instance_class_ids)
        per_image[row["image_id"]] = image_iou(row["semantic"], gt.semantic, n)
        rows[row["image_id"]] = row
    ap = instances.result()
    return {
        "images": len(per_image),
        "miou": round(100 * mean_iou(conf), 2),
        "map50": round(float(ap["map50"] or 0.0), 2),
        "per_image": per_image,
        "rows": rows,
    }


def ranking(before: dict[str, Any], worst: int) -> dict[str, Any]:
    ids = sorted(before["per_image"])
    iou = np.asarray([before["per_image"][i] for i in ids])
    out: dict[str, Any] = {"images": len(ids), "mean_image_iou": round(100 * float(iou.mean()), 2)}
    worst_true = set(np.asarray(ids)[np.argsort(iou)[:worst]])
    for name in SCORES:
        rows = before["rows"]
        doubt = np.asarray([image_uncertainty(rows[i]["confidence"], rows[i]["semantic"], name) for i in ids])
        top = np.argsort(-doubt, kind="stable")[:worst]
        out[name] = {
            "spearman_vs_iou": round(spearman(doubt, iou), 3),
            f"mean_image_iou_of_top{worst}": round(100 * float(iou[top].mean()), 2),
            f"top{worst}_among_true_worst{worst}": len(worst_true & {ids[k] for k in top}),
        }
    return out


def reviewer(url: str, key: str, output: str, source: Any, class_names: tuple[str, ...]) -> int:
    """Submit every pushed task's ground truth, one region per object."""
    pushed = json.loads(Path(output, "review", "pushed.json").read_text())
    headers = {"Authorization": f"Token {key}"}
    for task in pushed["tasks"]:
        gt = source.ground_truth(task["image_id"])
        semantic = np.where(gt.semantic == 255, 0, gt.semantic).astype(np.uint8)
        result = prediction_result(regions(semantic, gt.instance_masks, gt.instance_class_ids), class_names)
        answer = requests.post(
            f"{url}/api/tasks/{task['task_id']}/annotations/", headers=headers, json={"result": result}, timeout=60
        )
        answer.raise_for_status()
    return len(pushed["tasks"])


def _mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over random draws of each number the draws report."""

    def average(key: str, sub: str) -> float:
        return round(float(np.mean([r[key][sub] for r in runs])), 2)

    return {
        "whole_output": {"miou": average("whole_output", "miou"), "map50": average("whole_output", "map50")},
        "unreviewed_images": {
            "miou": average("unreviewed_images", "miou"),
            "map50": average("unreviewed_images", "map50"),
        },
        "unreviewed_images_before": {
            "miou": average("unreviewed_images_before", "miou"),
            "map50": average("unreviewed_images_before", "map50"),
        },
        "mean_image_iou_of_pushed_before": round(
            float(np.mean([r["mean_image_iou_of_pushed_before"] for r in runs])), 2
        ),
    }


def loop(output: str, choose: str, seed: int, args: argparse.Namespace, source: Any, n: int) -> dict[str, Any]:
    key = os.environ[KEY_VARIABLE]
    start = time.perf_counter()
    project = f"bench {Path(output).name} {int(time.time())}"
    push = ["review", "push", output, "--url", args.url, "--worst", str(args.worst), "--project", project]
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON only
        assert cli_main([*push, "--choose", choose, "--seed", str(seed)]) == 0
    push_s = time.perf_counter() - start
    reviewed = reviewer(args.url, key, output, source, tuple(source.class_names))
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        assert cli_main(["review", "pull", output, "--url", args.url]) == 0
    pull_s = time.perf_counter() - start
    pushed = {t["image_id"] for t in json.loads(Path(output, "review", "pushed.json").read_text())["tasks"]}
    after = quality(output, source, n)
    rest = quality(output, source, n, only=set(after["per_image"]) - pushed)
    calibration = json.loads(Path(output, "calibration.json").read_text())
    return {
        "reviewed": reviewed,
        "push_seconds": round(push_s, 1),
        "pull_seconds": round(pull_s, 1),
        "whole_output": {"miou": after["miou"], "map50": after["map50"]},
        "unreviewed_images": {"images": rest["images"], "miou": rest["miou"], "map50": rest["map50"]},
        "thresholds": {
            "semantic": calibration["semantic"]["threshold"]["default"],
            "instance": calibration["instance"]["threshold"]["default"],
        },
        "seed": seed if choose == "random" else None,
        "mean_image_iou_of_pushed_before": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="a finished run (it is copied, not changed)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--worst", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="the first random draw's seed")
    parser.add_argument("--random-draws", type=int, default=3, help="random pushes to average (3)")
    args = parser.parse_args()
    config = load_config(str(Path(args.output, "config.yaml")), [])
    source = build_source(config.dataset, config.storage)
    n = len(source.class_names) + 1
    before = quality(args.output, source, n)
    calibration = json.loads(Path(args.output, "calibration.json").read_text())
    result: dict[str, Any] = {
        "machine": machine(),
        "output": args.output,
        "dataset": config.dataset.root,
        "worst": args.worst,
        "before": {
            "miou": before["miou"],
            "map50": before["map50"],
            "calibration": calibration["mode"],
            "thresholds": {
                "semantic": calibration["semantic"]["threshold"]["default"],
                "instance": calibration["instance"]["threshold"]["default"],
            },
        },
        "ranking": ranking(before, args.worst),
    }
    with tempfile.TemporaryDirectory(prefix="bench-review-") as work:
        draws = [("least-certain", 0)] + [("random", seed) for seed in range(args.seed, args.seed + args.random_draws)]
        runs: dict[str, list[dict[str, Any]]] = {"least-certain": [], "random": []}
        for choose, seed in draws:
            copy = str(Path(work, f"{choose}-{seed}"))
            shutil.copytree(args.output, copy, ignore=shutil.ignore_patterns("review"))
            run = loop(copy, choose, seed, args, source, n)
            pushed = [t["image_id"] for t in json.loads(Path(copy, "review", "pushed.json").read_text())["tasks"]]
            run["mean_image_iou_of_pushed_before"] = round(
                100 * float(np.mean([before["per_image"][i] for i in pushed])), 2
            )
            rest = quality(args.output, source, n, only=set(before["per_image"]) - set(pushed))
            run["unreviewed_images_before"] = {"miou": rest["miou"], "map50": rest["map50"]}
            run["pushed"] = pushed
            runs[choose].append(run)
            shutil.rmtree(copy)
        result["least-certain"] = runs["least-certain"][0]
        result["random"] = {"draws": runs["random"], "mean": _mean(runs["random"])}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
