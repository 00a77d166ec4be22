"""From walked stride-4 maps to full-resolution semantic labels and instances.

irn make_sem_seg_labels.py / make_ins_seg_labels.py: upsample the walked maps x4 (bilinear),
crop to the image, divide by the global max, put a constant background plane in front and
take the argmax. We upsample a few channels at a time and keep a running max/argmax, so
memory stays O(H*W) however many (class x cluster) channels an image has; the result is the
same argmax (ties go to background, as the reference's padded argmax).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ray_wsis.method.path_index import boundary_to_affinity, path_index
from ray_wsis.method.random_walk import WalkOperator

_CHUNK = 8


@dataclass
class Thresholded:
    """Full-resolution argmax: label 0 = background, c + 1 = channel c; value = max / global max."""

    label: np.ndarray
    value: np.ndarray


def argmax_with_background(
    maps: torch.Tensor, height: int, width: int, bg_threshold: float, scale: int = 4
) -> Thresholded:
    """Upsample (C, h, w) maps by `scale`, crop to (height, width), normalise, threshold, argmax."""
    best = torch.full((height, width), -1.0, device=maps.device)
    arg = torch.zeros((height, width), dtype=torch.long, device=maps.device)
    for start in range(0, maps.shape[0], _CHUNK):
        chunk = maps[start : start + _CHUNK].float()
        up = F.interpolate(chunk[None], scale_factor=scale, mode="bilinear", align_corners=False)[0, :, :height, :width]
        value, index = up.max(dim=0)
        better = value > best
        best = torch.where(better, value, best)
        arg = torch.where(better, index + start, arg)
    peak = best.max() if maps.shape[0] else best.new_tensor(0.0)
    if peak <= 0:
        zeros = np.zeros((height, width), dtype=np.int64)
        return Thresholded(zeros, zeros.astype(np.float32))
    normalised = best / peak
    label = torch.where(normalised > bg_threshold, arg + 1, torch.zeros_like(arg))
    return Thresholded(label.cpu().numpy(), normalised.clamp(min=0).cpu().numpy().astype(np.float32))


def boundary_walk(boundary: torch.Tensor, radius: int, beta: float) -> WalkOperator:
    """The walk of one image from its (h, w) boundary probability map (IRNet)."""
    index = path_index(radius)
    affinity = boundary_to_affinity(boundary[None], index, layout="same")[0]
    return WalkOperator(affinity, index, beta)


def semantic_from_walk(
    walked: torch.Tensor, class_ids: Sequence[int], height: int, width: int, bg_threshold: float, scale: int = 4
) -> np.ndarray:
    """(H, W) uint8 class map from walked class maps (K, h, w)."""
    if walked.shape[0] != len(class_ids):
        raise ValueError(f"walked has {walked.shape[0]} maps for {len(class_ids)} class_ids")
    keys = np.asarray([0, *class_ids], dtype=np.uint8)
    result = argmax_with_background(walked, height, width, bg_threshold, scale)
    return keys[result.label]


def semantic_labels(
    cams: torch.Tensor,
    boundary: torch.Tensor,
    class_ids: Sequence[int],
    height: int,
    width: int,
    *,
    radius: int = 5,
    beta: float = 10.0,
    exp_times: int = 8,
    bg_threshold: float = 0.25,
    walk: WalkOperator | None = None,
) -> np.ndarray:
    """IRNet semantic pseudo-label: walk CAM * (1 - boundary), threshold, argmax."""
    if cams.dim() != 3 or cams.shape[1:] != boundary.shape:
        raise ValueError(f"cams must be (K, h, w) matching boundary {tuple(boundary.shape)}, got {tuple(cams.shape)}")
    walk = walk or boundary_walk(boundary, radius, beta)
    walked = walk(cams.float() * (1.0 - boundary), 2**exp_times)
    return semantic_from_walk(walked, class_ids, height, width, bg_threshold)
