"""What the whole-result stages (calibrate, cut-labels, evaluate) share: CPU tasks over a stage's
stored rows or shards whose few rows each (sums, counts) come back to the driver, with the stage's
progress line over the images they covered (pipeline/progress.py ``Progress``). No network runs
in them; like the modules of the tasks they run, this one imports no torch.
"""

from __future__ import annotations

from typing import Any

import ray

from ray_wsis.pipeline.progress import QUIET, Progress, counted
from ray_wsis.pipeline.reads import READ_BLOCK_ROWS, read_stage
from ray_wsis.pipeline.sink import committed_ids, shard_rows
from ray_wsis.storage import Location


def map_rows(
    location: Location, ids: list[str], fn: Any, progress: Progress = QUIET, what: str = "", **kwargs: Any
) -> list[dict[str, Any]]:
    """``fn`` as CPU tasks (one CPU, 32 rows a batch) over the stored rows of ``ids``: its rows, all
    of them; ``progress`` shows the pass as ``what`` over the stored ones of ``ids``."""
    ds = read_stage(location, ids, READ_BLOCK_ROWS)
    if ds is None:
        return []
    total = len(set(ids).intersection(committed_ids(location))) if progress.enabled else 0
    return progress.take_all(counted(ds, fn, kwargs, batch_size=32, num_cpus=1), total, what)


def map_shards(
    location: Location, fn: Any, progress: Progress = QUIET, what: str = "", **kwargs: Any
) -> list[dict[str, Any]]:
    """``fn`` over a stage folder's shards, one CPU task a shard (its path in a "path" column,
    its rows in "rows"): its rows, all of them; ``progress`` counts each shard's rows."""
    rows = shard_rows(location)
    if not rows:
        return []
    ds = ray.data.from_items([{"path": p, "rows": n} for p, n in rows.items()], override_num_blocks=len(rows))
    return progress.take_all(counted(ds, fn, kwargs, weight="rows", batch_size=1, num_cpus=1), sum(rows.values()), what)
