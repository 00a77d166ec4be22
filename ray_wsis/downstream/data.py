"""Ray Data inputs of downstream training: pseudo-label shards -> augmented training rows.

The augmentation runs in CPU ``map_batches`` tasks (``batches.py``, no torch); nothing is
written to disk. DeepLab rows go through ``iter_torch_batches``; the Train worker rebuilds
Mask R-CNN's torch tensors from the byte columns with :func:`detection_inputs`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pyarrow.parquet as pq
import torch

from ray_wsis.config import Config
from ray_wsis.downstream.batches import instance_batch, semantic_batch
from ray_wsis.labels import read_pseudo_labels, shard_files
from ray_wsis.storage import join

if TYPE_CHECKING:
    import ray


def labels_uri(config: Config) -> str:
    """downstream.labels, else the run's own <output>/pseudo_labels."""
    return config.downstream.labels or join(config.output, "pseudo_labels")


def count_rows(config: Config) -> int:
    """Rows in the pseudo-label shards (one column read per file), for the poly lr schedule."""
    location, paths = shard_files(labels_uri(config), config.storage)
    return sum(pq.read_table(p, columns=["image_id"], filesystem=location.fs).num_rows for p in paths)


def detection_inputs(
    batch: dict[str, Any], device: torch.device
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A numpy batch of :func:`instance_batch` rows -> Mask R-CNN's images and list-of-dict targets."""
    images, targets = [], []
    for i in range(len(batch["count"])):
        h, w, n = int(batch["height"][i]), int(batch["width"][i]), int(batch["count"][i])
        image = np.frombuffer(batch["image"][i], np.uint8).reshape(3, h, w)
        bits = np.unpackbits(np.frombuffer(batch["masks"][i], np.uint8), count=n * h * w)
        boxes = np.frombuffer(batch["boxes"][i], np.float32).reshape(n, 4)
        labels = np.frombuffer(batch["labels"][i], np.int64)
        images.append(torch.from_numpy(image.copy()).to(device).float().div_(255.0))
        targets.append(
            {
                "boxes": torch.from_numpy(boxes.copy()).to(device),
                "labels": torch.from_numpy(labels.copy()).to(device),
                "masks": torch.from_numpy(bits.reshape(n, h, w)).to(device),
            }
        )
    return images, targets


# --------------------------------------------------------------------------- datasets
def training_dataset(config: Config, task: str) -> ray.data.Dataset:
    """Shards -> decoded rows with images -> augmented rows, streamed (no conversion step).

    No all-to-all shuffle (it would hold every decoded image before the first step): rows
    are mixed by the workers' local shuffle buffer.
    """
    d = config.downstream
    ds = read_pseudo_labels(
        labels_uri(config), storage=config.storage, min_score=d.min_score, with_images=True, dataset_config=config
    )
    if task == "semantic":
        return ds.map_batches(
            semantic_batch,
            fn_kwargs={
                "crop_size": d.crop_size,
                "rescale": tuple(d.rescale),
                "min_confidence": d.min_confidence if d.ignore_uncertain else 0.0,
            },
            batch_format="numpy",
            batch_size=16,
            num_cpus=1,
        )
    return ds.map_batches(
        instance_batch,
        fn_kwargs={"crop_size": d.crop_size, "min_score": d.min_score},
        batch_format="numpy",
        batch_size=16,
        num_cpus=1,
    )


def eval_rows(config: Config, split: str, limit: Optional[int] = None) -> list[dict[str, str]]:
    """(image_id, uri) of the split to evaluate on, the first `limit` when given."""
    from ray_wsis.data.sources import build_source

    records = build_source(config.dataset, config.storage).records(split)
    records = records[:limit] if limit else records
    return [{"image_id": r.image_id, "uri": r.uri} for r in records]
