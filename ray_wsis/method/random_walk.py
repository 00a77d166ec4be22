"""Random walk with a sparse transition: memory O(H*W*directions), never O((H*W)^2).

The reference builds the dense (hw x hw) affinity matrix A (pairs within the radius, both
directions, diagonal 1), raises it to beta, column-normalises T = A^b / colsum(A^b) and
squares T eight times: rw = x @ T^256 (26 TFLOP and >0.5 GB for one 500x375 image).
Because A is symmetric, one step x -> x @ T is y_p = (x_p + sum_q A_pq^b x_q) / deg_p: every
pixel becomes the A^b-weighted average of itself and its neighbours. We run those 256 steps
as shifted multiply-adds over the 2D+1 neighbour offsets:

* on the CPU in a compiled kernel (walk_kernel.py) with a float64 state: 6e-6 of the peak from
  the float64 dense walk for float32 x (1e-13 for float64 x), 125x faster than the dense float32
  walk at 48x64 (bench/random_walk.py);
* on other devices (GPU) as eager torch ops in x's dtype. A float32 state summed into one
  accumulator drifts to 3.7e-4 of the peak over 256 steps; eight interleaved accumulators
  summed as a tree bring it to 5e-5 (the dense float32 reference itself is at 1.8e-5).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ray_wsis.method.path_index import PathIndex
from ray_wsis.method.walk_kernel import walk_steps

_ACCUMULATORS = 8


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
        """Device-generic path in x's dtype (GPUs; the tests also run it on the CPU)."""
        c, (h, w), m = x.shape[0], self.shape, self.margin
        weights = self.weights.to(device=x.device, dtype=x.dtype)
        padded = x.new_zeros(c, h + 2 * m, w + 2 * m)
        interior = padded[:, m : m + h, m : m + w]
        interior.copy_(x)
        groups = [list(range(g, len(self.offsets), _ACCUMULATORS)) for g in range(_ACCUMULATORS)]
        for _ in range(steps):
            partial = []
            for group in groups:
                acc = torch.zeros_like(x)
                for k in group:
                    dy, dx = self.offsets[k]
                    acc.addcmul_(weights[k], padded[:, m + dy : m + dy + h, m + dx : m + dx + w])
                partial.append(acc)
            while len(partial) > 1:  # tree sum keeps float32 rounding low (module docstring)
                partial = [
                    partial[i] + partial[i + 1] if i + 1 < len(partial) else partial[i]
                    for i in range(0, len(partial), 2)
                ]
            interior.copy_(partial[0])
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
