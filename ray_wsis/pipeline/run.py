"""`run`: every stage in order, each skipped when its marker says it is done."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.evaluate import evaluate, metrics_table
from ray_wsis.pipeline.inference import make_cams, make_ir_labels, make_pseudo_labels
from ray_wsis.pipeline.training import train_cam, train_irn

STAGE_FUNCTIONS: dict[str, Callable[[StageContext], Any]] = {
    "train-cam": train_cam,
    "make-cams": make_cams,
    "make-ir-labels": make_ir_labels,
    "train-irn": train_irn,
    "make-pseudo-labels": make_pseudo_labels,
    "evaluate": evaluate,
}


def run_all(ctx: StageContext) -> dict[str, Any]:
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for name, fn in STAGE_FUNCTIONS.items():
        results[name] = fn(ctx)
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results


def summary_table(results: dict[str, Any], output: str, metrics: Optional[dict[str, Any]] = None) -> str:
    """One screen: per-stage image counts, metrics, and where the labels are."""
    lines = ["", "stage                 input processed resumed skipped failed", "-" * 62]
    for name in ("make-cams", "make-ir-labels", "make-pseudo-labels"):
        s = results.get(name) or {}
        if s:
            lines.append(f"{name:<20} {s['input']:>6} {s['processed']:>9} {s['resumed']:>7} {s['skipped']:>7} "
                         f"{s['failed']:>6}")
    if metrics:
        lines += ["", metrics_table(metrics)]
    lines += ["", f"pseudo-labels: {output.rstrip('/')}/pseudo_labels/  (errors: {output.rstrip('/')}/errors/)"]
    if "seconds" in results:
        lines.append(f"total {results['seconds']} s")
    return "\n".join(lines)
