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
* ``band_share``: how the band's pixels spread over the bins.

Void ground-truth pixels are left out. docs/context.md reads these curves.
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
from ray_wsis.method.calibration import ImageCut  # noqa: E402
from ray_wsis.pipeline.layout import Layout  # noqa: E402
from ray_wsis.pipeline.output_config import load_output_config  # noqa: E402
from ray_wsis.pipeline.schema import walk_scores  # noqa: E402
from ray_wsis.pipeline.sink import read_table  # noqa: E402

BINS = 20


def _share(hits: np.ndarray, total: np.ndarray) -> list[float | None]:
    return [None if n == 0 else round(float(h / n), 3) for h, n in zip(hits, total)]


def curves(output: str) -> dict[str, Any]:
    config = load_output_config(output, None)
    layout = Layout.of(config)
    source = build_source(config.dataset, config.storage)
    table = read_table(layout.ir_labels)
    relation = {} if table is None else {r["image_id"]: decode_label_png(r["ir_label"]) for r in table.to_pylist()}
    counts = {k: np.zeros(BINS, np.int64) for k in ("confident", "same", "confident_true", "band", "band_true")}
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
        bins = np.clip((cut.semantic.value * BINS).astype(np.int64), 0, BINS - 1)
        valid = truth.semantic != IGNORE
        confident, band = valid & (seeds != IGNORE), valid & (seeds == IGNORE)
        right = truth.semantic == winner
        for key, mask in (
            ("confident", confident),
            ("same", confident & (seeds == winner)),
            ("confident_true", confident & right),
            ("band", band),
            ("band_true", band & right),
        ):
            counts[key] += np.bincount(bins[mask], minlength=BINS)
        images += 1
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outputs", nargs="+")
    args = parser.parse_args()
    print(json.dumps({"runs": [curves(o) for o in args.outputs]}))


if __name__ == "__main__":
    main()
