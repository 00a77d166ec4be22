"""`ray-wsis review push`: the least certain images, with our labels as predictions, to Label Studio.

Ranks every shipped image that no reviewer has labelled and that was not pushed to the same
project before by its uncertainty (review/uncertainty.py), uploads the K highest through the API
(so a remote server works the same), and imports one task per image: ``data.image`` the uploaded
file, ``data.image_id`` ours, our semantic mask split into one brush region per object as the
prediction (its ``model_version`` is the label version: the identity of the cut that made it).
What was pushed is recorded in ``<output>/review/pushed.json``; the key is never written.
"""

from __future__ import annotations

import json
import posixpath
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from ray_wsis.labels import decode_row, shard_files
from ray_wsis.masks import decode_label_png
from ray_wsis.pipeline.context import StageContext
from ray_wsis.review.brush import label_config, label_names, prediction_result, regions
from ray_wsis.review.client import LabelStudio, ReviewError
from ray_wsis.review.uncertainty import DEFAULT, image_uncertainty
from ray_wsis.storage import exists, read_bytes, resolve, write_bytes_atomic

SCORE_COLUMNS = ["image_id", "semantic", "confidence", "source"]


@dataclass(frozen=True)
class Ranked:
    image_id: str
    uncertainty: float
    path: str


def read_pushed(ctx: StageContext) -> dict[str, Any]:
    """pushed.json: the server, its projects and every task pushed (empty when none was)."""
    location = ctx.layout.review_pushed
    if not exists(location):
        return {"url": "", "projects": [], "tasks": []}
    pushed: dict[str, Any] = json.loads(read_bytes(location))
    return pushed


def rank(ctx: StageContext, leave_out: set[str], score: str = DEFAULT) -> list[Ranked]:
    """Every shipped, model-labelled image not in ``leave_out``, least certain first."""
    location, paths = shard_files(ctx.config.output, ctx.config.storage)
    out = []
    for path in paths:
        names = set(pq.read_schema(path, filesystem=location.fs).names)  # labels made before `source` lack it
        columns = [c for c in SCORE_COLUMNS if c in names]
        for row in pq.read_table(path, columns=columns, filesystem=location.fs).to_pylist():
            if row["image_id"] in leave_out or row.get("source") == "human" or not row.get("confidence"):
                continue
            doubt = image_uncertainty(decode_label_png(row["confidence"]), decode_label_png(row["semantic"]), score)
            out.append(Ranked(row["image_id"], doubt, path))
    return sorted(out, key=lambda r: (-r.uncertainty, r.image_id))


def find_or_create_project(client: LabelStudio, title: str, class_names: tuple[str, ...]) -> dict[str, Any]:
    """The project titled ``title`` (its labels must be the dataset's classes), else a new one."""
    same = [p for p in client.projects() if p.get("title") == title]
    if len(same) > 1:
        raise ReviewError(f"Label Studio has {len(same)} projects titled {title!r}: pass a unique --project")
    if not same:
        return client.create_project(title, label_config(class_names))
    project = client.project(int(same[0]["id"]))
    labels = label_names(project.get("label_config", ""))
    if labels != set(class_names):
        raise ReviewError(
            f"project {title!r} labels {sorted(labels)}, not this dataset's classes {sorted(class_names)}: "
            f"pass another --project"
        )
    return project


CHOICES = ("least-certain", "random")
"""How push picks: the least certain first, or a uniform sample (an unbiased audit of the labels)."""


