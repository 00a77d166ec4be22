"""`ray-wsis status OUTPUT`: one screen per run, or one JSON object with --json.

For each stage of the output's pipeline: done, stale (with the changed fields, or the stage
upstream that changed) or missing; image counts; failed and skipped counts with their most
common reasons; model ids; wall time; and the metrics and calibration when there are some.
Nothing runs, and neither Ray nor torch is imported (tests/test_cli_fast.py).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from ray_wsis.config import Config
from ray_wsis.console import log_path
from ray_wsis.data.records import DatasetError
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.metrics_table import metrics_table
from ray_wsis.stages import registry
from ray_wsis.stages.base import RunOptions, plan_stage
from ray_wsis.storage import StorageError, exists, list_files, read_bytes


def _reasons(ctx: StageContext, stage: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    location = ctx.layout.errors(stage)
    rows_read = [
        row
        for path in list_files(location, suffix=".parquet", prefix=registry.PART_PREFIX)
        for row in pq.read_table(path, columns=["image_id", "kind", "reason"], filesystem=location.fs).to_pylist()
    ]
    if not rows_read:
        return {"failed": 0, "skipped": 0, "top_reasons": []}
    rows = {r["image_id"]: r for r in rows_read}.values()
    kinds = Counter(r["kind"] for r in rows)
    reasons = Counter(f"{r['kind']}: {r['reason'][:80]}" for r in rows)
    return {
        "failed": kinds["failed"],
        "skipped": kinds["skipped"],
        "top_reasons": [{"reason": k, "images": v} for k, v in reasons.most_common(3)],
    }


def output_status(config: Config) -> dict[str, Any]:
    ctx = StageContext(config)
    entries: list[dict[str, Any]] = []
    unsettled: set[str] = set()
    try:
        _ = ctx.source
        dataset_error = None
    except (DatasetError, StorageError, OSError) as exc:
        dataset_error = str(exc)
    for stage in registry.pipeline(config):
        marker = ctx.marker(stage.name)
        entry: dict[str, Any] = {"stage": stage.name, "kind": stage.kind}
        if dataset_error is not None:
            entry.update(state="done" if marker else "missing", why=f"dataset not readable: {dataset_error}")
        else:
            plan = plan_stage(ctx, stage, RunOptions())
            entry["images"] = plan.inputs_count
            behind = sorted(unsettled & set(stage.consumes))
            if marker is None:
                entry.update(state="missing", why="not run yet")
            elif plan.action in ("skip", "kept") and not behind:
                entry.update(state="done", why=plan.why if plan.action == "kept" else "")
            else:
                why = plan.why if plan.action not in ("skip", "kept") else f"{', '.join(behind)} not done"
                entry.update(state="stale", why=why, changed=plan.changed)
            if entry["state"] != "done":
                unsettled.add(stage.name)
        if marker:
            summary = marker.get("summary", {})
            entry.update(finished_at=marker.get("finished_at"), seconds=marker.get("seconds"), summary=summary)
            if summary.get("model_id"):
                entry["model_id"] = summary["model_id"]
        if stage.kind == "images":
            entry["errors"] = _reasons(ctx, stage.name)
        entries.append(entry)
    report: dict[str, Any] = {
        "output": config.output,
        "method": config.method,
        "stages": entries,
        "log": log_path(config),
    }
    for key, location in (("metrics", ctx.layout.metrics), ("calibration", ctx.layout.calibration)):
        report[key] = json.loads(read_bytes(location)) if exists(location) else None
    report["review"] = _review(ctx)
    return report


def _review(ctx: StageContext) -> dict[str, Any] | None:
    """What was pushed to Label Studio and how many images came back reviewed (None: no review)."""
    if not exists(ctx.layout.review_pushed):
        return None
    pushed = json.loads(read_bytes(ctx.layout.review_pushed))
    return {
        "url": pushed["url"],
        "projects": [p["title"] for p in pushed["projects"]],
        "pushed": len({t["image_id"] for t in pushed["tasks"]}),
        "reviewed": len(ctx.human_digests()),
    }


def _count(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    return "" if value is None else str(value)


def timing_text(timing: dict[str, Any]) -> str:
    """One line of a stage summary's ``timing`` (pipeline/timings.py)."""
    parts = [f"{name} {seconds:.1f}" for name, seconds in timing.get("seconds", {}).items()]
    if "images_per_forward" in timing:
        parts.append(f"{timing['images_per_forward']:.1f} images per forward pass")
    if "forward_share" in timing:
        parts.append(f"forward passes {100 * timing['forward_share']:.0f}% of the actors' time")
    return ", ".join(parts) + f" ({timing.get('images', 0)} images)"


def status_text(report: dict[str, Any]) -> str:
    lines = [
        f"output {report['output']} (method {report['method']}; Ray's log: {report['log']})",
        "",
        f"{'stage':<22}{'state':<9}{'images':>7}{'labelled':>10}{'skipped':>8}{'failed':>7}{'seconds':>9}  note",
    ]
    for e in report["stages"]:
        s = e.get("summary", {})
        labelled = str(s.get("processed", 0) + s.get("kept", 0)) if "processed" in s else ""
        note = e.get("why", "")
        if e.get("model_id"):
            note = f"model {e['model_id']}" + (f"; {note}" if note else "")
        lines.append(
            f"{e['stage']:<22}{e['state']:<9}{e.get('images', ''):>7}{labelled:>10}{_count(s, 'skipped'):>8}"
            f"{_count(s, 'failed'):>7}{_count(e, 'seconds'):>9}  {note}"
        )
    timed = [(e["stage"], e["summary"]["timing"]) for e in report["stages"] if e.get("summary", {}).get("timing")]
    if timed:
        lines += ["", "where the inference time went (seconds summed over workers):"]
        lines += [f"  {stage}: {timing_text(t)}" for stage, t in timed]
    reasons = [(e["stage"], r) for e in report["stages"] for r in e.get("errors", {}).get("top_reasons", [])]
    if reasons:
        lines += ["", "most common reasons for skipped and failed images:"]
        lines += [f"  {stage}: {r['reason']} ({r['images']} images)" for stage, r in reasons]
    calibration = report.get("calibration")
    if calibration:
        sem, ins = calibration["semantic"]["threshold"], calibration["instance"]["threshold"]
        lines += [
            "",
            f"calibration ({calibration['mode']}, {calibration['images']} images): semantic "
            f"{sem['default']:.2f}, instance {ins['default']:.2f}" + (" (per class)" if ins.get("per_class") else ""),
        ]
    review = report.get("review")
    if review:
        lines += [
            "",
            f"review: {review['pushed']} images pushed to {review['url']} ({', '.join(review['projects'])}), "
            f"{review['reviewed']} reviewed and shipped with the reviewers' masks",
        ]
    metrics = report.get("metrics")
    if metrics:
        lines += ["", metrics_table(metrics)]
    return "\n".join(lines)
