"""A second synthetic benchmark with other statistics than :mod:`ray_wsis.data.synthetic`.

Where the "parts" set draws class-agnostic blobs with a small class-specific texture on a
plain background, this "scenes" set draws outdoor scenes:

* every image has its own size and aspect ratio (portrait to wide, 96-200 px a side);
* a horizon splits sky from ground; the ground is water, grass, sand or road, and the
  ground CO-OCCURS with classes: boats float on water (water in 90 % of boat images, 10 %
  of the others), cows stand on grass (80 % / 25 %). A classifier can score a class from
  its context, so CAMs leak onto the water and the grass, a classic failure of CAM methods;
* objects are composed silhouettes with a class-specific geometry (hull + sail, body +
  cabin + wheels, body + head + legs, torso + head, body + wing + beak), of body colours
  shared by every class, each with one discriminative part (sail, wheels, head, face, beak);
* sizes span small birds to cars filling half the image, several instances of a class are
  common (up to 4 objects), and distractors (rocks, buoys, clouds, posts) sit in context.

Ground truth follows VOC as in the parts set (palette PNGs, void band inside each object's
boundary). Everything is drawn from ``np.random.default_rng([seed, split, index])``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from ray_wsis.classes import IGNORE, VOC_CLASSES
from ray_wsis.data.synthetic_common import BODY_PALETTE, SyntheticObject, SyntheticSample, body_pixels, smooth_noise

SCENE_CLASSES: tuple[str, ...] = ("boat", "car", "cow", "person", "bird")

_GROUNDS = ("water", "grass", "sand", "road")


@dataclass
class _Figure:
    """An object in its own frame: body mask, discriminative part, pixels, and where it stands."""

    mask: np.ndarray
    part: np.ndarray
    pixels: np.ndarray


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    yy, xx = np.indices(shape, dtype=np.float32)
    yy, xx = yy - cy, xx - cx
    u = (xx * np.cos(angle) + yy * np.sin(angle)) / max(rx, 0.5)
    v = (-xx * np.sin(angle) + yy * np.cos(angle)) / max(ry, 0.5)
    return u * u + v * v <= 1.0


def _box(shape: tuple[int, int], y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
    yy, xx = np.indices(shape, dtype=np.float32)
    return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)


def _polygon(shape: tuple[int, int], points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Inside test of a convex polygon given as (y, x) points in order."""
    yy, xx = np.indices(shape, dtype=np.float32)
    inside = np.ones(shape, bool)
    pts = list(points)
    sign = None
    for (y0, x0), (y1, x1) in zip(pts, pts[1:] + pts[:1]):
        cross = (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0)
        if sign is None:
            area = sum((b[1] - a[1]) * (b[0] + a[0]) for a, b in zip(pts, pts[1:] + pts[:1]))
            sign = 1.0 if area < 0 else -1.0
        inside &= cross * sign >= 0
    return inside


