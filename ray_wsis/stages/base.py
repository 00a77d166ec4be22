"""The one skeleton every stage runs in: what it reads, whether it must run, its banner and marker.

A stage declares the config fields it reads and the stages it consumes. Its *identity* is a
hash of those field values and of the identities of what it consumes; a finished stage is
skipped only while its identity is unchanged. What happens when something changed depends
on the stage's kind:

* ``images`` (make-cams, make-ir-labels, make-pseudo-labels): one output row per image,
  committed shard by shard. New images in the split are labelled alone (``new``), failed
  ones only on ``--retry-failed``; a changed identity redoes the stage (``redo``).
* ``train`` (train-cam, train-irn): a model. New training images keep the model (``kept``)
  unless ``--retrain``; a changed identity retrains it. What it gives the stages after it
  is the model's id, so a retrained model redoes everything downstream.
* ``whole`` (calibrate, evaluate): a result over all images, recomputed whenever its
  inputs or anything upstream changed.

Every run ends with a marker ``stages/<name>.json``: identity, the field values and upstream
identities it was made from (so a later run can say which fields changed), the digest of its
input ids, its summary and wall time.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ray_wsis import __version__
from ray_wsis.config import Config, config_field, leaf_fields
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.layout import Layout
from ray_wsis.storage import Location, delete_tree, exists, write_bytes_atomic

Kind = Literal["images", "train", "whole"]
Action = Literal["run", "skip", "redo", "new", "retry", "kept"]


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: what it reads and consumes, and the body that does its work."""

    name: str
    about: str
    """One line for `--help`, banners and docs: what it does (reference step)."""
    kind: Kind
    reads: tuple[str, ...]
    """Config fields whose values shape its output; a section name ("walk") claims all of it."""
    consumes: tuple[str, ...]
    body: Callable[[StageRun], dict[str, Any]]
    outputs: Callable[[Layout, Config], tuple[Location, ...]]
    """What a redo deletes (its marker goes too)."""
    inputs: Callable[[StageContext], Sequence[str]]
    """The image ids it works on (their digest tells a grown split)."""
    resume_on: tuple[str, ...] = ()
    """Fields whose change continues the stage from its checkpoints instead of redoing it."""

    def fields(self, config: Config) -> dict[str, Any]:
        """The values of every field it reads, by dotted name."""
        names = [name for prefix in self.reads for name in leaf_fields(config, prefix)]
        return {name: config_field(config, name) for name in names}


@dataclass(frozen=True)
class RunOptions:
    force: frozenset[str] = frozenset()
    """Stages to redo whatever their markers say (the CLI adds their downstream)."""
    retrain: bool = False
    retry_failed: bool = False


@dataclass
class Plan:
    """What a stage will do in this run, and why (printed in its banner)."""

    action: Action
    why: str
    identity: str
    fields: dict[str, Any]
    upstream: dict[str, str]
    inputs_digest: str
    inputs_count: int
    changed: list[str] = field(default_factory=list)
    """Changed fields as "name: old -> new"."""


@dataclass
class StageRun:
    """What a stage body gets: the context, its own declaration and the plan it runs under."""

    ctx: StageContext
    stage: Stage
    plan: Plan

    @property
    def config(self) -> Config:
        return self.ctx.config

    @property
    def layout(self) -> Layout:
        return self.ctx.layout

    def log(self, message: str) -> None:
        self.ctx.log(f"[{self.stage.name}] {message}")