def push(
    ctx: StageContext,
    client: LabelStudio,
    worst: int,
    title: str,
    choose: str = "least-certain",
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Push ``worst`` images (the least certain, or a random sample); returns what was pushed
    (also recorded in pushed.json)."""
    if worst < 1:
        raise ReviewError(f"--worst {worst}: push at least one image")
    if choose not in CHOICES:
        raise ReviewError(f"--choose {choose!r} is not one of {', '.join(CHOICES)}")
    start = time.perf_counter()
    client.whoami()
    pushed = read_pushed(ctx)
    if pushed["url"] and pushed["url"] != client.url:
        raise ReviewError(
            f"{ctx.config.output} was reviewed on {pushed['url']}, not {client.url}: one output, one server"
        )
    cut = ctx.marker("cut-labels")
    if cut is None:
        raise ReviewError(f"{ctx.config.output} has no labels yet: run the pipeline (ray-wsis run) first")
    class_names = ctx.source.class_names
    project = find_or_create_project(client, title, class_names)
    project_id = int(project["id"])
    here = {t["image_id"] for t in pushed["tasks"] if t["project_id"] == project_id}
    ranked = rank(ctx, here | set(ctx.human_digests()))
    if choose == "random":
        picked = random.Random(seed).sample(range(len(ranked)), min(worst, len(ranked)))
        chosen = [ranked[i] for i in sorted(picked)]
    else:
        chosen = ranked[:worst]
    if not chosen:
        log(f"nothing to push: every labelled image is already in project {title!r} or reviewed")
        return {"project_id": project_id, "pushed": 0}
    version = f"ray_wsis-{cut['identity']}"
    rows = _rows(ctx, chosen)
    d = ctx.config.dataset
    records = {r.image_id: r for r in ctx.splits(d.infer_split, d.calibration_split or d.infer_split).records}
    tasks = []
    for item in chosen:
        row = rows[item.image_id]
        record = records.get(item.image_id)
        if record is None:
            raise ReviewError(f"image {item.image_id} is no longer in the dataset's splits")
        name = f"{item.image_id}{posixpath.splitext(record.uri)[1] or '.png'}"
        file = client.upload(project_id, name, read_bytes(resolve(record.uri, ctx.config.storage)))
        image_url = file if file.startswith(("/", "http://", "https://")) else f"/data/{file}"
        result = prediction_result(regions(row["semantic"], row["masks"], row["category_ids"]), class_names)
        tasks.append(
            {
                "data": {"image": image_url, "image_id": item.image_id, "uncertainty": round(item.uncertainty, 4)},
                "predictions": [
                    {"model_version": version, "score": round(1.0 - item.uncertainty, 4), "result": result}
                ],
            }
        )
    client.import_tasks(project_id, tasks)
    task_ids = _task_ids(client, project_id, {t.image_id for t in chosen})
    entries = [
        {
            "image_id": item.image_id,
            "task_id": task_ids[item.image_id],
            "project_id": project_id,
            "height": int(rows[item.image_id]["height"]),
            "width": int(rows[item.image_id]["width"]),
            "uncertainty": round(item.uncertainty, 6),
            "label_version": version,
            "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        for item in chosen
    ]
    projects = [p for p in pushed["projects"] if p["id"] != project_id] + [{"id": project_id, "title": title}]
    state = {"url": client.url, "projects": projects, "tasks": pushed["tasks"] + entries}
    write_bytes_atomic(ctx.layout.review_pushed, json.dumps(state, indent=2).encode())
    seconds = time.perf_counter() - start
    log(
        f"pushed {len(entries)} images ({choose}) to project {title!r} (id {project_id}) at {client.url}, "
        f"uncertainty {entries[0]['uncertainty']:.3f} .. {entries[-1]['uncertainty']:.3f} of {len(ranked)} candidates "
        f"in {seconds:.1f} s"
    )
    return {"project_id": project_id, "pushed": len(entries), "tasks": entries, "seconds": seconds}


def _rows(ctx: StageContext, chosen: list[Ranked]) -> dict[str, dict[str, Any]]:
    """The chosen images' decoded label rows."""
    location = ctx.layout.pseudo_labels
    wanted = {r.image_id for r in chosen}
    out: dict[str, dict[str, Any]] = {}
    for path in sorted({r.path for r in chosen}):
        for row in pq.read_table(path, filesystem=location.fs).to_pylist():
            if row["image_id"] in wanted:
                out[row["image_id"]] = decode_row(row)
    return out


def _task_ids(client: LabelStudio, project_id: int, image_ids: set[str]) -> dict[str, int]:
    """The newest task of each pushed image (the import answers with ids but not which is which)."""
    found: dict[str, int] = {}
    for task in client.tasks(project_id):
        image_id = task.get("data", {}).get("image_id")
        if image_id in image_ids:
            found[image_id] = max(found.get(image_id, 0), int(task["id"]))
    missing = image_ids - found.keys()
    if missing:
        raise ReviewError(f"Label Studio did not create tasks for {len(missing)} images (e.g. {sorted(missing)[0]})")
    return found
