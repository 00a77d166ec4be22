"""How unsure the labels of one image are, from the confidence map they ship with.

Every shipped pixel has a confidence ``c`` in 0..255: how far its decision is from flipping
(method/scores.py). The image's score ranks images for review, least certain first. Three are
here; `ray-wsis review push` uses ``low-share``, the share of the image's pixels within a quarter
of the range from flipping: a count of the pixels a reviewer would likely redraw. The two others
weigh the doubt ``1 - c / 255`` continuously: its mean (``mean``), and its sum over the labelled
foreground plus that sum (``relative``, an expected IoU loss). docs/review.md measures all three
against each image's true IoU on two sets and says why ``low-share`` is the default.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

LEVELS = 255.0
LOW = 0.25
"""A pixel whose decision margin is under a quarter of its range counts as uncertain (``low-share``)."""


def _doubt(confidence: np.ndarray) -> np.ndarray:
    return 1.0 - confidence.astype(np.float64) / LEVELS


def relative(confidence: np.ndarray, semantic: np.ndarray) -> float:
    """Summed doubt over (foreground pixels + summed doubt): an expected IoU loss, 0..1."""
    doubt = float(_doubt(confidence).sum())
    foreground = float(np.count_nonzero((semantic > 0) & (semantic < 255)))
    return doubt / (foreground + doubt) if doubt > 0 else 0.0


def mean(confidence: np.ndarray, semantic: np.ndarray) -> float:
    """The mean doubt over the image."""
    return float(_doubt(confidence).mean())


def low_share(confidence: np.ndarray, semantic: np.ndarray) -> float:
    """The share of the image's pixels whose margin is under LOW."""
    return float(np.mean(confidence < LOW * LEVELS))


SCORES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "relative": relative,
    "mean": mean,
    "low-share": low_share,
}
DEFAULT = "low-share"
"""The score `ray-wsis review push` ranks by (docs/review.md: why)."""


def image_uncertainty(confidence: np.ndarray, semantic: np.ndarray, score: str = DEFAULT) -> float:
    """The image's uncertainty under ``score`` (higher: less sure)."""
    return SCORES[score](confidence, semantic)
