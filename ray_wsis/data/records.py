"""What every dataset format hands to the pipeline: image records and ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

import numpy as np


class DatasetError(ValueError):
    """A user error in a dataset (missing root, empty split, malformed manifest row...)."""


@dataclass(frozen=True)
class ImageRecord:
    """One image: a unique id, where its bytes are, and its image-level class ids (1-based)."""

    image_id: str
    uri: str
    class_ids: tuple[int, ...]


@dataclass
class GroundTruth:
    """Pixel ground truth of one image, for evaluation only.

    semantic: (H, W) uint8, 0 background, 1..C classes, 255 void; or None.
    instance_masks: (N, H, W) bool; instance_class_ids: (N,) 1-based class ids.
    """

    semantic: Optional[np.ndarray] = None
    instance_masks: Optional[np.ndarray] = None
    instance_class_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class DatasetSource(Protocol):
    """A dataset format. Implementations must be picklable: Ray tasks call them remotely."""

    @property
    def class_names(self) -> tuple[str, ...]:
        """The dataset's class names; class id k is class_names[k - 1]."""
        ...

    def records(self, split: str) -> list[ImageRecord]:
        """The split's images, sorted by image_id; raises DatasetError for a missing split."""

    def has_ground_truth(self, split: str) -> bool:
        """Whether :meth:`ground_truth` can answer for this split's images."""

    def ground_truth(self, image_id: str) -> Optional[GroundTruth]:
        """The image's ground truth, or None if it has none."""
