"""Per-class quality of finished outputs, side by side: what a flooded class looks like.

    python bench/per_class.py OUTPUT [OUTPUT ...]

Reads each output's metrics.json (written by `evaluate`) and prints one JSON object: per output,
the shipped labels' mIoU and mAP50, the calibrated and the best (oracle) semantic threshold with
their mIoU and the calibrated share of the oracle, and per class the IoU, precision and recall of
the shipped semantic labels, the CAM IoU and AP50; then the worst class (lowest IoU) of each.
A flooded class has low precision and high recall; docs/context.md reads these tables.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Optional


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(float(value), 1)


def per_class(metrics: dict[str, Any]) -> dict[str, dict[str, Optional[float]]]:
    """class name -> its shipped semantic IoU, precision, recall, CAM IoU and AP50 (foreground only)."""
    table = metrics["per_class"]
    names = table["names"]
    out: dict[str, dict[str, Optional[float]]] = {}
    for index, name in enumerate(names):
        if index == 0 or table["sem_iou"][index] is None:
            continue  # background, and the classes the dataset never shows
        out[name] = {
            "iou": _round(table["sem_iou"][index]),
            "precision": _round((table.get("sem_precision") or [None] * len(names))[index]),
            "recall": _round((table.get("sem_recall") or [None] * len(names))[index]),
            "cam_iou": _round(table["cam_iou"][index]),
            "ap50": _round(table["ins_ap50"][index - 1]) if table.get("ins_ap50") else None,
        }
    return out


def summary(output: str) -> dict[str, Any]:
    with open(os.path.join(output, "metrics.json")) as f:
        metrics = json.load(f)
    classes = per_class(metrics)
    oracle = (metrics.get("oracle") or {}).get("semantic") or {}
    calibrated = metrics.get("calibrated") or {}
    chosen = (calibrated.get("semantic") or {}).get("default") if calibrated else None
    sweep = metrics.get("sem_miou_by_threshold") or {}
    worst = min(classes, key=lambda c: classes[c]["iou"] or 0.0) if classes else None
    return {
        "output": output,
        "sem_miou": _round(metrics.get("sem_miou")),
        "ins_map50": _round(metrics.get("ins_map50")),
        "cam_miou": _round(metrics.get("cam_miou")),
        "ir_label_precision": _round(metrics.get("ir_label_precision")),
        "semantic_threshold": chosen,
        "oracle_threshold": oracle.get("threshold"),
        "oracle_miou": _round(oracle.get("value")),
        "share_of_oracle": _round(100.0 * metrics["sem_miou"] / oracle["value"]) if oracle.get("value") else None,
        "miou_at_chosen": _round(sweep.get(f"{chosen:.2f}")) if isinstance(chosen, float) else None,
        "classes": classes,
        "worst_class": worst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outputs", nargs="+", help="finished ray-wsis outputs (local folders)")
    args = parser.parse_args()
    print(json.dumps({"runs": [summary(o) for o in args.outputs]}))


if __name__ == "__main__":
    main()
