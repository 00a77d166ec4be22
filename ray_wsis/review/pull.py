"""`ray-wsis review pull`: the reviewers' submitted masks, back into the output as ground truth.

Reads every task that `review push` recorded, takes each task's latest submitted annotation
(cancelled ones and drafts are not submissions; a task annotated twice counts once, the latest;
an image pushed to two projects keeps its latest annotation), decodes its brush regions
(review/brush.py) and writes the whole set to ``<output>/review/human_labels.parquet``
(data/reviewed.py). The table is rewritten only when a mask changed, so pulling twice changes
nothing. The CLI then runs the pipeline with ``dataset.calibration_split: review``: the few-shot
calibration on these masks, the cut (reviewed images ship their masks), evaluation without them.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ray_wsis.data.reviewed import HUMAN_LABELS, human_label_row, read_human_table
from ray_wsis.pipeline.context import StageContext
from ray_wsis.review.brush import decode_result
from ray_wsis.review.client import LabelStudio, ReviewError
from ray_wsis.review.push import read_pushed
from ray_wsis.storage import write_bytes_atomic


def latest_submission(task: dict[str, Any]) -> dict[str, Any] | None:
    """The task's latest submitted annotation (None when it has none)."""
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return max(done, key=lambda a: (str(a.get("updated_at") or ""), int(a["id"]))) if done else None


def fetch(ctx: StageContext, client: LabelStudio) -> list[dict[str, Any]]:
    """Rows of :data:`HUMAN_LABELS`, one per reviewed image, sorted by image_id."""
    pushed = read_pushed(ctx)
    if not pushed["tasks"]:
        raise ReviewError(f"nothing was pushed from {ctx.config.output}: run `ray-wsis review push` first")
    if pushed["url"] != client.url:
        raise ReviewError(f"{ctx.config.output} was pushed to {pushed['url']}, not {client.url}")
    client.whoami()
    sizes = {(t["project_id"], t["task_id"]): (t["image_id"], t["height"], t["width"]) for t in pushed["tasks"]}
    class_names = ctx.source.class_names
    best: dict[str, tuple[tuple[str, int], dict[str, Any]]] = {}
    for project in pushed["projects"]:
        project_id = int(project["id"])
        client.project(project_id)  # a deleted project is one clear line, not an empty pull
        for task in client.tasks(project_id):
            known = sizes.get((project_id, int(task["id"])))
            annotation = latest_submission(task)
            if known is None or annotation is None:
                continue
            image_id, height, width = known
            try:
                label = decode_result(annotation.get("result") or [], class_names, height, width)
            except ReviewError as exc:
                raise ReviewError(f"task {task['id']} (image {image_id}): {exc}") from None
            key = (str(annotation.get("updated_at") or ""), int(annotation["id"]))
            if image_id not in best or key > best[image_id][0]:
                origin = {
                    "project_id": project_id,
                    "task_id": int(task["id"]),
                    "annotation_id": int(annotation["id"]),
                    "updated_at": str(annotation.get("updated_at") or ""),
                }
                best[image_id] = (key, human_label_row(image_id, label, origin))
    return [best[i][1] for i in sorted(best)]


def store(ctx: StageContext, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Write the table when a mask changed; counts of new, changed and unchanged images."""
    old_table = read_human_table(ctx.layout.human_labels, ["image_id", "digest"])
    old = {} if old_table is None else dict(zip(*(old_table.column(c).to_pylist() for c in ("image_id", "digest"))))
    new = {r["image_id"]: r["digest"] for r in rows}
    counts = {
        "images": len(rows),
        "new": sum(i not in old for i in new),
        "changed": sum(i in old and old[i] != d for i, d in new.items()),
        "unchanged": sum(old.get(i) == d for i, d in new.items()),
        "gone": sum(i not in new for i in old),
    }
    if new != old:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=HUMAN_LABELS), buffer)
        write_bytes_atomic(ctx.layout.human_labels, buffer.getvalue())
    return counts


def pull(ctx: StageContext, client: LabelStudio, log: Callable[[str], None] = print) -> dict[str, int]:
    """Fetch and store the submitted masks; the counts (``images``: reviewed images in total)."""
    start = time.perf_counter()
    rows = fetch(ctx, client)
    counts = store(ctx, rows)
    pending = len(read_pushed(ctx)["tasks"]) - counts["images"]
    log(
        f"pulled {counts['images']} reviewed images ({counts['new']} new, {counts['changed']} changed, "
        f"{counts['unchanged']} unchanged; {max(0, pending)} pushed images not reviewed yet) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return counts
