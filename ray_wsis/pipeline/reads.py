"""Reading a previous stage's shards back into Ray Data, for the stages and trainings after it.

Kept free of torch on purpose: ``keep_ids`` runs in the read tasks of every later stage, and a
Ray worker imports the module of each function it runs. When it lived in inference.py (which
imports the model actors), every read worker imported torch and torchvision first: 5-6 s of CPU
per worker, taken from the actors' start-up on a 2-core box (bench/scaling.py, /proc CPU times:
a read/decode/write worker used 5.9 s of CPU for 8 images).
"""

from __future__ import annotations

from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import ray

from ray_wsis.pipeline.sink import shard_paths
from ray_wsis.storage import Location

READ_BLOCK_ROWS = 16
"""Block size for reads that feed CPU tasks (training batches, evaluation), not an actor pool."""


def keep_ids(batch: pa.Table, ids: list[str]) -> pa.Table:
    return batch.filter(pc.is_in(batch.column("image_id"), value_set=pa.array(ids, pa.string())))


def read_stage(location: Location, ids: list[str], rows_per_block: int) -> Optional[ray.data.Dataset]:
    """The previous stage's rows for `ids`, in blocks of `rows_per_block` rows.

    A shard file is one block when read; without the split, a 1000-row shard fed a single actor
    while the others idled (bench/scaling.py: 2 actors ran at 0.91x of 1 before this split).
    """
    paths = shard_paths(location)
    if not paths:
        return None
    ds = ray.data.read_parquet(paths, filesystem=location.fs)
    ds = ds.map_batches(keep_ids, fn_kwargs={"ids": ids}, batch_format="pyarrow")
    return ds.repartition(target_num_rows_per_block=max(1, rows_per_block))
