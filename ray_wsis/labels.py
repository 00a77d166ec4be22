"""Read pseudo-labels: a streaming Ray Dataset, or plain pyarrow/torch without Ray.

    ds = read_pseudo_labels("s3://bucket/run/pseudo_labels", min_score=0.1, with_images=True)
    for batch in ds.iter_batches(batch_size=8): ...

    dataset = PseudoLabelDataset("./out/pseudo_labels")   # torch.utils.data.Dataset, no Ray
    sample = dataset[0]   # image_id, labels, semantic (H, W), masks (N, H, W), category_ids, scores, boxes

`uri` may be a run's output folder (its pseudo_labels/ is used) or the shard folder itself.
A decoded row names things as the Parquet schema does (pipeline/schema.py): ``labels`` are the
image-level class ids, ``category_ids`` the instances' classes (each instance's ``category_id``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_wsis.config import StorageConfig
from ray_wsis.masks import decode_label_png, decode_rle
from ray_wsis.storage import Location, StorageError, exists, list_files, resolve

if TYPE_CHECKING:
    import ray

PART_PREFIX = "part-"


def shard_location(uri: str, storage: Optional[StorageConfig] = None) -> Location:
    """The folder holding part-*.parquet: `uri` itself or `uri`/pseudo_labels."""
    location = resolve(uri, storage)
    if list_files(location, ".parquet", PART_PREFIX):
        return location
    nested = location.child("pseudo_labels")
    if exists(nested) and list_files(nested, ".parquet", PART_PREFIX):
        return nested
    raise StorageError(
        f"no pseudo-labels in {uri}: no part-*.parquet in it or in its pseudo_labels/ "
        f"(a run's cut-labels stage writes them; see ray-wsis status {uri.rstrip('/')})"
    )


def shard_files(uri: str, storage: Optional[StorageConfig] = None) -> tuple[Location, list[str]]:
    location = shard_location(uri, storage)
    return location, list_files(location, ".parquet", PART_PREFIX)


def decode_row(row: dict[str, Any], min_score: float = 0.0) -> dict[str, Any]:
    """One Parquet row -> arrays: labels (the image-level class ids), semantic (H, W) uint8,
    confidence (H, W) uint8 0..255 (how far each pixel's decision is from flipping; None in labels
    made before it existed), per instance masks (N, H, W) bool, boxes (N, 4) xyxy, category_ids
    and scores, and source ("model", or "human" for a reviewer's masks)."""
    h, w = int(row["height"]), int(row["width"])
    instances = [i for i in (row.get("instances") or []) if i["score"] >= min_score]
    masks = np.stack([decode_rle(i["rle"]) for i in instances]) if instances else np.zeros((0, h, w), bool)
    boxes = np.asarray(
        [[i["bbox"][0], i["bbox"][1], i["bbox"][0] + i["bbox"][2], i["bbox"][1] + i["bbox"][3]] for i in instances],
        np.float32,
    ).reshape(-1, 4)
    return {
        "image_id": row["image_id"],
        "height": h,
        "width": w,
        "labels": np.asarray(row.get("labels") or [], np.int64),
        "semantic": decode_label_png(row["semantic"]),
        "confidence": decode_label_png(row["confidence"]) if row.get("confidence") else None,
        "masks": masks,
        "boxes": boxes,
        "category_ids": np.asarray([i["category_id"] for i in instances], np.int64),
        "scores": np.asarray([i["score"] for i in instances], np.float32),
        "source": row.get("source") or "model",
    }


def iter_pseudo_labels(
    uri: str, storage: Optional[StorageConfig] = None, min_score: float = 0.0, decode: bool = True
) -> Iterator[dict[str, Any]]:
    """Rows of every shard, in file order, with plain pyarrow (no Ray)."""
    location, paths = shard_files(uri, storage)
    for path in paths:
        for row in pq.read_table(path, filesystem=location.fs).to_pylist():
            yield decode_row(row, min_score) if decode else row


@dataclass
class _Index:
    path: str
    row: int


class PseudoLabelDataset:
    """A map-style ``torch.utils.data.Dataset`` over the shards (rows read lazily per file)."""

    def __init__(
        self,
        uri: str,
        storage: Optional[StorageConfig] = None,
        min_score: float = 0.0,
        image_root: Optional[dict[str, str]] = None,
    ) -> None:
        self.location, paths = shard_files(uri, storage)
        self.min_score = min_score
        self.index: list[_Index] = []
        for path in paths:
            ids = pq.read_table(path, columns=["image_id"], filesystem=self.location.fs).column("image_id")
            self.index.extend(_Index(path, i) for i in range(len(ids)))
        self._cache: tuple[str, Optional[pa.Table]] = ("", None)
        self.image_uris = image_root or {}

    def __len__(self) -> int:
        return len(self.index)

    def _table(self, path: str) -> pa.Table:
        if self._cache[0] != path:
            self._cache = (path, pq.read_table(path, filesystem=self.location.fs))
        return self._cache[1]  # type: ignore[return-value]

    def __getitem__(self, i: int) -> dict[str, Any]:
        entry = self.index[i]
        row = self._table(entry.path).slice(entry.row, 1).to_pylist()[0]
        return decode_row(row, self.min_score)


def _decode_batch(
    batch: pa.Table,
    min_score: float,
    with_images: bool,
    image_uris: Optional[dict[str, str]],
    storage: Optional[dict[str, Any]],
) -> dict[str, Any]:
    from ray_wsis.data.records import ImageRecord
    from ray_wsis.data.sources import load_image

    rows = [decode_row(r, min_score) for r in batch.to_pylist()]
    out: dict[str, Any] = {k: np.empty(len(rows), dtype=object) for k in rows[0]} if rows else {}
    for i, row in enumerate(rows):
        for key, value in row.items():
            out[key][i] = value
    if with_images and rows:
        cfg = StorageConfig(**(storage or {}))
        out["image"] = np.empty(len(rows), dtype=object)
        for i, row in enumerate(rows):
            uri = (image_uris or {}).get(row["image_id"])
            if uri is None:
                raise KeyError(f"no image URI for {row['image_id']}: pass image_uris or a dataset config")
            out["image"][i] = load_image(ImageRecord(row["image_id"], uri, ()), cfg)
    return out


def read_pseudo_labels(
    uri: str,
    *,
    storage: Optional[StorageConfig] = None,
    min_score: float = 0.0,
    with_images: bool = False,
    image_uris: Optional[dict[str, str]] = None,
    dataset_config: Optional[Any] = None,
) -> ray.data.Dataset:
    """Stream the shards as a Ray Dataset with decoded masks (CPU map_batches).

    Columns: image_id, height, width, labels, semantic, confidence, masks, boxes, category_ids,
    scores, source [, image]. `min_score` drops weaker instances. With `with_images`, images are
    read from `image_uris` (image_id -> URI) or, given `dataset_config` (a Config), from its dataset.
    """
    import dataclasses

    import ray

    location, paths = shard_files(uri, storage)
    if with_images and image_uris is None and dataset_config is not None:
        from ray_wsis.data.sources import build_source

        source = build_source(dataset_config.dataset, dataset_config.storage)
        splits = {dataset_config.dataset.infer_split, dataset_config.dataset.train_split}
        image_uris = {r.image_id: r.uri for s in splits for r in source.records(s)}
    ds = ray.data.read_parquet(paths, filesystem=location.fs)
    storage_dict = dataclasses.asdict(storage) if storage else None
    return ds.map_batches(
        _decode_batch,
        fn_kwargs={
            "min_score": min_score,
            "with_images": with_images,
            "image_uris": image_uris,
            "storage": storage_dict,
        },
        batch_format="pyarrow",
        batch_size=16,
    )
