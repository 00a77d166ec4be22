"""How well each way of choosing the walk's thresholds does, on a finished run with ground truth.

    python bench/calibration.py --output ./demo_output [--config FILE] [--draws 20]

Reads the run's stored scores (scores/), relation labels and ground truth; no network runs.
For every candidate threshold it scores the semantic labels (mIoU) and instances (mAP50)
against the ground truth (the oracle curve), then compares the label-free criteria that were
tried (docs/calibration.md): Otsu's between-class variance (the default), agreement with the
relation labels, stability (fewest pixels flipping between neighbouring candidates), Kittler and
Illingworth's minimum-error threshold, Youden's index on the relation labels, and the fixed irn
value 0.25; for instances, agreement of the united instances with the calibrated
semantic labels, the steepest contour (the default, falling back to agreement when the
steepest is at an end of the candidates) and the expected IoU under relation-label probabilities
(``calibration.instance_criterion: expected-iou``), each shared and per class, and the
minimum-error threshold and Youden's index computed on the instance maps. Few-shot
calibration is drawn ``--draws`` times for 5, 10, 20 and 50 labelled images. Also times the
re-cut and measures the stored bytes per image.
Prints one JSON object (the last line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import few_shot_draws  # noqa: E402
from ray_wsis.classes import IGNORE  # noqa: E402
from ray_wsis.data.sources import build_source  # noqa: E402
from ray_wsis.eval.semantic import confusion_matrix, mean_iou  # noqa: E402
from ray_wsis.masks import decode_label_png  # noqa: E402
from ray_wsis.method.calibration import (  # noqa: E402
    FewShotStats,
    ImageCut,
    LabelFreeStats,
    RelationStats,
    agreement_confusions,
    choose_by_expected_iou,
    choose_by_steepness,
    choose_instance,
    choose_semantic,
    expected_ious,
)
from ray_wsis.method.scores import Thresholds, cut_labels  # noqa: E402
from ray_wsis.pipeline.layout import Layout  # noqa: E402
from ray_wsis.pipeline.output_config import load_output_config  # noqa: E402
from ray_wsis.pipeline.schema import walk_scores  # noqa: E402
from ray_wsis.pipeline.sink import read_table, shard_paths  # noqa: E402


def _rows(location: Any) -> list[dict[str, Any]]:
    table = read_table(location)
    return [] if table is None else table.to_pylist()


def minimum_error(values: np.ndarray, candidates: list[float]) -> np.ndarray:
    """Kittler & Illingworth's criterion at each candidate (lower is better; NaN where one side
    is nearly empty): the two sides modelled as Gaussians of their own spread and share."""
    v = np.asarray(values, np.float64).ravel()
    out = np.full(len(candidates), np.nan)
    for k, t in enumerate(candidates):
        high = v > t
        share = high.mean()
        if share <= 1e-3 or share >= 1 - 1e-3:
            continue
        spread_high, spread_low = v[high].std() + 1e-3, v[~high].std() + 1e-3
        out[k] = (
            share * np.log(spread_high)
            + (1 - share) * np.log(spread_low)
            - share * np.log(share)
            - (1 - share) * np.log(1 - share)
        )
    return out


def youden_counts(label: np.ndarray, relation: np.ndarray) -> np.ndarray:
    """(labelled-class pixels given their class, relation-background pixels called foreground)."""
    foreground = (relation > 0) & (relation != IGNORE)
    return np.array([(foreground & (label == relation)).sum(), ((relation == 0) & (label > 0)).sum()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = load_output_config(args.output, args.config)
    layout = Layout.of(config)
    source = build_source(config.dataset, config.storage)
    n = len(source.class_names)
    candidates = [float(t) for t in config.calibration.candidates]
    fragment = config.walk.min_fragment_fraction

    rows = _rows(layout.scores)
    relation = {r["image_id"]: decode_label_png(r["ir_label"]) for r in _rows(layout.ir_labels)}
    cuts, truths, ids = [], [], []
    for row in rows:
        truth = source.ground_truth(row["image_id"])
        if truth is None or truth.semantic is None:
            continue
        cuts.append(ImageCut.of(walk_scores(row)))
        truths.append(truth)
        ids.append(row["image_id"])
    if not cuts:
        raise SystemExit(f"no image of {args.output} has ground truth")

    def few_shot(indices: list[int]) -> FewShotStats:
        stats = FewShotStats.empty(candidates, n)
        for i in indices:
            stats.add(cuts[i], truths[i], candidates, fragment, n)
        return stats

    everything = few_shot(list(range(len(cuts))))
    sem_curve, ins_curve = everything.semantic_miou(), everything.instance_map50()
    at = {t: (float(s), float(a)) for t, s, a in zip(candidates, sem_curve, ins_curve)}

    def score(t: float) -> float:
        return at[t][0] if t in at else float("nan")

    # label-free semantic criteria
    otsu = LabelFreeStats.empty(candidates)
    relation_conf = np.zeros((len(candidates), n + 1, n + 1), np.int64)
    flips = np.zeros(len(candidates))
    for cut in cuts:
        otsu.add(cut, candidates)
        labels = [cut.semantic_label(t) for t in candidates]
        for k in range(1, len(candidates) - 1):
            flips[k] += float((labels[k - 1] != labels[k + 1]).mean())
    for cut, image_id in zip(cuts, ids):
        target = relation.get(image_id)
        if target is None or target.shape != (cut.scores.height, cut.scores.width):
            continue
        for k, t in enumerate(candidates):
            relation_conf[k] += confusion_matrix(cut.semantic_label(t), target, n + 1)
    relation_miou = np.array([mean_iou(c) for c in relation_conf])
    flips[0] = flips[-1] = np.inf

    # minimum error (mean criterion over images) and Youden's index on the relation labels
    error_sum = {"semantic": np.zeros(len(candidates)), "instance": np.zeros(len(candidates))}
    error_images = {"semantic": np.zeros(len(candidates)), "instance": np.zeros(len(candidates))}
    youden = {"semantic": np.zeros((len(candidates), 2)), "instance": np.zeros((len(candidates), 2))}
    relation_pixels = np.zeros(2)
    for cut, image_id in zip(cuts, ids):
        for group, win in (("semantic", cut.semantic), ("instance", cut.instance)):
            if win is None or not len(cut.scores.class_ids):
                continue
            error = minimum_error(win.value, candidates)
            error_sum[group] += np.nan_to_num(error)
            error_images[group] += np.isfinite(error)
        target = relation.get(image_id)
        if target is None or target.shape != (cut.scores.height, cut.scores.width):
            continue
        relation_pixels += [((target > 0) & (target != 255)).sum(), (target == 0).sum()]
        for k, t in enumerate(candidates):
            youden["semantic"][k] += youden_counts(cut.semantic_label(t), target)
            youden["instance"][k] += youden_counts(cut.instance_classes(Thresholds(t)), target)

    def minimum_error_choice(group: str) -> float:
        mean = np.where(error_images[group] > 0, error_sum[group] / np.maximum(error_images[group], 1), np.inf)
        return float(candidates[int(np.argmin(mean))])

    def youden_choice(group: str) -> Optional[float]:
        if not relation_pixels.all():
            return None
        index = youden[group][:, 0] / relation_pixels[0] - youden[group][:, 1] / relation_pixels[1]
        return choose_semantic(index, candidates)

    chosen = {
        "otsu": choose_semantic(otsu.criterion(), candidates),
        "relation_labels": float(candidates[int(np.nanargmax(relation_miou))]) if relation else None,
        "stability": float(candidates[int(np.argmin(flips))]),
        "minimum_error": minimum_error_choice("semantic"),
        "relation_youden": youden_choice("semantic"),
        "irn_fixed": 0.25,
    }
    semantic = {
        name: {
            "threshold": t,
            "sem_miou": score(t) if t is not None else None,
            "of_oracle": score(t) / float(np.nanmax(sem_curve)) if t is not None else None,
        }
        for name, t in chosen.items()
    }

    # instances: agreement with the calibrated semantic labels
    t_sem = chosen["otsu"]
    agreement = np.zeros((len(candidates), n + 1, n + 1), np.int64)
    for cut in cuts:
        agreement += agreement_confusions(cut, t_sem, candidates, n + 1)
    shared = choose_instance(agreement, candidates, per_class=False)
    per_class = choose_instance(agreement, candidates, per_class=True)

    def instance_map50(thresholds: Thresholds, indices: list[int]) -> float:
        from ray_wsis.eval.instance import InstanceEvaluator, match_image

        evaluator = InstanceEvaluator(n)
        for i in indices:
            found = cuts[i].detections(thresholds, fragment)
            evaluator.add_matches(
                match_image(
                    found.masks,
                    found.class_ids,
                    found.scores,
                    truths[i].instance_masks,
                    truths[i].instance_class_ids,
                    num_classes=n,
                )
            )
        return float(evaluator.result()["map50"])

    relation_stats = RelationStats.empty()
    for cut, image_id in zip(cuts, ids):
        if image_id in relation:
            relation_stats.add(cut, relation[image_id])
    probability = relation_stats.probability()
    iou_sum = np.zeros((n + 1, len(candidates)))
    for cut in cuts:
        iou, classes = expected_ious(cut, probability, candidates)
        np.add.at(iou_sum, classes, iou)
    by_iou = choose_by_expected_iou(iou_sum, candidates, per_class=False)
    by_iou_per_class = choose_by_expected_iou(iou_sum, candidates, per_class=True)

    every = list(range(len(cuts)))
    youden_instance = youden_choice("instance")
    lowest_error = minimum_error_choice("instance")
    steepest = choose_by_steepness(otsu.steepness(), candidates)
    instances = {
        "contour_steepness": {
            "threshold": steepest if steepest is not None else shared.default,
            "fell_back_to_agreement": steepest is None,
            "ins_map50": instance_map50(Thresholds(steepest) if steepest is not None else shared, every),
            "steepness": dict(zip(map(str, candidates), map(float, otsu.steepness()))),
        },
        "expected_iou_shared": {"threshold": by_iou.as_dict(), "ins_map50": instance_map50(by_iou, every)},
        "expected_iou_per_class": {
            "threshold": by_iou_per_class.as_dict(),
            "ins_map50": instance_map50(by_iou_per_class, every),
        },
        "agreement_shared": {"threshold": shared.as_dict(), "ins_map50": instance_map50(shared, every)},
        "agreement_per_class": {"threshold": per_class.as_dict(), "ins_map50": instance_map50(per_class, every)},
        "minimum_error": {
            "threshold": lowest_error,
            "ins_map50": instance_map50(Thresholds(lowest_error), every),
        },
        "relation_youden": {
            "threshold": youden_instance,
            "ins_map50": instance_map50(Thresholds(youden_instance), every) if youden_instance is not None else None,
        },
        "same_as_semantic": {"threshold": t_sem, "ins_map50": instance_map50(Thresholds(t_sem), every)},
        "irn_fixed": {"threshold": 0.25, "ins_map50": instance_map50(Thresholds(0.25), every)},
    }

    # few-shot: fit on k random images, score on all
    few = few_shot_draws(few_shot, len(cuts), candidates, at, args.draws, args.seed)

    # re-cut speed and stored bytes
    start = time.perf_counter()
    for row in rows:
        cut_labels(walk_scores(row), Thresholds(t_sem), shared, fragment)
    recut = time.perf_counter() - start
    score_bytes = sum(os.path.getsize(p) for p in shard_paths(layout.scores))
    label_bytes = sum(os.path.getsize(p) for p in shard_paths(layout.pseudo_labels))
    pixels = float(np.mean([c.scores.height * c.scores.width for c in cuts]))
    result = {
        "output": args.output,
        "images": len(cuts),
        "candidates": candidates,
        "sem_miou_by_threshold": dict(zip(map(str, candidates), map(float, sem_curve))),
        "ins_map50_by_threshold": dict(zip(map(str, candidates), map(float, ins_curve))),
        "oracle": {
            "semantic": {
                "threshold": float(candidates[int(np.nanargmax(sem_curve))]),
                "sem_miou": float(np.nanmax(sem_curve)),
            },
            "instance": {
                "threshold": float(candidates[int(np.nanargmax(ins_curve))]),
                "ins_map50": float(np.nanmax(ins_curve)),
            },
        },
        "label_free_semantic": semantic,
        "otsu_criterion": dict(zip(map(str, candidates), map(float, otsu.criterion()))),
        "relation_label_miou": dict(zip(map(str, candidates), map(float, relation_miou))),
        "label_free_instance": instances,
        "few_shot": few,
        "few_shot_draws": args.draws,
        "recut_seconds_per_1000_images": 1000.0 * recut / max(1, len(rows)),
        "recut_threads": 1,
        "mean_pixels_per_image": pixels,
        "scores_bytes_per_image": score_bytes / max(1, len(rows)),
        "pseudo_label_bytes_per_image": label_bytes / max(1, len(rows)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
