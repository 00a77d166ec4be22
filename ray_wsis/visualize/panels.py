"""Pictures of what the pipeline made: colour maps and one panel per image.

Panel: image | CAM of each class | boundary | displacement (hue = angle, value = magnitude)
| semantic label | instances (colour per instance, class and score) [| ground truth].
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ray_wsis.classes import voc_palette

_PALETTE = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)


def colorize_label(label: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class map -> (H, W, 3) RGB in the VOC palette (void white)."""
    return _PALETTE[np.asarray(label, dtype=np.uint8)]


def colorize_score(score: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> RGB with a blue-green-yellow-red ramp (no matplotlib needed)."""
    s = np.clip(np.nan_to_num(score), 0.0, 1.0)
    stops = np.asarray([[0, 0, 64], [0, 96, 255], [0, 220, 120], [255, 230, 0], [230, 20, 0]], np.float32)
    pos = s * (len(stops) - 1)
    low = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def colorize_displacement(displacement: np.ndarray) -> np.ndarray:
    """(2, h, w) (dy, dx) -> RGB: hue from the direction, brightness from the length."""
    dy, dx = displacement[0], displacement[1]
    angle = (np.arctan2(dy, dx) + np.pi) / (2 * np.pi)
    magnitude = np.sqrt(dy ** 2 + dx ** 2)
    value = np.clip(magnitude / max(float(magnitude.max()), 1e-6), 0, 1)
    h6 = angle * 6.0
    sector = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    p, q, t = np.zeros_like(value), value * (1 - f), value * f
    rgb = np.select([sector[..., None] == k for k in range(6)],
                    [np.stack(c, -1) for c in ((value, t, p), (q, value, p), (p, value, t),
                                                (p, q, value), (t, p, value), (value, p, q))])
    return (rgb * 255).astype(np.uint8)


def colorize_instances(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    out = np.zeros((height, width, 3), np.uint8)
    rng = np.random.default_rng(7)
    for mask in masks:
        out[mask] = rng.integers(60, 256, 3)
    return out


def _fit(tile: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    if tile.shape[:2] == (height, width):
        return tile
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(tile).resize((width, height), resample))


def panel(image: np.ndarray, cams: Optional[np.ndarray] = None, boundary: Optional[np.ndarray] = None,
          displacement: Optional[np.ndarray] = None, semantic: Optional[np.ndarray] = None,
          instances: Optional[tuple[np.ndarray, Sequence[int], Sequence[float]]] = None,
          ground_truth: Optional[np.ndarray] = None, class_names: Sequence[str] = (),
          class_ids: Sequence[int] = (), extra: Sequence[tuple[str, np.ndarray]] = ()) -> np.ndarray:
    """One row of labelled tiles, each the size of the image."""
    h, w = image.shape[:2]
    tiles: list[tuple[str, np.ndarray]] = [("image", image)]
    if cams is not None:
        for k, cam in enumerate(cams):
            name = class_names[class_ids[k] - 1] if class_ids and class_names else f"class {k}"
            tiles.append((f"CAM {name}", _fit(colorize_score(cam.astype(np.float32)), h, w)))
    if boundary is not None:
        tiles.append(("boundary", _fit(colorize_score(boundary), h, w)))
    if displacement is not None and displacement.size:
        tiles.append(("displacement", _fit(colorize_displacement(displacement), h, w)))
    tiles.extend((name, _fit(tile, h, w, nearest=True)) for name, tile in extra)
    if semantic is not None:
        tiles.append(("semantic", colorize_label(semantic)))
    if instances is not None:
        masks, ids, scores = instances
        tile = Image.fromarray(colorize_instances(masks, h, w))
        draw = ImageDraw.Draw(tile)
        for mask, cid, score in zip(masks, ids, scores):
            ys, xs = np.nonzero(mask)
            if len(ys) and score > 0:
                label = class_names[cid - 1] if class_names else str(cid)
                draw.text((int(xs.min()), int(ys.min())), f"{label} {score:.2f}", fill=(255, 255, 255))
        tiles.append(("instances", np.asarray(tile)))
    if ground_truth is not None:
        tiles.append(("ground truth", colorize_label(ground_truth)))
    strip = Image.new("RGB", (len(tiles) * (w + 4), h + 14), (24, 24, 24))
    draw = ImageDraw.Draw(strip)
    for i, (name, tile) in enumerate(tiles):
        strip.paste(Image.fromarray(np.ascontiguousarray(tile[..., :3])), (i * (w + 4), 14))
        draw.text((i * (w + 4) + 2, 1), name, fill=(230, 230, 230))
    return np.asarray(strip)


def contact_sheet(panels: Sequence[np.ndarray], max_width: int = 2400) -> np.ndarray:
    """Panels stacked vertically (scaled down to max_width), for a quick look."""
    if not panels:
        raise ValueError("no panels")
    width = max(p.shape[1] for p in panels)
    scale = min(1.0, max_width / width)
    rows = [np.asarray(Image.fromarray(p).resize((int(p.shape[1] * scale), int(p.shape[0] * scale))))
            for p in panels]
    out = np.full((sum(r.shape[0] for r in rows), max(r.shape[1] for r in rows), 3), 24, np.uint8)
    y = 0
    for r in rows:
        out[y:y + r.shape[0], :r.shape[1]] = r
        y += r.shape[0]
    return out
