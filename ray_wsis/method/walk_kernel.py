"""The CPU kernel of the sparse random walk: 2^t steps of 69 shifted multiply-adds, compiled.

Why a compiled kernel: in eager torch every step is one op per neighbour offset (69 at
radius 5), so a 256-step walk is ~18,000 tiny ops whose dispatch costs more than their
arithmetic (bench/random_walk.py compares them; docs/performance.md has the figures). The loop
below is blocked so that one block of every channel stays in L1 while the 69 weight rows stream
through, and the inner loop is a contiguous multiply-add that LLVM vectorises.

The state is always float64. For float32 inputs the weights are float32 (computed in float64,
then rounded): against the float64 dense reference the walk agrees to 6e-6 of the peak, where a
float32 state drifted to 3.7e-4 over 256 steps; float64 weights (used for float64 inputs) reach
1e-13 but stream twice the bytes (0.16 s instead of 0.13 s at 94x125).
numba compiles on first use and caches the machine code next to this file (or in numba's
user cache when the package folder is read-only).
"""

from __future__ import annotations

import functools

import numpy as np

_BLOCK = 256
"""Pixels per block: the (channels, block) accumulator and the block's 69 weight rows fit in L2."""


@functools.cache
def _kernel():
    """Compiled (or loaded from numba's cache) once per process."""
    from numba import njit

    @njit(cache=True, boundscheck=False, fastmath=True, nogil=True)
    def walk_steps(state, spare, weights, offsets, start, steps):  # pragma: no cover - compiled
        channels = state.shape[0]
        directions, span = weights.shape
        acc = np.empty((channels, _BLOCK))
        for _ in range(steps):
            for b0 in range(0, span, _BLOCK):
                n = min(_BLOCK, span - b0)
                acc[:, :n] = 0.0
                for k in range(directions):
                    o = start + b0 + offsets[k]
                    wk = weights[k, b0 : b0 + n]
                    for c in range(channels):
                        xs = state[c, o : o + n]
                        ac = acc[c, :n]
                        for i in range(n):
                            ac[i] += wk[i] * xs[i]
                spare[:, start + b0 : start + b0 + n] = acc[:, :n]
            state, spare = spare, state
        return state

    return walk_steps


def walk_steps(
    state: np.ndarray, spare: np.ndarray, weights: np.ndarray, offsets: np.ndarray, start: int, steps: int
) -> np.ndarray:
    """Run `steps` steps on flat padded buffers; returns whichever buffer holds the result.

    state, spare: (C, L) float64, C-contiguous, zero outside the map. weights: (K, Q) float32 or float64,
    the K neighbour weights of the Q flat positions [start, start + Q) (0 on padding).
    offsets: (K,) int64 flat offsets of the neighbours; every start + q + offset must lie in [0, L).
    """
    return _kernel()(state, spare, weights, offsets, start, steps)
