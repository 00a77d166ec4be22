"""`run`: the registry's stages in order, each planned against its marker (stages/base.py).

Planning imports neither torch nor Ray (the registry is cheap); a stage's body imports what it
needs when it runs, and Ray starts (``start``) only before the first stage that runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.output_config import save_output_config
from ray_wsis.stages import registry
from ray_wsis.stages.base import Plan, RunOptions, Stage, plan_stage, run_stage

Announce = Callable[[Stage, Plan, tuple[int, int]], None]


def banner(stage: Stage, plan: Plan, position: tuple[int, int]) -> str:
    """`[3/7] make-ir-labels: 240 images (new: the input set changed ...)`."""
    index, total = position
    what = {"run": "run", "skip": "done", "kept": "kept", "redo": "redo", "new": "new images", "retry": "retry"}
    return f"[{index}/{total}] {stage.name}: {what[plan.action]}, {plan.why} ({plan.inputs_count} images)"


def selected(ctx: StageContext, names: Optional[Sequence[str]]) -> list[Stage]:
    stages = registry.pipeline(ctx.config)
    if names is None:
        return list(stages)
    return [registry.stage(ctx.config, name) for name in names]


def may_run(ctx: StageContext, stages: Sequence[Stage], options: RunOptions) -> list[str]:
    """Stages that will or may run: their own plan says so, or a stage they consume may run.

    Planned from today's markers, before anything runs (preflight checks these stages' models)."""
    running: set[str] = set()
    for stage in stages:
        plan = plan_stage(ctx, stage, options)
        if plan.action not in ("skip", "kept") or running & set(stage.consumes):
            running.add(stage.name)
    return [s.name for s in stages if s.name in running]


def run_pipeline(
    ctx: StageContext,
    names: Optional[Sequence[str]] = None,
    options: RunOptions = RunOptions(),
    announce: Optional[Announce] = None,
    before_work: Optional[Callable[[], None]] = None,
) -> dict[str, Any]:
    """Run the named stages (default: the whole pipeline of the config's method) in order.

    ``before_work`` (e.g. starting Ray) is called once, before the first stage that does work:
    a run with every stage done starts nothing."""
    save_output_config(ctx.config)
    stages = selected(ctx, names)
    show = _starting(announce or (lambda s, p, pos: ctx.log(banner(s, p, pos))), before_work)
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for index, stage in enumerate(stages, start=1):
        results[stage.name] = run_stage(ctx, stage, options, (index, len(stages)), show)
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results


def _starting(show: Announce, before_work: Optional[Callable[[], None]]) -> Announce:
    """The banner, then ``before_work`` once, ahead of the first stage that runs."""
    pending = [before_work] if before_work is not None else []

    def announce(stage: Stage, plan: Plan, position: tuple[int, int]) -> None:
        show(stage, plan, position)
        if pending and plan.action not in ("skip", "kept"):
            pending.pop()()

    return announce


def run_named(ctx: StageContext, name: str, force: bool = False) -> dict[str, Any]:
    """One stage by name (redone from scratch when ``force``): for benchmarks and scripts."""
    stage = registry.stage(ctx.config, name)
    return run_stage(ctx, stage, RunOptions(frozenset({name}) if force else frozenset()))


def summary_table(results: dict[str, Any], output: str, metrics: Optional[dict[str, Any]] = None) -> str:
    """One screen: what each stage did, image counts, metrics, and where the labels are."""
    from ray_wsis.pipeline.metrics_table import metrics_table

    lines = [
        "",
        f"{'stage':<22}{'action':<8}{'input':>7}{'processed':>10}{'kept':>6}{'skipped':>8}{'failed':>7}",
        "-" * 68,
    ]
    for name, s in results.items():
        if not isinstance(s, dict):
            continue
        if "processed" in s:
            lines.append(
                f"{name:<22}{s.get('action', ''):<8}{s['input']:>7}{s['processed']:>10}{s['kept']:>6}"
                f"{s['skipped']:>8}{s['failed']:>7}"
            )
        else:
            lines.append(f"{name:<22}{s.get('action', ''):<8}")
    if metrics:
        lines += ["", metrics_table(metrics)]
    root = output.rstrip("/")
    lines += ["", f"pseudo-labels: {root}/pseudo_labels/  (errors: {root}/errors/, status: ray-wsis status {root})"]
    if "seconds" in results:
        lines.append(f"total {results['seconds']} s")
    return "\n".join(lines)