def digest(items: Sequence[str]) -> str:
    h = hashlib.sha256()
    for item in sorted(items):
        h.update(item.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def output_identity(marker: dict[str, Any], consumer: Kind) -> str:
    """What a finished stage gives the identity of a stage that consumes it.

    Per-image and training consumers see the producer's settings (and model): new images
    flow through them incrementally. Whole-result consumers also see the content, so new or
    re-emitted rows make them recompute.
    """
    base = marker.get("output_identity", marker.get("identity", ""))
    return base if consumer != "whole" else _hash([base, marker.get("content", "")])


def upstream_identities(ctx: StageContext, stage: Stage) -> dict[str, str]:
    ids = {}
    for name in stage.consumes:
        marker = ctx.marker(name)
        ids[name] = output_identity(marker, stage.kind) if marker else "missing"
    return ids


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def plan_stage(ctx: StageContext, stage: Stage, options: RunOptions) -> Plan:
    """Compare the stage's marker with the current config, upstream and inputs."""
    fields = stage.fields(ctx.config)
    upstream = upstream_identities(ctx, stage)
    ids = list(stage.inputs(ctx))
    inputs_digest = digest(ids)
    payload: dict[str, Any] = {"fields": fields, "upstream": upstream}
    if stage.kind == "whole":
        payload["inputs"] = inputs_digest
    identity = _hash(payload)
    plan = Plan("run", "not run yet", identity, fields, upstream, inputs_digest, len(ids))
    marker = ctx.marker(stage.name)
    if stage.name in options.force:
        plan.action, plan.why = "redo", "forced"
        return plan
    if marker is None:
        return plan
    if marker.get("identity") != identity:
        old = marker.get("fields", {})
        plan.changed = [f"{k}: {_show(old.get(k))} -> {_show(v)}" for k, v in fields.items() if old.get(k) != v]
        moved = [name for name, value in upstream.items() if marker.get("upstream", {}).get(name) != value]
        reasons = plan.changed + [f"{name} changed" for name in moved]
        if stage.kind == "whole" and marker.get("inputs_digest") != inputs_digest:
            reasons.append(f"inputs changed ({marker.get('inputs_count', 0)} -> {len(ids)} images)")
        plan.action, plan.why = "redo", "; ".join(reasons) or "settings changed"
        continuing = [k for k, v in fields.items() if old.get(k) != v]
        if continuing and not moved and set(continuing) <= set(stage.resume_on):
            plan.action = "run"
            plan.why += ": continuing from its checkpoints"
        return plan
    grown = marker.get("inputs_digest") != inputs_digest
    failed = int(marker.get("summary", {}).get("failed", 0) or 0)
    if stage.kind == "images":
        if options.retry_failed and failed:
            plan.action, plan.why = "retry", f"--retry-failed: {failed} failed images"
        elif grown:
            plan.action, plan.why = (
                "new",
                f"the input set changed ({marker.get('inputs_count', 0)} -> {len(ids)} images)",
            )
        else:
            plan.action, plan.why = "skip", "nothing changed"
    elif stage.kind == "train" and grown:
        if options.retrain:
            plan.action, plan.why = "redo", f"--retrain on {len(ids)} images (was {marker.get('inputs_count', 0)})"
        else:
            plan.action, plan.why = (
                "kept",
                (
                    f"model kept: {len(ids)} training images now, "
                    f"{marker.get('inputs_count', 0)} when trained (--retrain to train on them)"
                ),
            )
    else:
        plan.action, plan.why = "skip", "nothing changed"
    return plan


def redo(ctx: StageContext, stage: Stage) -> None:
    """Delete a stage's outputs and marker before it runs again from scratch."""
    for location in (*stage.outputs(ctx.layout, ctx.config), ctx.layout.marker(stage.name)):
        if not exists(location):
            continue
        if location.path.endswith((".json", ".pt", ".yaml")):
            location.fs.delete_file(location.path)
        else:
            delete_tree(location)


def mark_done(
    ctx: StageContext, stage: Stage, plan: Plan, summary: dict[str, Any], seconds: float, content: str = ""
) -> dict[str, Any]:
    """Write the stage's marker; ``content`` is what whole-result consumers see change."""
    model_id = summary.get("model_id", "")
    out = _hash([plan.identity, model_id]) if stage.kind == "train" else plan.identity
    payload = {
        "stage": stage.name,
        "identity": plan.identity,
        "output_identity": out,
        "content": content,
        "fields": plan.fields,
        "upstream": plan.upstream,
        "inputs_digest": plan.inputs_digest,
        "inputs_count": plan.inputs_count,
        "action": plan.action,
        "summary": summary,
        "seconds": round(seconds, 2),
        "version": __version__,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_bytes_atomic(ctx.layout.marker(stage.name), json.dumps(payload, indent=2, default=str).encode())
    return payload


def run_stage(
    ctx: StageContext,
    stage: Stage,
    options: RunOptions,
    position: tuple[int, int] = (1, 1),
    announce: Optional[Callable[[Stage, Plan, tuple[int, int]], None]] = None,
) -> dict[str, Any]:
    """Plan, announce, run and mark one stage; the summary it returns carries ``action``."""
    plan = plan_stage(ctx, stage, options)
    if announce is not None:
        announce(stage, plan, position)
    if plan.action in ("skip", "kept"):
        summary = dict((ctx.marker(stage.name) or {}).get("summary", {}))
        if "processed" in summary:  # nothing processed in this run: all of it was already there
            summary["kept"], summary["processed"] = summary["kept"] + summary["processed"], 0
        return {**summary, "action": plan.action}
    if plan.action == "redo":
        redo(ctx, stage)
    start = time.perf_counter()
    summary = stage.body(StageRun(ctx, stage, plan))
    content = str(summary.pop("content", ""))
    mark_done(ctx, stage, plan, summary, time.perf_counter() - start, content)
    return {**summary, "action": plan.action}
