"""Many images per forward pass: grouping by shape and counting what the passes held.

A forward pass can stack only images of one shape. We group the rows an actor receives by
their (height, width) after any scaling, never pad (padding moves the CAMs near the pad edge),
and split each group into passes of at most ``images_per_forward`` images (each with its
mirror, so a pass holds twice as many samples).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


def shape_groups(shapes: Sequence[tuple[int, int]], images_per_forward: int) -> list[list[int]]:
    """Indices of ``shapes`` grouped by equal shape, each group cut into runs of at most
    ``images_per_forward``; groups in order of first appearance."""
    if images_per_forward < 1:
        raise ValueError(f"images_per_forward must be positive, got {images_per_forward}")
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        by_shape.setdefault(tuple(shape), []).append(i)  # type: ignore[arg-type]
    return [
        indices[start : start + images_per_forward]
        for indices in by_shape.values()
        for start in range(0, len(indices), images_per_forward)
    ]


@dataclass
class ForwardStats:
    """What the forward passes of an actor call held and how long they took."""

    passes: int = 0
    images: int = 0
    seconds: float = 0.0

    @property
    def images_per_forward(self) -> float:
        return self.images / self.passes if self.passes else 0.0

    def timed(self, device: torch.device, images: int) -> _Timed:
        return _Timed(self, device, images)


class _Timed:
    """Context manager adding one pass of ``images`` images and its seconds (device-synchronised)."""

    def __init__(self, stats: ForwardStats, device: torch.device, images: int) -> None:
        self.stats, self.device, self.images = stats, device, images

    def __enter__(self) -> None:
        _sync(self.device)
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        _sync(self.device)
        self.stats.passes += 1
        self.stats.images += self.images
        self.stats.seconds += time.perf_counter() - self.start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))
