"""Pictures of what the pipeline made: colour maps and one panel per image.

Panel: image | CAM of each class | walked score of each class | confidence | semantic label
| instances (colour per instance, class and score) [| ground truth]. Every tile is drawn from
what a run stores; no network runs (docs/architecture.md, "The report").

Tiles are shown at a display size (long side between ``min_long`` and ``max_long``) so that
tiny test images get readable captions and huge ones do not make 20000-pixel-wide strips.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from functools import lru_cache
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ray_wsis.classes import voc_palette

_PALETTE = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
_GAP = 4
_HEADER = 16
_BACKDROP = (24, 24, 24)


def colorize_label(label: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class map -> (H, W, 3) RGB in the VOC palette (void white)."""
    return _PALETTE[np.asarray(label, dtype=np.uint8)]


def colorize_score(score: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> RGB with a blue-green-yellow-red ramp (no matplotlib needed)."""
    s = np.clip(np.nan_to_num(np.asarray(score, np.float32)), 0.0, 1.0)
    stops = np.asarray([[0, 0, 64], [0, 96, 255], [0, 220, 120], [255, 230, 0], [230, 20, 0]], np.float32)
    pos = s * (len(stops) - 1)
    low = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def instance_colours(n: int) -> np.ndarray:
    """(n, 3) bright colours whose hues step by the golden ratio, so neighbours in a list differ."""
    hues = (np.arange(n) * 0.618034 + 0.08) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.85, 1.0 if k % 2 == 0 else 0.8) for k, h in enumerate(hues)]
    return (np.asarray(rgb, np.float32).reshape(n, 3) * 255).astype(np.uint8)


def colorize_instances(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """One distinct colour per instance; later masks paint over earlier ones."""
    out = np.zeros((height, width, 3), np.uint8)
    for mask, colour in zip(masks, instance_colours(len(masks))):
        out[mask] = colour
    return out


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font when FreeType is there, else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):
        return ImageFont.load_default()


def _fit(tile: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    if tile.shape[:2] == (height, width):
        return tile
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(tile)).resize((width, height), resample))


def display_size(height: int, width: int, min_long: int = 192, max_long: int = 512) -> tuple[int, int]:
    """(h, w) with the long side clamped to [min_long, max_long], aspect ratio kept."""
    long_side = max(height, width, 1)
    scale = min(max(1.0, min_long / long_side), max_long / long_side)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _clip_text(
    draw: ImageDraw.ImageDraw, text: str, max_width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> str:
    """Shorten a caption with an ellipsis so that it never runs into the next tile."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "…", font=font) > max_width:
        text = text[:-1]
    return text + "…"


def _class_name(class_id: int, class_names: Sequence[str]) -> str:
    return class_names[class_id - 1] if 0 < class_id <= len(class_names) else f"class {class_id}"


def instance_tile(
    masks: np.ndarray,
    class_ids: Sequence[int],
    scores: Sequence[float],
    class_names: Sequence[str],
    height: int,
    width: int,
) -> np.ndarray:
    """Instances coloured at display size, each scored one captioned '<class> <score>' on its box corner."""
    masks = np.asarray(masks, bool)
    tile = _fit(
        colorize_instances(masks, *masks.shape[1:]) if len(masks) else np.zeros((height, width, 3), np.uint8),
        height,
        width,
        nearest=True,
    )
    image = Image.fromarray(np.ascontiguousarray(tile))
    draw, font = ImageDraw.Draw(image), _font(10)
    sy, sx = height / max(masks.shape[1], 1), width / max(masks.shape[2], 1)
    for mask, cid, score in zip(masks, class_ids, scores):
        ys, xs = np.nonzero(mask)
        if not len(ys) or score <= 0:
            continue
        text = f"{_class_name(int(cid), class_names)} {float(score):.2f}"
        x = min(int(xs.min() * sx), max(width - 20, 0))
        top = int(ys.min() * sy)
        y = top - 12 if top >= 12 else min(top, max(height - 12, 0))  # above the box when there is room
        text = _clip_text(draw, text, width - x, font)
        box = draw.textbbox((x, y), text, font=font)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((x, y), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def _score_tiles(
    prefix: str, maps: np.ndarray, class_ids: Sequence[int], class_names: Sequence[str], h: int, w: int
) -> list[tuple[str, np.ndarray]]:
    """One ramp-coloured tile per map, captioned with its class (id 0: the background channel)."""
    tiles = []
    for k, values in enumerate(maps):
        cid = int(class_ids[k]) if k < len(class_ids) else -1
        name = "background" if cid == 0 else _class_name(cid, class_names) if cid > 0 else f"class {k}"
        tiles.append((f"{prefix} {name}", _fit(colorize_score(values), h, w)))
    return tiles


def panel(
    image: np.ndarray,
    cams: Optional[np.ndarray] = None,
    walked: Optional[np.ndarray] = None,
    confidence: Optional[np.ndarray] = None,
    semantic: Optional[np.ndarray] = None,
    instances: Optional[tuple[np.ndarray, Sequence[int], Sequence[float]]] = None,
    ground_truth: Optional[np.ndarray] = None,
    class_names: Sequence[str] = (),
    class_ids: Sequence[int] = (),
    walked_ids: Sequence[int] = (),
    extra: Sequence[tuple[str, np.ndarray]] = (),
    min_long: int = 192,
    max_long: int = 512,
) -> np.ndarray:
    """One row of captioned tiles, each the image's display size (see :func:`display_size`).

    ``cams``: (K, H, W) CAMs of ``class_ids``; ``walked``: the walked scores of ``walked_ids``
    (0: a walked background channel), both in [0, 1]; ``confidence``: (H, W) in [0, 1]. Maps of
    any resolution are resized onto the tile: bilinear for scores, nearest for labels.
    """
    h, w = display_size(image.shape[0], image.shape[1], min_long, max_long)
    tiles: list[tuple[str, np.ndarray]] = [("image", _fit(image[..., :3], h, w))]
    if cams is not None:
        tiles += _score_tiles("CAM", cams, class_ids, class_names, h, w)
    if walked is not None:
        tiles += _score_tiles("walk", walked, walked_ids, class_names, h, w)
    if confidence is not None:
        tiles.append(("confidence", _fit(colorize_score(confidence), h, w)))
    tiles.extend((name, _fit(tile, h, w, nearest=True)) for name, tile in extra)
    if semantic is not None:
        tiles.append(("semantic", _fit(colorize_label(semantic), h, w, nearest=True)))
    if instances is not None:
        masks, ids, scores = instances
        objects = sum(float(s) > 0 for s in scores)  # score-0 fragments (under 1% of the image) are no objects
        tiles.append((f"instances ({objects})", instance_tile(masks, ids, scores, class_names, h, w)))
    if ground_truth is not None:
        tiles.append(("ground truth", _fit(colorize_label(ground_truth), h, w, nearest=True)))
    return _strip(tiles, h, w)


def _strip(tiles: Sequence[tuple[str, np.ndarray]], h: int, w: int) -> np.ndarray:
    """Tiles side by side under their captions, on a dark backdrop."""
    strip = Image.new("RGB", (len(tiles) * (w + _GAP) - _GAP, h + _HEADER), _BACKDROP)
    draw, font = ImageDraw.Draw(strip), _font(11)
    for i, (name, tile) in enumerate(tiles):
        x = i * (w + _GAP)
        strip.paste(Image.fromarray(np.ascontiguousarray(tile[..., :3], dtype=np.uint8)), (x, _HEADER))
        draw.text((x + 2, 1), _clip_text(draw, name, w - 4, font), fill=(230, 230, 230), font=font)
    return np.asarray(strip)


def contact_sheet(panels: Sequence[np.ndarray], max_width: int = 2400) -> np.ndarray:
    """Panels stacked vertically (scaled down to max_width), for a quick look."""
    if not panels:
        raise ValueError("no panels")
    width = max(p.shape[1] for p in panels)
    scale = min(1.0, max_width / width)
    rows = [
        np.asarray(
            Image.fromarray(p).resize(
                (max(1, int(p.shape[1] * scale)), max(1, int(p.shape[0] * scale))), Image.Resampling.BILINEAR
            )
        )
        for p in panels
    ]
    out = np.full(
        (sum(r.shape[0] for r in rows) + _GAP * (len(rows) - 1), max(r.shape[1] for r in rows), 3),
        _BACKDROP[0],
        np.uint8,
    )
    y = 0
    for r in rows:
        out[y : y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0] + _GAP
    return out
