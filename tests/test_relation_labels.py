"""Reading the relation labels a cut keeps: only the shards that hold the wanted ids."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray_wsis.masks import encode_label_png
from ray_wsis.pipeline.schema import IR_LABELS, rows_to_table
from ray_wsis.pipeline.sink import commit, read_table
from ray_wsis.stages import relation_labels
from ray_wsis.stages.relation_labels import read_relation_labels
from ray_wsis.storage import resolve


def _label(k: int) -> np.ndarray:
    rng = np.random.default_rng(k)
    return rng.choice(np.array([0, 3, 255], np.uint8), size=(5 + k % 3, 7))


@pytest.fixture
def shards(tmp_path):
    """Three relation-label shards of four images each (img00..img11); img05 failed (no label)."""
    location = resolve(str(tmp_path / "ir_labels"))
    for shard in range(3):
        rows = []
        for k in range(shard * 4, shard * 4 + 4):
            label = _label(k)
            png = None if k == 5 else encode_label_png(label)
            rows.append(
                {
                    "image_id": f"img{k:02d}",
                    "uri": "",
                    "height": label.shape[0],
                    "width": 7,
                    "labels": [3],
                    "ir_label": png,
                }
            )
        commit(location, rows_to_table(rows, IR_LABELS), retries=0)
    return location


def test_rows_without_their_shard_read_only_the_shards_that_hold_them(shards, monkeypatch):
    everything = {r["image_id"]: r["ir_label"] for r in read_table(shards).to_pylist()}  # brute force
    label_reads: list[str] = []
    read = pq.read_table

    def counted(path, *args, **kwargs):
        if "ir_label" in (kwargs.get("columns") or []):
            label_reads.append(path)
        return read(path, *args, **kwargs)

    monkeypatch.setattr(relation_labels.pq, "read_table", counted)
    monkeypatch.setattr(relation_labels, "_INDEXES", {})
    wanted = ["img01", "img02", "img10", "elsewhere"]
    found = read_relation_labels(shards, wanted)

    assert set(found) == {"img01", "img02", "img10"}  # "elsewhere" has no row
    for image_id, label in found.items():
        assert np.array_equal(label, _label(int(image_id[3:]))), image_id
        assert everything[image_id] is not None
    assert everything["img05"] is None
    assert len(label_reads) == 2 and len(set(label_reads)) == 2  # the shards of img00-03 and img08-11

    label_reads.clear()
    assert set(read_relation_labels(shards, ["img05", "img06"])) == {"img06"}  # img05 has no label
    assert len(label_reads) == 1  # the index is kept: one shard read


def test_a_scores_shard_of_the_same_name_reads_that_shard_only(shards):
    first = sorted(p.rsplit("/", 1)[-1] for p in relation_labels.shard_paths(shards))[0]
    ids = read_table(shards).column("image_id").to_pylist()
    from_same = read_relation_labels(shards, ids, f"/elsewhere/scores/{first}")
    in_first = pq.read_table(shards.child(first).path).column("image_id").to_pylist()
    assert set(from_same) == {i for i in in_first if i != "img05"}
