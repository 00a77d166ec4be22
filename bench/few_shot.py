"""Few-shot calibration against the label-free threshold, on the labels as a finished output ships them.

    python bench/few_shot.py OUTPUT [OUTPUT ...] [--draws 20] [--seed 0]

With ``walk.keep_relation_labels`` the labels keep the relation labels' confident pixels and the
threshold decides only their band (docs/context.md); ``bench/calibration.py`` scores the walk's
cut alone. This script cuts each image as cut-labels does (kept relation labels and instances that
follow the semantic label where the output's config says so), reads the output's stored scores,
relation labels and ground truth (no network), and prints one JSON object per output:

* ``best``: the semantic threshold with the best mIoU over all its images, and that mIoU;
* ``label_free``: the threshold calibrate chose (calibration.json) and its mIoU and share of the best;
* ``few_shot``: per k = 5, 10, 20, 50, the threshold fitted on k random images (as
  ``dataset.calibration_split`` fits it among evaluate's candidates: best mIoU, averaged with the
  neighbouring candidates), drawn ``--draws`` times and scored on all images: mean and worst mIoU
  and share of the best, and the mAP50 at the instance threshold fitted the same way.

The k images stay in the score, as in bench/calibration.py; evaluate leaves them out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import few_shot_draws  # noqa: E402
from ray_wsis.data.sources import build_source  # noqa: E402
from ray_wsis.method.calibration import FewShotStats, ImageCut  # noqa: E402
from ray_wsis.pipeline.layout import Layout  # noqa: E402
from ray_wsis.pipeline.output_config import load_output_config  # noqa: E402
from ray_wsis.pipeline.schema import walk_scores  # noqa: E402
from ray_wsis.pipeline.sink import read_table  # noqa: E402
from ray_wsis.stages.relation_labels import kept_from, kept_relation_labels  # noqa: E402
from ray_wsis.stages.thresholds import sweep_candidates  # noqa: E402


def few_shot(output: str, draws: int, seed: int) -> dict[str, Any]:
    config = load_output_config(output, None)
    layout = Layout.of(config)
    source = build_source(config.dataset, config.storage)
    n = len(source.class_names)
    candidates = sweep_candidates(config)  # with kept relation labels: 1.0, their band left to the background
    scores = read_table(layout.scores)
    rows = [] if scores is None else scores.to_pylist()
    relation = kept_relation_labels(kept_from(config), [r["image_id"] for r in rows])  # as cut-labels keeps them
    per_image: list[FewShotStats] = []
    for row in rows:
        truth = source.ground_truth(row["image_id"])
        if truth is None or truth.semantic is None:
            continue
        cut = ImageCut.of(walk_scores(row), relation.get(row["image_id"]), config.walk.instances_follow_semantic)
        stats = FewShotStats.empty(candidates, n)
        stats.add(cut, truth, candidates, config.walk.min_fragment_fraction, n)
        per_image.append(stats)
    if not per_image:
        raise SystemExit(f"no image of {output} has ground truth")

    def stats_of(indices: list[int]) -> FewShotStats:
        total = FewShotStats.empty(candidates, n)
        for i in indices:
            total = total.merge(per_image[i])
        return total

    everything = stats_of(list(range(len(per_image))))
    at = {
        t: (float(s), float(a)) for t, s, a in zip(candidates, everything.semantic_miou(), everything.instance_map50())
    }
    best = max(at, key=lambda t: at[t][0])
    with open(os.path.join(output, "calibration.json")) as f:
        chosen = float(json.load(f)["semantic"]["threshold"]["default"])
    label_free = at.get(chosen, (float("nan"), float("nan")))[0]
    return {
        "output": output,
        "images": len(per_image),
        "best": {"threshold": best, "miou": round(at[best][0], 1)},
        "label_free": {
            "threshold": chosen,
            "miou": round(label_free, 1),
            "share_of_best": round(100.0 * label_free / at[best][0], 1),
        },
        "few_shot": few_shot_draws(stats_of, len(per_image), candidates, at, draws, seed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outputs", nargs="+")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps({"runs": [few_shot(o, args.draws, args.seed) for o in args.outputs]}))


if __name__ == "__main__":
    main()
