"""Exactly-once Parquet shards: the commit protocol of every inference stage.

Each write task gathers at least ``rows_per_file`` rows, sorts them by image_id and writes
one file named after a hash of its ids. A file becomes visible only when complete: local
folders get a temporary name and an atomic rename, object stores a single PUT or a completed
multipart upload. So after any crash the stage folder holds whole files only, and the set of
committed image_ids is exactly what is done. A re-run lists those ids (one column read) and
processes the rest; an image is never in two files because a rerun never sees it again.

We chose our own commit markers over Ray Data's checkpointing (beta in 2.58): it needs the
plan to start at a Read and is bound to Ray Data's internals, while this needs only atomic
file creation, which every store offers, and readers need nothing but "part-*.parquet".
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import time
from collections.abc import Iterable
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink

from ray_wsis.pipeline.schema import ERROR_COLUMN, ERRORS, split_error
from ray_wsis.pipeline.timings import SECONDS, add, sum_timings
from ray_wsis.storage import Location, StorageError, list_files, write_bytes_atomic

PART_PREFIX = "part-"


def shard_name(image_ids: list[str]) -> str:
    digest = hashlib.sha1("\n".join(sorted(image_ids)).encode()).hexdigest()[:16]
    return f"{PART_PREFIX}{digest}.parquet"


def table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def commit(location: Location, table: pa.Table, retries: int) -> str:
    """Write one shard atomically, retrying transient storage errors with backoff."""
    path_location = location.child(shard_name(table.column("image_id").to_pylist()))
    data = table_bytes(table)
    for attempt in range(retries + 1):
        try:
            write_bytes_atomic(path_location, data)
            return path_location.path
        except OSError as exc:
            if attempt == retries:
                raise StorageError(f"cannot write {path_location.uri} after {retries + 1} attempts: {exc}") from None
            time.sleep(min(0.5 * 2**attempt, 8.0))
    raise AssertionError("unreachable")


def split_rows(
    table: pa.Table, stage: str, schema: pa.Schema, metadata: Optional[dict[str, str]] = None
) -> tuple[pa.Table, pa.Table]:
    """(good rows in the stage schema sorted by id, error rows in the errors schema)."""
    errors = table.column(ERROR_COLUMN).fill_null("")
    failed = pc.not_equal(errors, "")
    good = table.filter(pc.invert(failed)).select(schema.names).cast(schema)
    good = good.sort_by("image_id").replace_schema_metadata(metadata or {})
    bad = table.filter(failed)
    kinds_reasons = [split_error(text) for text in bad.column(ERROR_COLUMN).to_pylist()]
    error_table = pa.table(
        {
            "image_id": bad.column("image_id").cast(pa.string()),
            "stage": pa.array([stage] * len(bad), pa.string()),
            "kind": pa.array([k for k, _ in kinds_reasons], pa.string()),
            "reason": pa.array([r for _, r in kinds_reasons], pa.string()),
        },
        schema=ERRORS,
    )
    return good, error_table.sort_by("image_id")


Output = tuple[Location, pa.Schema]
"""A folder and the schema of the rows written to it."""


class ShardSink(Datasink):
    """Ray Data sink writing stage rows and error rows as atomically committed shards.

    ``outputs`` lists the tables a stage writes from the same rows, the commit table last:
    each is written under the same shard name, so a shard of an earlier table without its
    commit-table twin is an interrupted write (:func:`drop_orphans` removes it on resume).
    """

    def __init__(
        self,
        outputs: list[Output],
        errors: Location,
        stage: str,
        rows_per_file: int,
        metadata: Optional[dict[str, str]] = None,
        retries: int = 5,
    ) -> None:
        self.outputs, self.errors, self.stage = outputs, errors, stage
        self.rows_per_file, self.metadata, self.retries = rows_per_file, metadata or {}, retries
        self.timings: dict[str, float] = {}
        """The rows' timing columns summed over every write task, with the writes' own seconds
        (pipeline/timings.py); filled on the driver when the write completes."""

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def get_name(self) -> str:
        return f"Write[{self.stage}]"

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict[str, Any]:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return {"rows": 0, "failed": 0, "skipped": 0, "timings": {}}
        start = time.perf_counter()
        table = pa.concat_tables(tables, promote_options="permissive")
        bad = None
        for location, schema in self.outputs:
            good, bad = split_rows(table, self.stage, schema, self.metadata)
            if good.num_rows:
                commit(location, good, self.retries)
        assert bad is not None
        if bad.num_rows:
            commit(self.errors, bad, self.retries)
        kinds = bad.column("kind").to_pylist()
        timings = add(sum_timings(table), {f"{SECONDS}write": time.perf_counter() - start})
        return {
            "rows": good.num_rows,
            "failed": kinds.count("failed"),
            "skipped": kinds.count("skipped"),
            "timings": timings,
        }

    def on_write_complete(self, write_result: Any) -> None:
        for result in write_result.write_returns:
            self.timings = add(self.timings, (result or {}).get("timings", {}))


def drop_orphans(commit_table: Location, others: Iterable[Location]) -> int:
    """Delete shards of ``others`` whose twin in the commit table was never written; their count."""
    committed = {base_name(p) for p in shard_paths(commit_table)}
    dropped = 0
    for location in others:
        for path in shard_paths(location):
            if base_name(path) not in committed:
                location.fs.delete_file(path)
                dropped += 1
    return dropped


def committed_ids(location: Location) -> list[str]:
    """image_ids of every committed shard in a stage folder (reads one column per file)."""
    ids: list[str] = []
    for path in list_files(location, suffix=".parquet", prefix=PART_PREFIX):
        ids.extend(pq.read_table(path, columns=["image_id"], filesystem=location.fs).column("image_id").to_pylist())
    return ids


def shard_paths(location: Location) -> list[str]:
    return list_files(location, suffix=".parquet", prefix=PART_PREFIX)


def shard_rows(location: Location) -> dict[str, int]:
    """Path -> rows of every committed shard in a stage folder (read from the files' footers)."""
    return {path: pq.read_metadata(path, filesystem=location.fs).num_rows for path in shard_paths(location)}


def shard_names(location: Location) -> list[str]:
    """File names of the committed shards: they name their ids, so they stand for the row set."""
    return [base_name(p) for p in shard_paths(location)]


def read_table(location: Location, columns: Optional[list[str]] = None) -> Optional[pa.Table]:
    """All committed shards of a folder as one table (small tables only: errors, tests)."""
    paths = shard_paths(location)
    if not paths:
        return None
    return pa.concat_tables(
        [pq.read_table(p, columns=columns, filesystem=location.fs) for p in paths], promote_options="permissive"
    )


def base_name(path: str) -> str:
    return posixpath.basename(path)
