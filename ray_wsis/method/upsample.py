"""Stride-4 CAMs to full resolution in numpy: the CPU tasks that need it (CRF labels,
evaluation) then import no torch, which saves each fresh Ray worker ~4 s of imports.

Same result as torch's ``F.interpolate(scale_factor=4, mode="bilinear", align_corners=False)``
cropped to (height, width) (tests/test_cam.py holds them together).
"""

from __future__ import annotations

import numpy as np


def _axis(size_in: int, size_out: int, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weight of i1 for each output position (half-pixel centres)."""
    src = np.maximum((np.arange(size_out, dtype=np.float64) + 0.5) / scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def upsample_cams(cams: np.ndarray, height: int, width: int, scale: int = 4) -> np.ndarray:
    """(K, h, w) stride-`scale` maps -> (K, height, width) float32, bilinear, cropped.

    irn keeps a second full-resolution copy ("high_res") per image; we store only stride 4 and
    upsample on use (what that costs and saves: docs/faithfulness.md).
    """
    cams = np.asarray(cams, dtype=np.float32)
    k, h, w = cams.shape
    if k == 0:
        return np.zeros((0, height, width), np.float32)
    if height > h * scale or width > w * scale:
        raise ValueError(f"cannot crop {height}x{width} from {h}x{w} maps at stride {scale}")
    y0, y1, wy = _axis(h, height, scale)
    x0, x1, wx = _axis(w, width, scale)
    rows = cams[:, y0] * (1.0 - wy)[None, :, None] + cams[:, y1] * wy[None, :, None]
    return rows[:, :, x0] * (1.0 - wx) + rows[:, :, x1] * wx
