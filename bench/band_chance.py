"""What the relation-majority rule estimates, against what it needs, on finished outputs.

    python bench/band_chance.py OUTPUT [OUTPUT ...]

With kept relation labels the semantic threshold decides only the pixels the relation labels leave
open (their ignore band). relation-majority estimates, per bin of the winning class's walked score,
the chance that a pixel is that class from the relation labels' *confident* pixels. This script
reads each output's stored walked scores (scores/), relation labels (ir_labels/) and ground truth
(no network) and prints, per score bin of 0.05, one JSON object per output:

* ``estimate``: the share of the confident pixels that the relation labels give the winning class
  (what the rule reads, before its isotonic fit);
* ``confident_truth``: the share of those pixels that the ground truth gives it;
* ``band_truth``: the share of the band's pixels that the ground truth gives it (what a cut of the
  band needs: where it is above 0.5, labelling the band there gets more pixels right than wrong);
* ``band_share``: how the band's pixels spread over the bins;
* ``estimate_outside_cores``: ``estimate`` on the confident pixels outside the seeds' cores only
  (their CAM peak below the image's foreground threshold: pixels the relation labels decide with the
  CRF, not with the CAM's threshold, as the band's pixels are);
* ``by_cam``: ``band_truth``, ``band_share`` and ``estimate`` again, per cell of a 5 x 5 grid of the
  winning class's max-normalised CAM (rows) and its walked score (columns): whether the two
  scores together tell the band's pixels from the confident ones.

``choices`` applies the rule (isotonic fit, lowest candidate above which the chance is >= 0.5, else
1.0) to three estimates, and reads the mIoU of each choice off the output's sweep (share of its
best): ``all`` (what calibrate does), ``outside_cores``, and ``label_shift`` (the estimate's
posterior moved to the band's own class share by EM, as under a change of class priors, Saerens et
al. 2002). Void ground-truth pixels are left out. docs/context.md reads these curves.
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
from ray_wsis.masks import decode_label_png  # noqa: E402
from ray_wsis.method.calibration import (  # noqa: E402
    NOTHING_OPEN,
    PROBABILITY_BINS,
    ImageCut,
    RelationStats,
    choose_by_majority,
)
from ray_wsis.method.ir_labels import thresholds_for  # noqa: E402
from ray_wsis.method.upsample import upsample_cams  # noqa: E402
from ray_wsis.pipeline.layout import Layout  # noqa: E402
from ray_wsis.pipeline.output_config import load_output_config  # noqa: E402
from ray_wsis.pipeline.schema import cam_array, walk_scores  # noqa: E402
from ray_wsis.pipeline.sink import read_table  # noqa: E402

BINS = 20
"""The curves' bins; each holds PROBABILITY_BINS // BINS of the rule's bins."""
CELLS = 5
"""``by_cam``: bins per axis of the (CAM, walked score) grid."""


def _share(hits: np.ndarray, total: np.ndarray) -> list[float | None]:
    return [None if n == 0 else round(float(h / n), 3) for h, n in zip(hits, total)]


def _grid(hits: np.ndarray, total: np.ndarray) -> list[list[float | None]]:
    return [_share(h, n) for h, n in zip(hits.reshape(CELLS, CELLS), total.reshape(CELLS, CELLS))]


def _probability(same: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    return RelationStats(labelled, same).probability()


def _cell(value: np.ndarray) -> np.ndarray:
    return np.clip((value * CELLS).astype(np.int64), 0, CELLS - 1)


def label_shift(same: np.ndarray, labelled: np.ndarray, band: np.ndarray, rounds: int = 200) -> np.ndarray:
    """Per bin, the chance of the winning class in the band: the confident pixels' chance moved from
    their class share to the band's, the band's share found by EM (Saerens et al. 2002)."""
    chance = np.clip(_probability(same, labelled), 1e-4, 1 - 1e-4)
    prior = float(same.sum() / max(1, labelled.sum()))
    shifted, band_prior = chance, prior
    for _ in range(rounds):
        odds_class = band_prior / prior * chance
        odds_background = (1 - band_prior) / (1 - prior) * (1 - chance)
        shifted = odds_class / (odds_class + odds_background)
        band_prior = float((band * shifted).sum() / max(1, band.sum()))
    return shifted


def _choice(probability: np.ndarray, candidates: list[float], sweep: dict[float, float]) -> dict[str, Any]:
    threshold = choose_by_majority(probability, candidates, NOTHING_OPEN)
    best = max(sweep.values()) if sweep else 0.0
    miou = sweep.get(threshold)
    share = None if miou is None or best <= 0 else round(100.0 * miou / best, 1)
    return {"threshold": threshold, "miou": None if miou is None else round(miou, 1), "share_of_best": share}


def curves(output: str) -> dict[str, Any]:
    config = load_output_config(output, None)
    layout = Layout.of(config)
    source = build_source(config.dataset, config.storage)
    table = read_table(layout.ir_labels)
    relation = {} if table is None else {r["image_id"]: decode_label_png(r["ir_label"]) for r in table.to_pylist()}
    keys = ("confident", "same", "confident_true", "band", "band_true", "outside", "outside_same")
    rule_keys = ("confident", "same", "band", "outside", "outside_same")
    counts = {k: np.zeros(PROBABILITY_BINS, np.int64) for k in keys + tuple(f"rule_{k}" for k in rule_keys)}
    grid = {k: np.zeros(CELLS * CELLS, np.int64) for k in ("band", "band_true", "confident", "same")}
    cam_table = read_table(layout.cams)
    cams = {} if cam_table is None else {r["image_id"]: r for r in cam_table.to_pylist()}
    images = 0
    scores = read_table(layout.scores)
    for row in [] if scores is None else scores.to_pylist():
        seeds, truth = relation.get(row["image_id"]), source.ground_truth(row["image_id"])
        if seeds is None or not row["labels"] or truth is None or truth.semantic is None:
            continue
        cut = ImageCut.of(walk_scores(row))
        if seeds.shape != cut.semantic.value.shape or truth.semantic.shape != seeds.shape:
            continue  # resized for inference: not compared
        winner = np.asarray(cut.scores.class_ids, np.int64)[cut.semantic.channel]
        bins = np.clip((cut.semantic.value * PROBABILITY_BINS).astype(np.int64), 0, PROBABILITY_BINS - 1)
        valid = truth.semantic != IGNORE
        labelled = seeds != IGNORE  # what the rule reads: every relation-labelled pixel, void or not
        same, right = labelled & (seeds == winner), truth.semantic == winner
        outside = np.zeros_like(labelled)
        cam = None
        if row["image_id"] in cams:  # the seeds' cores: CAM peak at or above the image's fg threshold
            if list(cams[row["image_id"]]["labels"]) != list(row["labels"]):
                raise ValueError(f"{row['image_id']}: CAM and walked-score channels differ")
            cam = upsample_cams(cam_array(cams[row["image_id"]]), *seeds.shape)
            outside = labelled & (cam.max(axis=0) < thresholds_for(cam, config.ir_label)[0])
        rule = {
            "confident": labelled,
            "same": same,
            "band": ~labelled,
            "outside": outside,
            "outside_same": outside & same,
        }
        masks = {f"rule_{k}": mask for k, mask in rule.items()}
        masks.update({k: valid & mask for k, mask in rule.items()})  # the curves: ground truth not void
        masks["confident_true"] = valid & labelled & right
        masks["band_true"] = valid & ~labelled & right
        if cam is not None:
            winner_cam = np.take_along_axis(cam, cut.semantic.channel[None], axis=0)[0]
            cells = _cell(winner_cam) * CELLS + _cell(cut.semantic.value)
            for key, mask in (
                ("band", "band"),
                ("band_true", "band_true"),
                ("confident", "rule_confident"),
                ("same", "rule_same"),
            ):
                grid[key] += np.bincount(cells[masks[mask]], minlength=CELLS * CELLS)
        for key, mask in masks.items():
            counts[key] += np.bincount(bins[mask], minlength=PROBABILITY_BINS)
        images += 1
    candidates = [float(t) for t in config.calibration.candidates]
    metrics_path = os.path.join(output, "metrics.json")
    sweep: dict[float, float] = {}
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            sweep = {float(k): float(v) for k, v in json.load(f).get("sem_miou_by_threshold", {}).items()}
    fine = {k: counts[f"rule_{k}"] for k in rule_keys}
    counts = {k: counts[k].reshape(BINS, -1).sum(axis=1) for k in keys}
    choices = {
        "all": _choice(_probability(fine["same"], fine["confident"]), candidates, sweep),
        "outside_cores": _choice(_probability(fine["outside_same"], fine["outside"]), candidates, sweep),
        "label_shift": _choice(label_shift(fine["same"], fine["confident"], fine["band"]), candidates, sweep),
    }
    best = max(sweep, key=lambda t: sweep[t]) if sweep else None
    return {
        "output": output,
        "images": images,
        "bins": [round(k / BINS, 2) for k in range(BINS)],
        "band_of_valid_pixels": round(
            float(counts["band"].sum() / max(1, counts["band"].sum() + counts["confident"].sum())), 3
        ),
        "estimate": _share(counts["same"], counts["confident"]),
        "confident_truth": _share(counts["confident_true"], counts["confident"]),
        "band_truth": _share(counts["band_true"], counts["band"]),
        "band_share": [round(float(v), 3) for v in counts["band"] / max(1, counts["band"].sum())],
        "estimate_outside_cores": _share(counts["outside_same"], counts["outside"]),
        "by_cam": {
            "bins": [round(k / CELLS, 2) for k in range(CELLS)],
            "band_truth": _grid(grid["band_true"], grid["band"]),
            "band_share": [
                [round(float(v), 3) for v in row]
                for row in grid["band"].reshape(CELLS, CELLS) / max(1, grid["band"].sum())
            ],
            "estimate": _grid(grid["same"], grid["confident"]),
        },
        "choices": choices,
        "best": None if best is None else {"threshold": best, "miou": round(sweep[best], 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outputs", nargs="+")
    args = parser.parse_args()
    print(json.dumps({"runs": [curves(o) for o in args.outputs]}))


if __name__ == "__main__":
    main()
