"""Where an inference stage's time goes: per-row timing columns, summed by the shard sink.

Each operator of an inference stage adds its seconds to the rows it emits, as extra columns
(``seconds_<part>``; a batch-wide time is spread evenly over the batch's rows) and carries the
columns of its input rows forward. The sink sums them per write task and the driver adds the
write tasks up (:class:`~ray_wsis.pipeline.sink.ShardSink`), so a stage's marker records its
model, walk, post-processing and I/O seconds and the images its forward passes held, with no
side channel. The stage schemas do not name these columns, so no shard stores them.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

SECONDS = "seconds_"
FORWARD_PASSES = "forward_passes"
FORWARD_IMAGES = "forward_images"


def is_timing(name: str) -> bool:
    return name.startswith(SECONDS) or name in (FORWARD_PASSES, FORWARD_IMAGES)


def sum_timings(table: pa.Table) -> dict[str, float]:
    """The sum of every timing column of ``table``."""
    out: dict[str, float] = {}
    for name in table.column_names:
        if is_timing(name):
            out[name] = float(sum(v for v in table.column(name).to_pylist() if v is not None))
    return out


def add(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {*a, *b}}


def with_timings(table: pa.Table, totals: dict[str, float], carried: pa.Table | None = None) -> pa.Table:
    """``table`` with ``totals`` (plus the timing columns of ``carried``, the operator's input)
    spread evenly over its rows as timing columns."""
    totals = add(totals, sum_timings(carried)) if carried is not None else totals
    n = table.num_rows
    for name, value in sorted(totals.items()):
        column = pa.array([value / n] * n, pa.float64()) if n else pa.array([], pa.float64())
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, column)
        else:
            table = table.append_column(name, column)
    return table


def actor_timings(stats: Any, before: Any, start: float) -> dict[str, float]:
    """A model actor call's totals: forward seconds and passes since ``before`` (a copy of the
    predictor's ForwardStats), and the call's wall time since ``start``."""
    return {
        f"{SECONDS}model": stats.seconds - before.seconds,
        f"{SECONDS}actor": time.perf_counter() - start,
        FORWARD_PASSES: float(stats.passes - before.passes),
        FORWARD_IMAGES: float(stats.images - before.images),
    }


def summarise(totals: dict[str, float], images: int) -> dict[str, Any]:
    """The ``timing`` entry of a stage summary: seconds per part (summed over workers, so they can
    exceed the wall time), images per forward pass and the share of the model actors' time spent
    in forward passes."""
    seconds = {k[len(SECONDS) :]: round(v, 2) for k, v in sorted(totals.items()) if k.startswith(SECONDS)}
    out: dict[str, Any] = {"seconds": seconds, "images": images}
    passes = totals.get(FORWARD_PASSES, 0.0)
    if passes:
        out["images_per_forward"] = round(totals.get(FORWARD_IMAGES, 0.0) / passes, 2)
    if totals.get(f"{SECONDS}actor"):
        out["forward_share"] = round(totals.get(f"{SECONDS}model", 0.0) / totals[f"{SECONDS}actor"], 3)
    return out
