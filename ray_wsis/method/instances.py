"""Instance assembly from the displacement field (irn step/make_ins_seg_labels.py).

1. Every pixel follows the displacement field (bilinear, 300 steps) to its centroid.
2. The weak-displacement region |D| < 2.5 is split into 4-connected components; each pixel
   belongs to the component its centroid lands in (pixels landing elsewhere share one group).
3. Instance CAMs = CAM of class k x indicator of cluster i; each is walked on the boundary
   affinities, upsampled, normalised by the global max and thresholded at 0.25.
4. Every 4-connected component of every winning (class, cluster) map is one detection with
   score = the max of its normalised walk; components under 1% of the image score 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from ray_wsis.method.labels import argmax_with_background, boundary_walk
from ray_wsis.method.random_walk import WalkOperator
from ray_wsis.method.scores import UPSAMPLE_PEAK_KEPT, detections_from_label

_UPSAMPLE_PEAK_KEPT = UPSAMPLE_PEAK_KEPT
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


@dataclass
class Instances:
    """Detections of one image: masks (N, H, W) bool, 1-based class ids (N,), scores (N,)."""

    masks: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    cluster_map: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    """(h, w) cluster id of every stride-4 pixel, for inspection."""

    def __len__(self) -> int:
        return len(self.scores)


def find_centroids(displacement: torch.Tensor, iterations: int = 300) -> torch.Tensor:
    """(2, h, w) displacement (dy, dx) -> (2, h, w) long centroid coordinates of each pixel."""
    if displacement.dim() != 3 or displacement.shape[0] != 2:
        raise ValueError(f"displacement must be (2, h, w), got {tuple(displacement.shape)}")
    _, h, w = displacement.shape
    dp = displacement.float()
    cy = torch.arange(h, device=dp.device, dtype=torch.float32)[:, None].expand(h, w).clone()
    cx = torch.arange(w, device=dp.device, dtype=torch.float32)[None, :].expand(h, w).clone()
    flat = dp.reshape(2, -1)
    for _ in range(iterations):
        y0, x0 = cy.floor(), cx.floor()
        y1, x1 = cy.ceil(), cx.ceil()
        fy, fx = cy - y0, cx - x0
        y0, x0, y1, x1 = (t.long() for t in (y0, x0, y1, x1))
        # bilinear weights exactly as the reference (ceil/floor corners)
        step = (
            flat[:, (y1 * w + x1).reshape(-1)] * (fy * fx).reshape(-1)
            + flat[:, (y0 * w + x1).reshape(-1)] * ((1 - fy) * fx).reshape(-1)
            + flat[:, (y1 * w + x0).reshape(-1)] * (fy * (1 - fx)).reshape(-1)
            + flat[:, (y0 * w + x0).reshape(-1)] * ((1 - fy) * (1 - fx)).reshape(-1)
        ).view(2, h, w)
        cy = (cy + step[0]).clamp(0, h - 1)
        cx = (cx + step[1]).clamp(0, w - 1)
    return torch.stack([cy.round().long(), cx.round().long()])


def cluster_centroids(centroids: np.ndarray, displacement: np.ndarray, threshold: float = 2.5) -> np.ndarray:
    """(h, w) consecutive cluster ids 0..I-1 (irn cluster_centroids + compress_range)."""
    strength = np.sqrt(displacement[0] ** 2 + displacement[1] ** 2)
    components, _ = ndimage.label(strength < threshold, structure=_FOUR_CONNECTED)
    h, w = strength.shape
    assigned = components[centroids[0], centroids[1]]
    _, compressed = np.unique(assigned.reshape(-1), return_inverse=True)
    return compressed.reshape(h, w)


@dataclass
class InstanceWalk:
    """The walked (class x cluster) maps of one image before the background cut."""

    walked: torch.Tensor
    """(C, h, w) walked maps of the channels that can win; the others are dropped."""
    channel_class: np.ndarray
    """(C,) 1-based class id of each channel (class-major order, as irn)."""
    clusters: np.ndarray
    """(h, w) cluster id of every stride-4 pixel."""


def walk_instances(
    cams: torch.Tensor,
    boundary: torch.Tensor,
    displacement: torch.Tensor,
    class_ids: Sequence[int],
    *,
    walk: WalkOperator,
    exp_times: int = 8,
    lowest_threshold: float = 0.25,
    centroid_iterations: int = 300,
    cluster_threshold: float = 2.5,
) -> InstanceWalk:
    """Steps 1-3 of irn's instance assembly: centroids, clusters, walked instance CAMs.

    Exact pruning: a walk never raises a map above its input max (each step averages), and
    x4 bilinear upsampling keeps at least 0.625^2 of a peak, so a channel whose input max is
    below lowest_threshold x 0.39 x (a walked channel's max) can never beat a background plane
    at lowest_threshold or above; it is neither walked nor returned.
    """
    if cams.dim() != 3 or cams.shape[1:] != boundary.shape or displacement.shape[1:] != boundary.shape:
        raise ValueError(
            f"cams {tuple(cams.shape)}, boundary {tuple(boundary.shape)} and displacement "
            f"{tuple(displacement.shape)} must share (h, w)"
        )
    if len(class_ids) != cams.shape[0]:
        raise ValueError(f"class_ids has {len(class_ids)} entries for {cams.shape[0]} CAMs")
    centroids = find_centroids(displacement, centroid_iterations).cpu().numpy()
    clusters = cluster_centroids(centroids, displacement.float().cpu().numpy(), cluster_threshold)
    n_clusters = int(clusters.max()) + 1
    onehot = torch.nn.functional.one_hot(torch.from_numpy(clusters).to(cams.device), n_clusters)
    instance_cams = (cams.float()[:, None] * onehot.permute(2, 0, 1)[None].float()).flatten(0, 1)  # class-major
    channel_class = np.repeat(np.asarray(class_ids, np.int64), n_clusters)
    seeds = instance_cams * (1.0 - boundary)
    peaks = seeds.flatten(1).amax(dim=1)
    order = torch.argsort(peaks, descending=True)
    walked = torch.zeros_like(seeds)
    done = torch.zeros(len(seeds), dtype=torch.bool, device=seeds.device)
    best = 0.0
    for start in range(0, len(order), 16):
        chunk = order[start : start + 16]
        chunk = chunk[peaks[chunk] >= lowest_threshold * _UPSAMPLE_PEAK_KEPT * best]
        if len(chunk) == 0:
            break
        walked[chunk] = walk(seeds[chunk], 2**exp_times)
        done[chunk] = True
        best = max(best, float(walked[chunk].amax()))
    keep = done.cpu().numpy()
    return InstanceWalk(walked[done], channel_class[keep], clusters)


def instances_from_cams(
    cams: torch.Tensor,
    boundary: torch.Tensor,
    displacement: torch.Tensor,
    class_ids: Sequence[int],
    height: int,
    width: int,
    *,
    radius: int = 5,
    beta: float = 10.0,
    exp_times: int = 8,
    bg_threshold: float = 0.25,
    centroid_iterations: int = 300,
    cluster_threshold: float = 2.5,
    min_fragment_fraction: float = 0.01,
    walk: WalkOperator | None = None,
) -> Instances:
    """IRNet instance pseudo-labels of one image from stride-4 CAMs, boundary and displacement,
    cut in float (the pipeline cuts from quantised stored maps: method/scores.py)."""
    walk = walk or boundary_walk(boundary, radius, beta)
    walked = walk_instances(
        cams,
        boundary,
        displacement,
        class_ids,
        walk=walk,
        exp_times=exp_times,
        lowest_threshold=bg_threshold,
        centroid_iterations=centroid_iterations,
        cluster_threshold=cluster_threshold,
    )
    result = argmax_with_background(walked.walked, height, width, bg_threshold)
    found = detections_from_label(result.label, result.value, walked.channel_class, min_fragment_fraction)
    return Instances(found.masks, found.class_ids, found.scores, walked.clusters)
