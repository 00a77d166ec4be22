"""Random walk with a sparse transition: memory O(H*W*directions), never O((H*W)^2).

The reference builds the dense (hw x hw) affinity matrix A (pairs within the radius, both
directions, diagonal 1), raises it to beta, column-normalises T = A^b / colsum(A^b) and
squares T eight times: rw = x @ T^256 (26 TFLOP and >0.5 GB for one 500x375 image).
Because A is symmetric, one step x -> x @ T is y_p = (x_p + sum_q A_pq^b x_q) / deg_p: every
pixel becomes the A^b-weighted average of itself and its neighbours. We run those 256 steps
as shifted multiply-adds over the 2D+1 neighbour offsets:

* on the CPU in a compiled kernel (walk_kernel.py) with a float64 state: 6e-6 of the peak from
  the float64 dense walk for float32 x (1e-13 for float64 x), and far faster than the dense
  float32 walk (bench/random_walk.py; figures in docs/performance.md);
* on other devices (GPU) as a stencil in x's dtype (:func:`walk_many`, many images and channels
  per call): per step one gather of the 2D+1 neighbours and one weighted sum over them. A float32
  state summed into one running accumulator drifts over 256 steps; the sum as a reduction stays
  within the 1e-4-of-the-peak budget of the tests (docs/performance.md has the measurements).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ray_wsis.method.path_index import PathIndex
from ray_wsis.method.walk_kernel import walk_steps


class WalkOperator:
    """The normalised transition of one affinity map, reusable for any number of channels.

    affinity: (D, H, W) in the "same" layout: affinity[d, p] belongs to the pair
    (p, p + directions[d]) and is 0 where the partner lies outside the map.
    ``weights`` (2D+1, H, W), float64, holds each pixel's weight of itself and of every
    neighbour offset in ``offsets``; they sum to 1 per pixel.
    """

    def __init__(self, affinity: torch.Tensor, index: PathIndex, beta: float) -> None:
        if affinity.dim() != 3 or affinity.shape[0] != index.num_directions:
            raise ValueError(f"affinity must be ({index.num_directions}, H, W), got {tuple(affinity.shape)}")
        d, h, w = affinity.shape
        m = index.margin
        forward = affinity.double().clamp(min=0.0).pow(beta)
        padded = F.pad(forward, (m, m, m, m))
        directions = index.directions.tolist()
        backward = torch.stack(
            [padded[k, m - dy : m - dy + h, m - dx : m - dx + w] for k, (dy, dx) in enumerate(directions)]
        )
        degree = 1.0 + forward.sum(0) + backward.sum(0)
        self.weights = torch.cat([torch.ones_like(degree)[None], forward, backward]) / degree
        self.offsets = [(0, 0)] + [(dy, dx) for dy, dx in directions] + [(-dy, -dx) for dy, dx in directions]
        self.margin = m
        self.shape = (h, w)
        self._flat: dict[torch.dtype, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Apply the transition `steps` times to x of shape (C, H, W); same dtype and device back."""
        if x.dim() != 3 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must be (C, {self.shape[0]}, {self.shape[1]}), got {tuple(x.shape)}")
        if steps < 0:
            raise ValueError(f"steps must not be negative, got {steps}")
        if steps == 0:
            return x.clone()
        if x.device.type == "cpu":
            return self.compiled(x, steps)
        return self.eager(x, steps)

    def compiled(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """CPU path (walk_kernel): flat padded layout, rows padded by m plus m spare values at each end."""
        (h, w), m = self.shape, self.margin
        wp = w + 2 * m
        if x.dtype not in self._flat:  # float32 weights for float32 x (walk_kernel: why), else float64
            weights = np.zeros((len(self.offsets), h, wp), dtype=np.float32 if x.dtype != torch.float64 else np.float64)
            weights[:, :, m : m + w] = self.weights.cpu().numpy()
            offsets = np.asarray([dy * wp + dx for dy, dx in self.offsets], dtype=np.int64)
            self._flat[x.dtype] = (weights.reshape(len(self.offsets), h * wp), offsets)
        weights, offsets = self._flat[x.dtype]
        c, start = x.shape[0], m + m * wp
        state = np.zeros((c, 2 * m + (h + 2 * m) * wp))
        grid = state[:, m : m + (h + 2 * m) * wp].reshape(c, h + 2 * m, wp)
        grid[:, m : m + h, m : m + w] = x.detach().double().numpy()
        out = walk_steps(state, np.zeros_like(state), weights, offsets, start, steps)
        result = out[:, m : m + (h + 2 * m) * wp].reshape(c, h + 2 * m, wp)[:, m : m + h, m : m + w]
        return torch.from_numpy(np.ascontiguousarray(result)).to(x.dtype)

    def eager(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Device-generic path in x's dtype (GPUs; the tests also run it on the CPU): the stencil
        walk of :func:`walk_many` on this one image."""
        return walk_many([self], x[None], steps)[0]

    def flat_indices(self, device: torch.device) -> torch.Tensor:
        """(H*W, K) index of every pixel's k-th neighbour in the zero-padded, flattened map."""
        (h, w), m = self.shape, self.margin
        wp = w + 2 * m
        base = (torch.arange(h, device=device)[:, None] + m) * wp + torch.arange(w, device=device)[None, :] + m
        offsets = torch.tensor([dy * wp + dx for dy, dx in self.offsets], device=device)
        return (base.reshape(-1, 1) + offsets[None, :]).contiguous()


def walk_many(operators: list[WalkOperator], x: torch.Tensor, steps: int) -> torch.Tensor:
    """Walk B same-shape images at once: x (B, C, H, W) with one operator per image, on x's device
    and in x's dtype. Each step is one gather of every pixel's 2D+1 neighbours from the zero-padded
    maps and one weighted sum over them (a stencil with per-pixel weights): a handful of kernel
    launches per step for all images and channels, instead of one per neighbour offset. The sum
    over the neighbours is a reduction along the contiguous last dimension, which rounds less
    than one running float32 accumulator (tests/test_random_walk.py bounds it against the
    float64-state CPU walk)."""
    if x.dim() != 4 or len(operators) != x.shape[0]:
        raise ValueError(f"x must be (B, C, H, W) with one operator per image, got {tuple(x.shape)}")
    if steps == 0:
        return x.clone()
    first = operators[0]
    (h, w), m = first.shape, first.margin
    if any(op.shape != first.shape or op.offsets != first.offsets for op in operators) or x.shape[-2:] != (h, w):
        raise ValueError("walk_many needs operators of one shape and radius matching x")
    b, c = x.shape[:2]
    weights = torch.stack([op.weights for op in operators]).to(device=x.device, dtype=x.dtype)
    weights = weights.reshape(b, 1, len(first.offsets), h * w).transpose(2, 3).contiguous()  # (B, 1, H*W, K)
    index = first.flat_indices(x.device)
    padded = x.new_zeros(b, c, h + 2 * m, w + 2 * m)
    interior = padded[:, :, m : m + h, m : m + w]
    interior.copy_(x)
    flat = padded.view(b, c, -1)
    for _ in range(steps):
        neighbours = flat[:, :, index]  # (B, C, H*W, K): the sum runs over the contiguous last dim
        interior.copy_((neighbours * weights).sum(dim=-1).view(b, c, h, w))
    return interior.clone()


def random_walk(
    x: torch.Tensor, affinity: torch.Tensor, index: PathIndex, beta: float, exp_times: int = 8
) -> torch.Tensor:
    """rw = x @ T^(2^exp_times) without the dense T; x (C, H, W), affinity (D, H, W)."""
    return WalkOperator(affinity, index, beta)(x, 2**exp_times)


def dense_random_walk(
    x: torch.Tensor, affinity: torch.Tensor, index: PathIndex, beta: float, exp_times: int = 8
) -> torch.Tensor:
    """The reference formula with the dense (HW)^2 matrix: for tests and benchmarks only."""
    _, h, w = affinity.shape
    n = h * w
    rows = torch.arange(n, device=x.device).view(h, w)
    dense = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    for k, (dy, dx) in enumerate(index.directions.tolist()):
        ys = torch.arange(h, device=x.device)[:, None] + dy
        xs = torch.arange(w, device=x.device)[None, :] + dx
        inside = ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)).expand(h, w)
        src = rows[inside]
        dst = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).expand(h, w)[inside]
        dense[src, dst] = affinity[k][inside].to(x.dtype)
        dense[dst, src] = affinity[k][inside].to(x.dtype)
    dense.fill_diagonal_(1.0)
    scaled = dense.pow(beta)
    transition = scaled / scaled.sum(dim=0, keepdim=True)
    for _ in range(exp_times):
        transition = transition @ transition
    return (x.reshape(x.shape[0], n) @ transition).view_as(x)


def dense_walk_cost(height: int, width: int, exp_times: int = 8, bytes_per_value: int = 4) -> dict[str, float]:
    """FLOPs and bytes of the dense reference for an (height, width) stride-4 map."""
    n = float(height * width)
    return {"flops": exp_times * 2.0 * n**3, "matrix_bytes": n * n * bytes_per_value}
