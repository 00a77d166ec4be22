"""`ray-wsis demo --downstream`: train DeepLab and Mask R-CNN on the demo's pseudo-labels.

The point of pseudo-labels is what a fully supervised model learns from them, so the demo
ends by training both models on a CPU-sized budget and printing their held-out scores next
to the quality of the labels they were trained on.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, Optional

from ray_wsis.config import Config, DownstreamConfig
from ray_wsis.downstream import TASKS
from ray_wsis.pipeline.layout import Layout
from ray_wsis.storage import exists, read_bytes

DEMO_SETTINGS: dict[str, Any] = {
    "backbone": "resnet18",
    "epochs": 2,
    "batch_size": 8,
    "crop_size": 128,
    "max_eval_images": 40,
}
"""CPU-sized settings; each applies only where the config leaves that downstream field at its default."""


def demo_config(config: Config) -> Config:
    """The config with DEMO_SETTINGS filled in (explicit --set downstream.* values win)."""
    defaults = DownstreamConfig()
    changes = {k: v for k, v in DEMO_SETTINGS.items() if getattr(config.downstream, k) == getattr(defaults, k)}
    return config.replace(downstream=dataclasses.replace(config.downstream, **changes))


def _label_metrics(config: Config) -> Optional[dict[str, Any]]:
    location = Layout.of(config).metrics
    return json.loads(read_bytes(location)) if exists(location) else None


def _cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def comparison_table(labels: Optional[dict[str, Any]], semantic: dict[str, Any], instance: dict[str, Any]) -> str:
    """Pseudo-label quality (the evaluate stage's split) beside the trained models' scores."""
    labels = labels or {}
    label_split = (labels.get("images") or {}).get("split", "-")
    model_split = semantic.get("split") or instance.get("split") or "-"
    rows = [
        ("semantic mIoU", labels.get("sem_miou"), semantic.get("miou")),
        ("instance mAP25 (VOC)", labels.get("ins_map25"), instance.get("map25")),
        ("instance mAP50 (VOC)", labels.get("ins_map50"), instance.get("map50")),
        ("instance mAP75 (VOC)", labels.get("ins_map75"), instance.get("map75")),
        ("instance AP (COCO)", None, instance.get("coco_ap")),
        ("instance AP50 (COCO)", None, instance.get("coco_ap50")),
    ]
    head = ("", f"pseudo-labels ({label_split})", f"trained models ({model_split})")
    widths = [max(len(head[0]), *(len(r[0]) for r in rows)), len(head[1]), len(head[2])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += [
        "  ".join((name.ljust(widths[0]), _cell(a).rjust(widths[1]), _cell(b).rjust(widths[2]))) for name, a, b in rows
    ]
    train = semantic.get("train", {})
    lines.append(
        f"DeepLabV3 and Mask R-CNN ({train.get('backbone')}) trained {train.get('epochs')} epochs on the "
        f"pseudo-labels; percentages."
    )
    return "\n".join(lines)


def run_downstream_demo(config: Config, force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train both downstream models on <output>/pseudo_labels, evaluate on val, print the table."""
    from ray_wsis.downstream.train import train_downstream
    from ray_wsis.pipeline.context import init_ray

    config = demo_config(config)
    init_ray(config)
    results = {task: train_downstream(config, task, force=force, log=log) for task in TASKS}
    labels = _label_metrics(config)
    print(comparison_table(labels, results["semantic"], results["instance"]), flush=True)
    return {"pseudo_labels": labels, **results}
