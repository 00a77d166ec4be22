"""One semantic threshold for all classes, or one per class: what each buys, on finished outputs.

    python bench/per_class_thresholds.py OUTPUT [OUTPUT ...]

Reads each output's stored walked scores (scores/), relation labels (ir_labels/) and the ground
truth; no network runs. For every candidate threshold it cuts the semantic labels once and counts
their confusion against the ground truth and against the relation labels' confident pixels. Then
it compares four ways of cutting the same scores:

* ``shared_relation``: one threshold, the one whose labels agree best with the relation labels
  (``calibration.semantic_criterion: relation-agreement``);
* ``per_class_relation``: each class its own threshold, the one whose labels of that class agree
  best (IoU) with the relation labels of that class (``calibration.per_class_semantic: true``);
* ``shared_oracle`` and ``per_class_oracle``: the same with the ground truth (the ceilings).

A class's threshold moves only the pixels that class wins, so per class the choices are
independent. Prints one JSON object per output: mIoU and, per class, IoU (precision / recall) and
threshold of each way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_wsis.classes import IGNORE  # noqa: E402
from ray_wsis.data.sources import build_source  # noqa: E402
from ray_wsis.eval.semantic import confusion_matrix, iou_from_confusion  # noqa: E402
from ray_wsis.masks import decode_label_png  # noqa: E402
from ray_wsis.method.calibration import ImageCut, _fit  # noqa: E402
from ray_wsis.pipeline.layout import Layout  # noqa: E402
from ray_wsis.pipeline.output_config import load_output_config  # noqa: E402
from ray_wsis.pipeline.schema import walk_scores  # noqa: E402
from ray_wsis.pipeline.sink import read_table  # noqa: E402


def _rows(location: Any) -> list[dict[str, Any]]:
    table = read_table(location)
    return [] if table is None else table.to_pylist()


def _label(cut: ImageCut, per_class: np.ndarray) -> np.ndarray:
    """The semantic label with class c cut at ``per_class[c]`` (index 0 unused)."""
    if len(cut.scores.class_ids) == 0:
        return np.zeros((cut.scores.height, cut.scores.width), np.uint8)
    keys = np.asarray(cut.scores.class_ids, np.int64)
    limit = per_class[keys][cut.semantic.channel]
    return np.where(cut.semantic.value > limit, keys[cut.semantic.channel], 0).astype(np.uint8)


def _precision_recall(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class (rows: truth, columns: prediction)."""
    hits = np.diag(confusion).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / confusion.sum(axis=0), hits / confusion.sum(axis=1)


def evaluate(output: str) -> dict[str, Any]:
    config = load_output_config(output, None)
    layout = Layout.of(config)
    source = build_source(config.dataset, config.storage)
    names = ["background", *source.class_names]
    n = len(names)
    candidates = [float(t) for t in config.calibration.candidates]
    relation = {r["image_id"]: decode_label_png(r["ir_label"]) for r in _rows(layout.ir_labels)}

    cuts, truths = [], []
    truth_conf = np.zeros((len(candidates), n, n), np.int64)
    relation_conf = np.zeros((len(candidates), n, n), np.int64)
    seeds_conf = np.zeros((n, n), np.int64)  # the relation labels themselves against the truth
    for row in _rows(layout.scores):
        truth = source.ground_truth(row["image_id"])
        if truth is None or truth.semantic is None:
            continue
        cut = ImageCut.of(walk_scores(row))
        target = relation.get(row["image_id"])
        if target is not None and target.shape == cut.semantic.value.shape:
            seeds = _fit(target, truth.semantic.shape)
            unlabelled = seeds == IGNORE  # the relation labels' ignore band: left out
            seeds_conf += confusion_matrix(
                np.where(unlabelled, 0, seeds), np.where(unlabelled, IGNORE, truth.semantic), n
            )
        for k, t in enumerate(candidates):
            label = cut.semantic_label(t)
            truth_conf[k] += confusion_matrix(_fit(label, truth.semantic.shape), truth.semantic, n)
            if target is not None and target.shape == label.shape:
                relation_conf[k] += confusion_matrix(label, target, n)
        cuts.append(cut)
        truths.append(truth.semantic)

    present = truth_conf[0].sum(axis=1) > 0
    truth_iou = np.stack([iou_from_confusion(c) for c in truth_conf])  # (candidates, classes)
    relation_iou = np.stack([iou_from_confusion(c) for c in relation_conf])

    def shared(curve: np.ndarray) -> np.ndarray:
        mean = np.nanmean(np.where(present, curve, np.nan), axis=1)
        return np.full(n, candidates[int(np.nanargmax(mean))])

    def per_class(curve: np.ndarray) -> np.ndarray:
        out = np.full(n, np.nan)
        for c in range(1, n):
            if present[c] and np.isfinite(curve[:, c]).any():
                out[c] = candidates[int(np.nanargmax(curve[:, c]))]
        return out

    ways = {
        "shared_relation": shared(relation_iou),
        "per_class_relation": per_class(relation_iou),
        "shared_oracle": shared(truth_iou),
        "per_class_oracle": per_class(truth_iou),
    }
    result: dict[str, Any] = {"output": output, "images": len(cuts)}
    seed_precision, seed_recall = _precision_recall(seeds_conf)
    labelled = seeds_conf.sum(axis=0)  # per class, pixels the relation labels give it
    result["relation_labels"] = {
        names[c]: {
            "precision": round(100.0 * float(seed_precision[c]), 1),
            "recall": round(100.0 * float(seed_recall[c]), 1),
            "pixels_over_true": round(float(labelled[c] / max(seeds_conf[c].sum(), 1)), 2),
        }
        for c in range(n)
        if present[c]
    }
    for way, thresholds in ways.items():
        confusion = np.zeros((n, n), np.int64)
        for cut, truth in zip(cuts, truths):
            confusion += confusion_matrix(_fit(_label(cut, np.nan_to_num(thresholds, nan=1.0)), truth.shape), truth, n)
        iou = iou_from_confusion(confusion)
        precision, recall = _precision_recall(confusion)
        result[way] = {
            "miou": round(100.0 * float(np.nanmean(iou[present])), 1),
            "per_class": {
                names[c]: {
                    "threshold": None if not np.isfinite(thresholds[c]) else round(float(thresholds[c]), 2),
                    "iou": round(100.0 * float(iou[c]), 1),
                    "precision": round(100.0 * float(precision[c]), 1),
                    "recall": round(100.0 * float(recall[c]), 1),
                }
                for c in range(1, n)
                if present[c]
            },
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outputs", nargs="+")
    args = parser.parse_args()
    print(json.dumps({"outputs": [evaluate(o) for o in args.outputs]}))


if __name__ == "__main__":
    main()