def _stripes(shape: tuple[int, int], period: float, angle: float, a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    yy, xx = np.indices(shape, dtype=np.float32)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    on = np.mod(u, period) < period / 2
    return np.where(on[..., None], np.float32(a), np.float32(b))


def _colour(rng: np.random.Generator) -> np.ndarray:
    return BODY_PALETTE[rng.integers(len(BODY_PALETTE))]


def _boat(rng: np.random.Generator, size: float) -> _Figure:
    w = size * rng.uniform(1.6, 2.4)
    hull_h = size * rng.uniform(0.35, 0.5)
    sail_h = size * rng.uniform(0.9, 1.4)
    h, wi = int(hull_h + sail_h + 3), int(w + 3)
    shape = (h, wi)
    top = sail_h
    hull = _polygon(shape, [(top, 0.5), (top, w), (h - 1.5, w * 0.82), (h - 1.5, w * 0.18)])
    mast_x = w * rng.uniform(0.4, 0.6)
    sail = _polygon(shape, [(1.0, mast_x), (top - 1, mast_x), (top - 1, mast_x - sail_h * rng.uniform(0.5, 0.8))])
    mask = hull | sail
    pixels = body_pixels(rng, shape, _colour(rng))
    stripe = _stripes(shape, rng.uniform(4.0, 6.0), rng.uniform(-0.3, 0.3), (250, 250, 246), (220, 40, 40))
    pixels = np.where(sail[..., None], stripe, pixels)
    return _Figure(mask, sail & ~hull, pixels)


def _car(rng: np.random.Generator, size: float) -> _Figure:
    w = size * rng.uniform(1.8, 2.5)
    body_h = size * rng.uniform(0.45, 0.6)
    cabin_h = size * rng.uniform(0.35, 0.5)
    wheel_r = body_h * rng.uniform(0.38, 0.5)
    h, wi = int(cabin_h + body_h + wheel_r + 3), int(w + 3)
    shape = (h, wi)
    body = _box(shape, cabin_h, 1, cabin_h + body_h, w)
    cabin = _box(shape, 1, w * 0.25, cabin_h + 1, w * 0.75)
    wheels = np.zeros(shape, bool)
    for fx in (0.22, 0.78):
        wheels |= _ellipse(shape, cabin_h + body_h, w * fx, wheel_r, wheel_r)
    mask = body | cabin | wheels
    pixels = body_pixels(rng, shape, _colour(rng))
    yy, xx = np.indices(shape, dtype=np.float32)
    window = _box(shape, 3, w * 0.3, cabin_h - 1, w * 0.7)
    pixels = np.where(window[..., None], np.float32((170, 210, 235)) + rng.normal(0, 4, pixels.shape), pixels)
    tyre = np.where(
        np.mod(np.hypot(yy - (cabin_h + body_h), np.minimum(np.abs(xx - w * 0.22), np.abs(xx - w * 0.78))), 4.0) < 2.0,
        20.0,
        200.0,
    )
    pixels = np.where(wheels[..., None], np.stack([tyre] * 3, -1).astype(np.float32), pixels)
    return _Figure(mask, wheels, pixels)


def _cow(rng: np.random.Generator, size: float) -> _Figure:
    w = size * rng.uniform(1.6, 2.1)
    body_h = size * rng.uniform(0.7, 0.9)
    leg_h = size * rng.uniform(0.4, 0.6)
    head_r = size * rng.uniform(0.28, 0.36)
    facing = 1 if rng.random() < 0.5 else -1
    h, wi = int(body_h + leg_h + 3), int(w + 2 * head_r + 3)
    shape = (h, wi)
    x_body = head_r + 1 if facing > 0 else 1
    body = _ellipse(shape, head_r + body_h / 2, x_body + w / 2, body_h / 2, w / 2)
    legs = np.zeros(shape, bool)
    for fx in (0.15, 0.3, 0.7, 0.85):
        legs |= _box(shape, head_r + body_h * 0.7, x_body + w * fx - 1.5, h - 1, x_body + w * fx + 1.5)
    head_x = x_body + w + head_r * 0.6 if facing > 0 else x_body + w - (w + head_r * 0.6)
    head = _ellipse(shape, head_r + 1, head_x, head_r, head_r * 0.9)
    mask = body | legs | head
    pixels = body_pixels(rng, shape, _colour(rng))
    yy, xx = np.indices(shape, dtype=np.float32)
    spots = smooth_noise(rng, h, wi, (4, 6), 1)[..., 0] > 0.25
    face = np.where(spots[..., None], np.float32((24, 22, 22)), np.float32((246, 244, 240)))
    pixels = np.where(head[..., None], face + rng.normal(0, 4, pixels.shape), pixels)
    return _Figure(mask, head & ~body, pixels)


def _person(rng: np.random.Generator, size: float) -> _Figure:
    torso_w = size * rng.uniform(0.45, 0.6)
    torso_h = size * rng.uniform(0.9, 1.2)
    head_r = torso_w * rng.uniform(0.45, 0.55)
    leg_h = size * rng.uniform(0.7, 0.9)
    h, wi = int(2 * head_r + torso_h + leg_h + 3), int(torso_w + 4)
    shape = (h, wi)
    cx = wi / 2
    head = _ellipse(shape, head_r + 1, cx, head_r, head_r)
    torso = _ellipse(shape, 2 * head_r + torso_h / 2, cx, torso_h / 2, torso_w / 2)
    legs = _box(shape, 2 * head_r + torso_h * 0.8, cx - torso_w * 0.35, h - 1, cx - torso_w * 0.05) | _box(
        shape, 2 * head_r + torso_h * 0.8, cx + torso_w * 0.05, h - 1, cx + torso_w * 0.35
    )
    mask = head | torso | legs
    pixels = body_pixels(rng, shape, _colour(rng))
    yy, _ = np.indices(shape, dtype=np.float32)
    skin = np.float32((236, 190, 150)) + rng.uniform(-20, 10)
    hair = yy < head_r * rng.uniform(0.6, 1.0)
    face = np.where(hair[..., None], np.float32((40, 28, 20)), skin)
    pixels = np.where(head[..., None], face + rng.normal(0, 3, pixels.shape), pixels)
    return _Figure(mask, head & ~torso, pixels)


def _bird(rng: np.random.Generator, size: float) -> _Figure:
    size = size * 0.75
    w = size * rng.uniform(1.3, 1.7)
    body_h = size * rng.uniform(0.6, 0.8)
    beak = size * 0.45
    facing = 1 if rng.random() < 0.5 else -1
    h, wi = int(body_h * 1.6 + 3), int(w + beak + 3)
    shape = (h, wi)
    x0 = 1 if facing > 0 else beak + 1
    cy = h * 0.6
    body = _ellipse(shape, cy, x0 + w / 2, body_h / 2, w / 2)
    wing = _polygon(shape, [(1, x0 + w * 0.25), (cy, x0 + w * 0.35), (cy, x0 + w * 0.7)])
    tip_x = x0 + w + beak * 0.9 if facing > 0 else x0 - beak * 0.9
    base_x = x0 + w * 0.9 if facing > 0 else x0 + w * 0.1
    beak_mask = _polygon(shape, [(cy - body_h * 0.25, base_x), (cy, tip_x), (cy + body_h * 0.1, base_x)]) & ~body
    mask = body | wing | beak_mask
    pixels = body_pixels(rng, shape, _colour(rng))
    eye = _ellipse(shape, cy - body_h * 0.15, base_x - facing * w * 0.12, 1.6, 1.6)
    pixels = np.where(beak_mask[..., None], np.float32((255, 150, 0)) + rng.normal(0, 4, pixels.shape), pixels)
    pixels = np.where(eye[..., None], np.float32((10, 10, 10)), pixels)
    return _Figure(mask, beak_mask | (eye & body), pixels)


_DRAW: dict[str, Callable[[np.random.Generator, float], _Figure]] = {
    "boat": _boat,
    "car": _car,
    "cow": _cow,
    "person": _person,
    "bird": _bird,
}
_STANDS_ON = {"boat": "water", "car": "land", "cow": "land", "person": "land", "bird": "any"}


def _ground_pixels(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    yy, xx = np.indices((height, width), dtype=np.float32)
    noise = smooth_noise(rng, height, width, (max(2, height // 8), max(2, width // 8)), 1)
    fine = rng.normal(0, 5, size=(height, width, 3)).astype(np.float32)
    if kind == "water":
        base = np.float32((40, 96, 160)) + rng.uniform(-15, 15, 3)
        ripples = np.sin(yy * rng.uniform(0.9, 1.4) + 0.15 * xx * rng.uniform(-1, 1) + noise[..., 0] * 3)
        return base + ripples[..., None] * np.float32((10, 16, 22)) + noise * 10 + fine
    if kind == "grass":
        base = np.float32((70, 140, 60)) + rng.uniform(-15, 15, 3)
        blades = rng.normal(0, 14, size=(height, width, 1)).astype(np.float32)
        return base + blades + noise * 15 + fine
    if kind == "sand":
        base = np.float32((200, 178, 130)) + rng.uniform(-15, 15, 3)
        return base + noise * 18 + fine
    base = np.float32((100, 100, 104)) + rng.uniform(-12, 12, 3)
    dash = (np.abs(yy - height * 0.5) < 1.5) & (np.mod(xx, 16) < 8)
    return base + noise * 10 + fine + dash[..., None] * 120.0


def _sky(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    top = np.float32((110, 160, 225)) + rng.uniform(-20, 20, 3)
    bottom = np.float32((200, 220, 240)) + rng.uniform(-15, 10, 3)
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    sky = top * (1 - t) + bottom * t
    sky = np.broadcast_to(sky, (height, width, 3)).copy()
    for _ in range(int(rng.integers(0, 3))):  # clouds
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        cloud = _ellipse((height, width), cy, cx, rng.uniform(4, 10), rng.uniform(10, 28))
        sky[cloud] = np.float32((245, 245, 248)) + rng.normal(0, 3, (int(cloud.sum()), 3))
    return sky + rng.normal(0, 3, size=sky.shape).astype(np.float32)


def _ground_kind(rng: np.random.Generator, classes: set[str]) -> str:
    if "boat" in classes:
        return "water" if rng.random() < 0.9 else str(rng.choice(("sand", "grass")))
    if rng.random() < 0.1:
        return "water"
    if "cow" in classes:
        return "grass" if rng.random() < 0.8 else str(rng.choice(("sand", "road")))
    return str(rng.choice(("grass", "sand", "road"), p=(0.25, 0.4, 0.35)))


def _distractors(rng: np.random.Generator, image: np.ndarray, horizon: int, ground: str) -> None:
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        if ground == "water" and rng.random() < 0.5:  # buoys: small red/white discs on the water
            cy, cx, r = rng.uniform(horizon + 4, height - 3), rng.uniform(0, width), rng.uniform(2, 4)
            disc = _ellipse((height, width), cy, cx, r, r)
            image[disc] = np.float32((220, 40, 40)) if rng.random() < 0.6 else np.float32((240, 240, 240))
        elif rng.random() < 0.6:  # rocks and bushes
            cy, cx = rng.uniform(horizon, height), rng.uniform(0, width)
            blob = _ellipse((height, width), cy, cx, rng.uniform(3, 12), rng.uniform(5, 18), rng.uniform(0, np.pi))
            colour = _colour(rng) * rng.uniform(0.5, 1.1)
            image[blob] = colour + rng.normal(0, 6, (int(blob.sum()), 3))
        else:  # posts
            x = rng.uniform(0, width - 3)
            top, bottom = rng.uniform(0, horizon), rng.uniform(horizon, height)
            post = _box((height, width), top, x, bottom, x + rng.uniform(1.5, 3.5))
            image[post] = _colour(rng) * 0.7


def _place(
    rng: np.random.Generator, figure: _Figure, kind: str, horizon: int, height: int, width: int
) -> tuple[int, int]:
    """Top-left corner: boats float on the waterline region, land objects stand on the ground."""
    fh, fw = figure.mask.shape
    x = int(rng.integers(-fw // 4, max(-fw // 4 + 1, width - 3 * fw // 4)))
    if kind == "any" and rng.random() < 0.5:
        y = int(rng.integers(0, max(1, horizon - fh // 2)))
    else:
        low = horizon + 2 if kind != "water" else horizon - fh // 3
        base = int(rng.integers(low, max(low + 1, height + fh // 5)))
        y = base - fh
    return y, x


def synthesize_scene(rng: np.random.Generator, class_ids: Sequence[int]) -> Optional[SyntheticSample]:
    """One scene and its ground truth, or None if the layout failed (the caller draws again)."""
    height = int(rng.integers(96, 161))
    width = int(np.clip(height * np.exp(rng.uniform(np.log(0.6), np.log(1.8))), 96, 200))
    names = [VOC_CLASSES[c - 1] for c in class_ids]
    n_classes = int(min(len(names), rng.choice((1, 2, 3), p=(0.5, 0.35, 0.15))))
    chosen = [str(c) for c in rng.choice(names, size=n_classes, replace=False)]
    n_objects = int(rng.integers(n_classes, min(4, n_classes + 2) + 1))
    plan = chosen + [str(rng.choice(chosen)) for _ in range(n_objects - n_classes)]
    ground = _ground_kind(rng, set(chosen))
    horizon = int(height * rng.uniform(0.3, 0.6))
    image = np.concatenate([_sky(rng, horizon, width), _ground_pixels(rng, ground, height - horizon, width)])
    _distractors(rng, image, horizon, ground)
    scale = min(height, width) / 128.0
    figures = []
    for name in plan:
        size = float(np.exp(rng.uniform(np.log(20), np.log(52)))) * scale
        figure = _DRAW[name](rng, size)
        stand = _STANDS_ON[name]
        if stand == "water" and ground != "water":
            stand = "land"
        figures.append((name, figure, _place(rng, figure, stand, horizon, height, width)))
    figures.sort(key=lambda item: item[2][0] + item[1].mask.shape[0])  # far (higher base) first
    owner = np.zeros((height, width), np.int32)
    parts = []
    for index, (_name, figure, (y, x)) in enumerate(figures, start=1):
        fh, fw = figure.mask.shape
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + fh, height), min(x + fw, width)
        if y0 >= y1 or x0 >= x1:
            return None
        local = figure.mask[y0 - y : y1 - y, x0 - x : x1 - x]
        region = image[y0:y1, x0:x1]
        region[local] = figure.pixels[y0 - y : y1 - y, x0 - x : x1 - x][local]
        owner[y0:y1, x0:x1][local] = index
        part = np.zeros((height, width), bool)
        part[y0:y1, x0:x1] = figure.part[y0 - y : y1 - y, x0 - x : x1 - x]
        parts.append(part)
    image += rng.normal(0, 2.0, size=image.shape).astype(np.float32)
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return _scene_truth(rgb, owner, [(VOC_CLASSES.index(n) + 1, f.mask.sum()) for n, f, _ in figures], parts)


def _scene_truth(
    rgb: np.ndarray, owner: np.ndarray, items: list[tuple[int, int]], parts: list[np.ndarray]
) -> Optional[SyntheticSample]:
    """VOC ground truth of the visible objects; an object must keep its part and 30 % of itself in view."""
    height, width = owner.shape
    semantic = np.zeros((height, width), np.uint8)
    instance = np.zeros((height, width), np.uint8)
    band = np.zeros((height, width), bool)
    objects: list[SyntheticObject] = []
    kept_parts: list[np.ndarray] = []
    for index, (class_id, full_area) in enumerate(items, start=1):
        visible = owner == index
        area = int(visible.sum())
        if area < 0.3 * full_area or not (parts[index - 1] & visible).any():
            semantic[visible] = 0  # mostly hidden: painted, but not an object of the image -> background
            if area:
                return None  # an unlabelled half-object would be a wrong label; draw again
            continue
        inner = ndimage.binary_erosion(visible, iterations=2 if area > 900 else 1, border_value=1)
        if np.count_nonzero(inner) < 12:
            return None
        band |= visible & ~inner
        number = len(objects) + 1
        semantic[visible] = class_id
        instance[visible] = number
        ys, xs = np.nonzero(visible)
        objects.append(
            SyntheticObject(
                class_id, (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1), area < full_area
            )
        )
        kept_parts.append(parts[index - 1] & visible)
    if not objects:
        return None
    semantic[band] = IGNORE
    instance[band] = IGNORE
    return SyntheticSample(rgb, semantic, instance, objects, np.stack(kept_parts))
