"""Pixel pairs within a radius and the thick digital line between them (irn PathIndex).

Only half the neighbourhood is listed (row 0 to the right, then the rows below), so each
unordered pair appears once: 34 directions at radius 5, 152 at radius 10. A direction's
path is every integer point of the (0,0)-(dy,dx) bounding box whose squared distance to the
line is below 1, destination first; paths are grouped by length so one tensor op handles a
group. Everything here depends only on the radius (cached); the per-shape work is slicing.

Two layouts of source pixels are used, as in the reference:
- "valid" (training): sources are rows [0, H - r') and columns [r', W - r') with r' = r - 1,
  so every destination lies inside the map.
- "same" (inference): the map is padded by r' with boundary 1 (affinity 0) on the left,
  right and bottom, so every pixel is a source and out-of-image pairs get affinity 0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PathIndex:
    radius: int
    directions: np.ndarray
    """(D, 2) int (dy, dx), in path-group order (the reference's search_dst order)."""
    groups: tuple[np.ndarray, ...]
    """Per path length L: (n, L, 2) offsets of each direction's path, destination first."""

    @property
    def margin(self) -> int:
        """r' = ceil(r) - 1: how far a destination can lie left, right or below a source."""
        return self.radius - 1

    @property
    def num_directions(self) -> int:
        return len(self.directions)


@functools.lru_cache(maxsize=8)
def path_index(radius: int) -> PathIndex:
    """The directions and line paths for a radius (pure function of it, so cached)."""
    if radius < 2:
        raise ValueError(f"radius must be >= 2, got {radius}")
    dirs = [(0, x) for x in range(1, radius)]
    dirs += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius) if x * x + y * y < radius * radius]
    by_length: dict[int, list[list[tuple[int, int]]]] = {}
    for dy, dx in dirs:
        length_sq = dy * dy + dx * dx
        ys = np.arange(min(0, dy), max(0, dy) + 1)
        xs = np.arange(min(0, dx), max(0, dx) + 1)
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        on_line = (dy * xx - dx * yy) ** 2 < length_sq  # squared distance to the line < 1
        points = sorted(zip(yy[on_line].tolist(), xx[on_line].tolist()), key=lambda p: -abs(p[0]) - abs(p[1]))
        by_length.setdefault(len(points), []).append(points)
    groups = tuple(np.asarray(by_length[length], dtype=np.int64) for length in sorted(by_length))
    directions = np.concatenate([g[:, 0] for g in groups], axis=0)
    return PathIndex(radius, directions, groups)


def source_window(height: int, width: int, index: PathIndex) -> tuple[int, int]:
    """Size (h_src, w_src) of the "valid" source window of an (height, width) map."""
    m = index.margin
    return height - m, width - 2 * m


def _windows(x: torch.Tensor, offsets: np.ndarray, hs: int, ws: int, margin: int) -> torch.Tensor:
    """Stack x[..., dy:dy+hs, m+dx:m+dx+ws] for each (dy, dx) along a new dim 1."""
    return torch.stack([x[..., dy : dy + hs, margin + dx : margin + dx + ws] for dy, dx in offsets.tolist()], dim=1)


def pad_for_same(x: torch.Tensor, index: PathIndex, value: float) -> torch.Tensor:
    """Pad left, right and bottom by r' so that the "valid" window covers the whole map."""
    m = index.margin
    return F.pad(x, (m, m, 0, m), mode="constant", value=value)


def path_max(boundary: torch.Tensor, index: PathIndex) -> torch.Tensor:
    """Max boundary along every path: (B, H, W) -> (B, D, h_src, w_src), "valid" layout.

    When gradients are needed, the argmax is found without autograd and the maxima are then
    gathered, so autograd keeps one index per pair instead of every path point (the reference
    keeps all of them: ~3.8 GB for a batch of 32 128x128 maps at radius 10).
    """
    if boundary.dim() != 3:
        raise ValueError(f"boundary must be (B, H, W), got shape {tuple(boundary.shape)}")
    b, h, w = boundary.shape
    hs, ws = source_window(h, w, index)
    if hs < 1 or ws < 1:
        raise ValueError(f"boundary map {h}x{w} is too small for radius {index.radius}")
    m = index.margin
    if not boundary.requires_grad:
        return torch.cat(
            [
                _windows(boundary, g.reshape(-1, 2), hs, ws, m).view(b, g.shape[0], g.shape[1], hs, ws).amax(dim=2)
                for g in index.groups
            ],
            dim=1,
        )
    flat = boundary.reshape(b, h * w)
    base = (
        torch.arange(hs, device=boundary.device)[:, None] * w + torch.arange(ws, device=boundary.device)[None, :] + m
    ).reshape(1, 1, hs * ws)
    gathered = []
    for g in index.groups:
        n, length = g.shape[:2]
        with torch.no_grad():
            arg = _windows(boundary.detach(), g.reshape(-1, 2), hs, ws, m).view(b, n, length, hs * ws).argmax(dim=2)
        offsets = torch.as_tensor(g[..., 0] * w + g[..., 1], device=boundary.device)  # (n, L) flat offsets
        flat_index = base + torch.gather(
            offsets.unsqueeze(0).unsqueeze(-1).expand(b, n, length, hs * ws), 2, arg.unsqueeze(2)
        ).squeeze(2)
        gathered.append(torch.gather(flat, 1, flat_index.reshape(b, -1)).view(b, n, hs, ws))
    return torch.cat(gathered, dim=1)


def boundary_to_affinity(boundary: torch.Tensor, index: PathIndex, layout: str = "same") -> torch.Tensor:
    """Affinity = 1 - max boundary on the line between two pixels (IRNet).

    boundary: (B, H, W) probabilities in [0, 1]. Returns (B, D, H, W) for layout "same"
    (inference, every pixel a source, out-of-image pairs 0) or (B, D, h_src, w_src) "valid".
    """
    if layout == "same":
        boundary = pad_for_same(boundary, index, 1.0)
    elif layout != "valid":
        raise ValueError(f"layout must be 'same' or 'valid', got {layout!r}")
    return 1.0 - path_max(boundary, index)


def pair_windows(x: torch.Tensor, index: PathIndex) -> tuple[torch.Tensor, torch.Tensor]:
    """(source, destinations) of a (..., H, W) map in the "valid" layout.

    Returns source (..., h_src, w_src) and destinations (..., D, h_src, w_src), with the
    direction axis just before the spatial axes.
    """
    h, w = x.shape[-2:]
    hs, ws = source_window(h, w, index)
    if hs < 1 or ws < 1:
        raise ValueError(f"map {h}x{w} is too small for radius {index.radius} (needs width > {2 * index.margin})")
    m = index.margin
    src = x[..., :hs, m : m + ws]
    dst = torch.stack([x[..., dy : dy + hs, m + dx : m + dx + ws] for dy, dx in index.directions.tolist()], dim=-3)
    return src, dst
