"""A third synthetic benchmark: context flooding, with contexts around, above and below objects.

Where a class nearly always comes with its background context, a classifier scores the class
from the context too, and weakly supervised labels flood the context. The "scenes" set
(:mod:`ray_wsis.data.synthetic_scenes`) has context only BELOW its objects (water, grass);
this "contexts" set pairs each class with a context of another geometry:

* aeroplane -> a sky band at the top (30-45 % of the height), the plane inside it (context
  around and above); bicycle -> a road with dashed lane marks at the bottom, the bicycle on
  it; bird -> 2-4 thin (2-4 px) branches crossing the image, the bird perched on one;
  pottedplant -> a window with a cross-shaped frame ABOVE the plant, which stands on its sill;
  dog -> a tiled floor at the bottom, the dog on it;
* each context is drawn in 80 % of the images holding its class and 10 % of the others (one
  draw per image); sky and window compete for the top, road and floor for the bottom, and an
  image keeps one of each pair (its own class's first), so the measured rates are a little
  lower (75-81 % and 8-13 % per class over 200 images);
* 10 % of the images hold NO object, only one or two contexts on the neutral background: their
  label list is empty (an XML without <object>, an all-background SegmentationClass), the
  negatives that tell a context from its class;
* the other images hold 1-2 classes and 1-3 objects on a textured wall/ground of varying colour
  (not a context), with a few distractors; each image has its own size (96-200 px a side);
* objects are composed silhouettes of body colours shared by every class, several of them
  THIN (a fuselage and swept wings 4-8 px wide, bicycle wheels as 3 px rings on a 3 px frame),
  each with one discriminative part: the aeroplane's tail fin (blue and yellow stripes), the
  bicycle's tyres (black with a silver rim), the bird's beak (orange), the plant's pot
  (terracotta; the leaves are green), the dog's head (tan, dark ears and nose).

Ground truth follows VOC as in the scenes set (palette PNGs, 0 background, class ids, a 255
void band inside each object's boundary, 2 px on the thick parts of objects over 900 px and
1 px elsewhere, so that the band never swallows a 3 px wheel, wing or leg whole), and every
labelled object keeps its part and 30 % of itself in view. A sample also says which contexts
it holds and where (:class:`ContextSample`), to measure how far a method's masks flood them.
Everything is drawn from ``np.random.default_rng([seed, split, index])``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from ray_wsis.classes import IGNORE, VOC_CLASSES
from ray_wsis.data.synthetic_common import BODY_PALETTE, SyntheticObject, SyntheticSample, body_pixels, smooth_noise
from ray_wsis.data.synthetic_scenes import _bird, _box, _distractors, _ellipse, _Figure, _polygon, _sky, _stripes

CONTEXT_CLASSES: tuple[str, ...] = ("aeroplane", "bicycle", "bird", "pottedplant", "dog")

CONTEXTS: tuple[str, ...] = ("sky", "road", "branches", "window", "floor")
"""The contexts; ``ContextSample.context_map`` holds 1 + their index here."""

CONTEXT_OF: dict[str, str] = {
    "aeroplane": "sky",
    "bicycle": "road",
    "bird": "branches",
    "pottedplant": "window",
    "dog": "floor",
}
WITH_CLASS, WITHOUT_CLASS, CONTEXT_ONLY = 0.8, 0.1, 0.1
"""P(context | its class in the image), P(context | class absent), P(image holds no object)."""

_COMPETING = (("sky", "window"), ("road", "floor"))
_SIZES = {"aeroplane": (26, 50), "bicycle": (26, 46), "bird": (22, 40), "pottedplant": (24, 42), "dog": (24, 46)}


@dataclass
class ContextSample(SyntheticSample):
    contexts: tuple[str, ...]
    """The contexts drawn in the image, in :data:`CONTEXTS` order."""
    context_map: np.ndarray
    """(H, W) uint8: 1 + index in :data:`CONTEXTS` where a context is visible, else 0."""


def _rgb(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def _segment(shape: tuple[int, int], p0: tuple[float, float], p1: tuple[float, float], thickness: float) -> np.ndarray:
    """A line segment from p0 to p1 ((y, x) points), ``thickness`` px wide."""
    yy, xx = np.indices(shape, dtype=np.float32)
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0.0, 1.0)
    return np.hypot(yy - y0 - t * dy, xx - x0 - t * dx) <= thickness / 2


def _rotate(points: Sequence[tuple[float, float]], angle: float, cy: float, cx: float) -> list[tuple[float, float]]:
    """(y, x) points turned by ``angle`` about the origin, then moved to (cy, cx)."""
    c, s = np.cos(angle), np.sin(angle)
    return [(float(cy + x * s + y * c), float(cx + x * c - y * s)) for y, x in points]


def _cropped(mask: np.ndarray, part: np.ndarray, pixels: np.ndarray, flip: bool) -> _Figure:
    """The figure cut to its mask's bounding box plus 1 px, mirrored if ``flip``."""
    ys, xs = np.nonzero(mask)
    y0, y1 = max(int(ys.min()) - 1, 0), min(int(ys.max()) + 2, mask.shape[0])
    x0, x1 = max(int(xs.min()) - 1, 0), min(int(xs.max()) + 2, mask.shape[1])
    crop = (slice(y0, y1), slice(x0, x1))
    mask, part, pixels = mask[crop], part[crop], pixels[crop]
    if flip:
        mask, part, pixels = mask[:, ::-1], part[:, ::-1], pixels[:, ::-1]
    return _Figure(np.ascontiguousarray(mask), np.ascontiguousarray(part), np.ascontiguousarray(pixels))


def _colour(rng: np.random.Generator) -> np.ndarray:
    return BODY_PALETTE[rng.integers(len(BODY_PALETTE))]


# ----------------------------------------------------------------------------------------
# Objects, each facing right in its own frame before an optional mirror


def _aeroplane(rng: np.random.Generator, size: float) -> _Figure:
    length = size * rng.uniform(1.7, 2.2)
    radius = max(2.2, length * rng.uniform(0.05, 0.065))  # fuselage half-thickness: 4-8 px wide
    chord = max(3.5, length * rng.uniform(0.1, 0.14))
    span = length * rng.uniform(0.35, 0.5)
    sweep = span * rng.uniform(0.5, 0.9)
    root = length * rng.uniform(-0.05, 0.12)
    fin = length * rng.uniform(0.2, 0.28)
    half = length / 2
    pitch = rng.uniform(-0.25, 0.25)
    side = int(2 * max(half + 2, span + radius) + 6)
    shape = (side, side)
    c = side / 2

    def poly(points: Sequence[tuple[float, float]]) -> np.ndarray:
        return _polygon(shape, _rotate(points, pitch, c, c))

    fuselage = _ellipse(shape, c, c, radius, half, pitch)
    near_wing = poly(
        [
            (0, root + chord / 2),
            (span, root - sweep + chord * 0.3),
            (span, root - sweep - chord * 0.3),
            (0, root - chord / 2),
        ]
    )
    far_wing = poly(
        [
            (0, root + chord * 0.4),
            (-span * 0.45, root - sweep * 0.45 + chord * 0.2),
            (-span * 0.45, root - sweep * 0.45 - chord * 0.2),
            (0, root - chord * 0.4),
        ]
    )
    tail_fin = poly([(0, -half * 0.96), (-radius - fin, -half * 1.04), (-radius - fin, -half * 0.84), (0, -half * 0.6)])
    stabiliser = poly([(0, -half * 0.72), (span * 0.3, -half * 0.94), (span * 0.3, -half * 1.02), (0, -half * 0.92)])
    mask = fuselage | near_wing | far_wing | tail_fin | stabiliser
    pixels = body_pixels(rng, shape, _colour(rng))
    stripes = _stripes(shape, rng.uniform(3.5, 5.0), pitch + rng.uniform(0.7, 1.0), (32, 52, 168), (252, 212, 40))
    part = tail_fin & ~fuselage
    pixels = np.where(part[..., None], stripes + rng.normal(0, 3, pixels.shape), pixels)
    return _cropped(mask, part, pixels, flip=rng.random() < 0.5)


def _bicycle(rng: np.random.Generator, size: float) -> _Figure:
    radius = size * rng.uniform(0.32, 0.4)
    tyre = rng.uniform(2.6, 3.4)  # the rings are 3 px wide
    tube = rng.uniform(2.6, 3.2)
    base = radius * rng.uniform(2.3, 2.7)
    hub_y = 1.6 * radius + 4
    rear, front = radius + 2, radius + 2 + base
    shape = (int(hub_y + radius + 3), int(front + radius + 3))
    yy, xx = np.indices(shape, dtype=np.float32)
    rings = np.zeros(shape, bool)
    rim = np.zeros(shape, bool)
    for hub_x in (rear, front):
        distance = np.hypot(yy - hub_y, xx - hub_x)
        rings |= (distance <= radius) & (distance >= radius - tyre)
        rim |= (distance >= radius - tyre) & (distance < radius - tyre + 1.0)

    def at(fy: float, fx: float) -> tuple[float, float]:
        return (hub_y - fy * radius, rear + fx * base)

    bracket, seat, head, head_low = at(0.05, 0.42), at(1.35, 0.3), at(1.3, 0.82), at(0.95, 0.86)
    bar = at(1.55, 0.76)
    frame = np.zeros(shape, bool)
    for p0, p1 in (
        ((hub_y, rear), seat),
        ((hub_y, rear), bracket),
        (bracket, seat),
        (seat, head),
        (bracket, head_low),
        (head_low, (hub_y, front)),
        (head_low, bar),
        (bar, (bar[0], bar[1] + radius * 0.35)),
    ):
        frame |= _segment(shape, p0, p1, tube)
    frame |= _ellipse(shape, seat[0] - 1.5, seat[1], 2.0, radius * 0.22)
    for hub_x in (rear, front):
        frame |= _ellipse(shape, hub_y, hub_x, 2.0, 2.0)
    mask = rings | frame
    pixels = body_pixels(rng, shape, _colour(rng))
    tyres = np.where(rim[..., None], _rgb(206, 206, 212), _rgb(26, 26, 30))
    pixels = np.where(rings[..., None], tyres + rng.normal(0, 3, pixels.shape), pixels)
    return _cropped(mask, rings, pixels, flip=rng.random() < 0.5)


def _pottedplant(rng: np.random.Generator, size: float) -> _Figure:
    pot_w = size * rng.uniform(0.5, 0.7)
    pot_h = size * rng.uniform(0.4, 0.55)
    leaf = size * rng.uniform(0.28, 0.42)
    side = int(2 * (2 * leaf + pot_w / 2) + 6)
    top = 2 * leaf + 3
    shape = (int(top + pot_h + 3), side)
    cx = side / 2
    bottom = top + pot_h
    pot = _polygon(
        shape, [(top, cx - pot_w / 2), (top, cx + pot_w / 2), (bottom, cx + pot_w * 0.35), (bottom, cx - pot_w * 0.35)]
    )
    rim = _box(shape, top - 1, cx - pot_w * 0.56, top + pot_h * 0.2, cx + pot_w * 0.56)
    pot |= rim
    leaves = np.zeros(shape, bool)
    pixels = body_pixels(rng, shape, _rgb(74, 146, 64))
    for _ in range(int(rng.integers(4, 8))):
        angle = -np.pi / 2 + rng.uniform(-1.1, 1.1)
        length = leaf * rng.uniform(0.7, 1.0)
        cy, lx = top - 1 + np.sin(angle) * length * 0.95, cx + np.cos(angle) * length * 0.95
        blade = _ellipse(shape, cy, lx, max(2.5, length * rng.uniform(0.22, 0.35)), length, angle) & ~pot
        leaves |= blade
        pixels[blade] += rng.uniform(-22, 22, 3).astype(np.float32)
    mask = pot | leaves
    yy, _ = np.indices(shape, dtype=np.float32)
    clay = _rgb(192, 96, 54) + rng.uniform(-14, 14, 3).astype(np.float32)
    shade = np.where(rim, 0.82, 1.0 - 0.12 * (yy - top) / max(pot_h, 1.0))[..., None]
    pixels = np.where(pot[..., None], clay * shade + rng.normal(0, 4, pixels.shape), pixels)
    return _cropped(mask, pot, pixels, flip=False)


def _dog(rng: np.random.Generator, size: float) -> _Figure:
    body_w = size * rng.uniform(1.2, 1.6)
    body_h = size * rng.uniform(0.42, 0.55)
    leg_h = size * rng.uniform(0.35, 0.5)
    leg_w = max(3.0, size * rng.uniform(0.09, 0.12))
    head_r = size * rng.uniform(0.22, 0.28)
    margin = head_r * 2 + 4
    shape = (int(margin + body_h + leg_h + 3), int(margin + body_w + head_r * 2.6 + 4))
    x0, y0 = margin, margin
    cy, cx = y0 + body_h / 2, x0 + body_w / 2
    body = _ellipse(shape, cy, cx, body_h / 2, body_w / 2)
    legs = np.zeros(shape, bool)
    for fx in (0.14, 0.3, 0.72, 0.88):
        legs |= _box(shape, cy, x0 + body_w * fx - leg_w / 2, y0 + body_h + leg_h, x0 + body_w * fx + leg_w / 2)
    tail = _segment(shape, (cy - body_h * 0.2, x0 + 1), (y0 - body_h * 0.6, x0 - body_w * 0.2), 3.0)
    hy, hx = y0 - head_r * 0.2, x0 + body_w * 0.95 + head_r * 0.4
    head = _ellipse(shape, hy, hx, head_r, head_r * 1.05)
    snout = _ellipse(shape, hy + head_r * 0.35, hx + head_r * 0.9, head_r * 0.42, head_r * 0.6)
    ears = _ellipse(shape, hy + head_r * 0.1, hx - head_r * 0.55, head_r * 0.75, head_r * 0.35, 0.3)
    part = (head | snout | ears) & ~body
    mask = body | legs | tail | part
    pixels = body_pixels(rng, shape, _colour(rng))
    tan = _rgb(206, 160, 104) + rng.uniform(-12, 12, 3).astype(np.float32)
    face = np.where(ears[..., None], _rgb(78, 50, 30), tan)
    nose = _ellipse(shape, hy + head_r * 0.25, hx + head_r * 1.45, 1.8, 1.8)
    eye = _ellipse(shape, hy - head_r * 0.25, hx + head_r * 0.35, 1.5, 1.5)
    face = np.where((nose | eye)[..., None], _rgb(14, 12, 12), face)
    pixels = np.where(part[..., None], face + rng.normal(0, 4, pixels.shape), pixels)
    return _cropped(mask, part, pixels, flip=rng.random() < 0.5)


_DRAW: dict[str, Callable[[np.random.Generator, float], _Figure]] = {
    "aeroplane": _aeroplane,
    "bicycle": _bicycle,
    "bird": _bird,
    "pottedplant": _pottedplant,
    "dog": _dog,
}


# ----------------------------------------------------------------------------------------
# The neutral background and the contexts


def _neutral(rng: np.random.Generator, height: int, width: int, floor_y: int) -> np.ndarray:
    """A textured wall above a plain ground, muted colours of their own (no context)."""
    image = np.empty((height, width, 3), np.float32)
    for y0, y1, level in ((0, floor_y, (120, 210)), (floor_y, height, (80, 170))):
        rows = y1 - y0
        colour = rng.uniform(*level) + rng.uniform(-22, 22, 3)
        noise = smooth_noise(rng, rows, width, (max(2, rows // 10), max(2, width // 10)), 1)
        streaks = np.sin(np.arange(width, dtype=np.float32) * rng.uniform(0.3, 1.2))[None, :, None]
        fine = rng.standard_normal((rows, width, 3), dtype=np.float32) * 4
        image[y0:y1] = colour + noise * rng.uniform(8, 16) + streaks * rng.uniform(0, 4) + fine
    return image


def _road(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.indices((height, width), dtype=np.float32)
    noise = smooth_noise(rng, height, width, (max(2, height // 8), max(2, width // 8)), 1)
    road = (
        _rgb(96, 96, 100)
        + rng.uniform(-12, 12, 3)
        + noise * 10
        + rng.standard_normal((height, width, 3), dtype=np.float32) * 5
    )
    road[:2] = _rgb(176, 174, 168)  # the kerb
    period = rng.uniform(14, 22)
    offset = rng.uniform(0, period)
    for row in rng.uniform(0.3, 0.8, size=int(rng.integers(1, 3))):
        dash = (np.abs(yy - height * row) < 1.2) & (np.mod(xx + offset, period) < period * 0.55)
        road[dash] = _rgb(240, 240, 236)
    return road.astype(np.float32)


def _floor(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.indices((height, width), dtype=np.float32)
    tile = rng.uniform(8, 16)
    light = rng.uniform(150, 225) + rng.uniform(-18, 18, 3)
    fine = rng.standard_normal((height, width, 3), dtype=np.float32) * 3
    shift = rng.uniform(0, tile)
    iy, ix = np.floor(yy / tile), np.floor((xx + shift) / tile)
    if rng.random() < 0.5:  # checker of two tones
        dark = light * rng.uniform(0.45, 0.7)
        floor = np.where((np.mod(iy + ix, 2) == 0)[..., None], light, dark)
    else:  # one tone, dark grout lines
        grout = (np.mod(yy, tile) < 1.5) | (np.mod(xx + shift, tile) < 1.5)
        floor = np.where(grout[..., None], light * 0.45, light)
    return (floor + fine).astype(np.float32)


def _window(rng: np.random.Generator, image: np.ndarray, cmap: np.ndarray, value: int) -> tuple[int, int, int]:
    """A light window with a cross-shaped frame in the upper part, and its sill: (sill top, x0, x1)."""
    height, width = cmap.shape
    ww = int(width * rng.uniform(0.38, 0.6))
    x0 = int(rng.integers(int(width * 0.05), max(int(width * 0.05) + 1, width - ww - int(width * 0.05))))
    x1 = x0 + ww
    y0, y1 = int(height * rng.uniform(0.03, 0.12)), int(height * rng.uniform(0.42, 0.52))
    bar = rng.uniform(3, 5)
    shape = (height, width)
    outer = _box(shape, y0, x0, y1, x1)
    glass = _box(shape, y0 + bar, x0 + bar, y1 - bar, x1 - bar)
    my, mx = (y0 + y1) / 2, (x0 + x1) / 2
    glass &= ~_box(shape, my - bar * 0.4, x0, my + bar * 0.4, x1) & ~_box(shape, y0, mx - bar * 0.4, y1, mx + bar * 0.4)
    wood = _rgb(236, 232, 222) if rng.random() < 0.6 else _rgb(132, 92, 58)
    frame_colour = wood + rng.uniform(-10, 10, 3).astype(np.float32)
    t = np.clip((np.arange(height, dtype=np.float32) - y0) / max(1, y1 - y0), 0, 1)[:, None, None]
    pane = (_rgb(196, 214, 228) * (1 - t) + _rgb(232, 236, 238) * t) * rng.uniform(0.9, 1.05)
    pane = np.broadcast_to(pane, image.shape)
    image[outer] = frame_colour + rng.normal(0, 3, (int(outer.sum()), 3))
    image[glass] = pane[glass] + rng.normal(0, 3, (int(glass.sum()), 3))
    sill_h = int(rng.integers(3, 6))
    sill = _box(shape, y1, x0 - 3, y1 + sill_h, x1 + 3)
    image[sill] = frame_colour * 0.8
    cmap[outer | sill] = value
    return y1, x0, x1


def _branches(rng: np.random.Generator, image: np.ndarray, cmap: np.ndarray, value: int) -> list[np.ndarray]:
    """2-4 thin brown branches across the image, gently bent; their masks."""
    height, width = cmap.shape
    yy, xx = np.indices((height, width), dtype=np.float32)
    masks = []
    for _ in range(int(rng.integers(2, 5))):
        py, px = rng.uniform(0.12, 0.62) * height, rng.uniform(0.2, 0.8) * width
        angle = rng.uniform(-0.55, 0.55)
        along = (xx - px) * np.cos(angle) + (yy - py) * np.sin(angle)
        across = -(xx - px) * np.sin(angle) + (yy - py) * np.cos(angle)
        across += rng.uniform(0, 3) * np.sin(along / rng.uniform(12, 30) + rng.uniform(0, 2 * np.pi))
        mask = np.abs(across) <= rng.uniform(2, 4) / 2
        bark = _rgb(104, 72, 42) * rng.uniform(0.75, 1.15)
        image[mask] = bark + rng.normal(0, 6, (int(mask.sum()), 3))
        cmap[mask] = value
        masks.append(mask)
    return masks


def _choose_contexts(rng: np.random.Generator, chosen: set[str], empty: bool) -> set[str]:
    """One draw per context (80 % with its class, 10 % without); one context per competing pair."""
    own = {CONTEXT_OF[c] for c in chosen}
    if empty:
        pool = [str(c) for c in rng.permutation(CONTEXTS)]
        wanted = set(pool[: int(rng.integers(1, 3))])
    else:
        draws = rng.random(len(CONTEXTS))
        wanted = {c for c, u in zip(CONTEXTS, draws) if u < (WITH_CLASS if c in own else WITHOUT_CLASS)}
    for a, b in _COMPETING:
        coin = rng.random() < 0.5
        if a in wanted and b in wanted:
            if (a in own) != (b in own):
                wanted.discard(b if a in own else a)  # the image's own class keeps its context
            else:
                wanted.discard(b if coin else a)
    return wanted


# ----------------------------------------------------------------------------------------
# The image


@dataclass
class _Scene:
    """Where the contexts are, for placing the objects in them."""

    ground: int
    """The row where the ground (neutral, road or floor) starts: objects without a place stand below it."""
    sky: Optional[int] = None
    """The sky band's height."""
    window: Optional[tuple[int, int, int]] = None
    """The window's sill top row and its columns x0, x1."""
    branches: list[np.ndarray] = field(default_factory=list)


def _room(name: str, scene: _Scene) -> Optional[int]:
    """The tallest the figure may be to fit its context (the sky band, under the window), if any."""
    if name == "aeroplane" and scene.sky is not None:
        return scene.sky - 4
    if name == "pottedplant" and scene.window is not None:
        return scene.window[0] - 1
    return None


def _free_x(rng: np.random.Generator, low: int, high: int, fw: int, taken: list[tuple[int, int]]) -> int:
    """A left column in [low, high): of three draws, the one overlapping the placed figures least."""
    draws = rng.integers(low, max(low + 1, high), size=3)
    overlaps = [sum(max(0, min(x1, int(x) + fw) - max(x0, int(x))) for x0, x1 in taken) for x in draws]
    return int(draws[int(np.argmin(overlaps))])


def _place(
    rng: np.random.Generator,
    name: str,
    figure: _Figure,
    scene: _Scene,
    taken: list[tuple[int, int]],
    height: int,
    width: int,
) -> Optional[tuple[int, int]]:
    """Top-left corner of the figure: each class in its context when the image has it."""
    fh, fw = figure.mask.shape
    if name == "aeroplane":  # whole in width: its tail fin is at one end
        x = _free_x(rng, 0, width - fw + 1, fw, taken)
        if scene.sky is not None:  # inside the band: sky around and above it
            return int(rng.integers(2, max(3, scene.sky - fh - 1))), x
        return int(rng.integers(0, max(1, int(height * 0.65) - fh))), x
    x = _free_x(rng, -fw // 4, width - 3 * fw // 4, fw, taken)
    if name == "bird":
        if scene.branches:  # perched: its lowest pixel on the branch's top row
            branch = scene.branches[int(rng.integers(len(scene.branches)))]
            rows, cols = np.nonzero(figure.mask)
            low = int(rows.max())
            foot = int(np.median(cols[rows >= low - 1]))
            top = branch.argmax(axis=0)
            ok = branch.any(axis=0) & (top >= low)
            ok[: max(0, foot - fw // 4)] = False
            ok[max(0, width - (fw - foot) + fw // 4) :] = False
            columns = np.flatnonzero(ok)
            if not columns.size:
                return None
            column = int(columns[rng.integers(columns.size)])
            return int(top[column]) - low, column - foot
        return int(rng.integers(0, max(1, height - fh))), x
    if name == "pottedplant" and scene.window is not None:  # on the sill, the window above it
        sill, x0, x1 = scene.window
        centre = rng.uniform(x0 + fw * 0.3, max(x0 + fw * 0.3 + 1, x1 - fw * 0.3))
        return sill - fh, int(centre - fw / 2)
    low = scene.ground + 2 + (height - scene.ground) // 4  # on the ground (road, floor), not at its edge
    base = int(rng.integers(low, max(low + 1, height + 1)))
    return base - fh, x


def synthesize_contexts(rng: np.random.Generator, class_ids: Sequence[int]) -> Optional[ContextSample]:
    """One image and its ground truth, or None if the layout failed (the caller draws again)."""
    height = int(rng.integers(96, 161))
    width = int(np.clip(height * np.exp(rng.uniform(np.log(0.6), np.log(1.8))), 96, 200))
    names = [VOC_CLASSES[c - 1] for c in class_ids]
    empty = rng.random() < CONTEXT_ONLY
    plan: list[str] = []
    if not empty:
        n_classes = int(min(len(names), rng.choice((1, 2), p=(0.6, 0.4))))
        chosen = [str(c) for c in rng.choice(names, size=n_classes, replace=False)]
        n_objects = int(rng.integers(n_classes, min(3, n_classes + 1) + 1))
        plan = chosen + [str(rng.choice(chosen)) for _ in range(n_objects - n_classes)]
    contexts = _choose_contexts(rng, set(plan), empty)
    ground = int(height * rng.uniform(0.55, 0.72))
    image = _neutral(rng, height, width, ground)
    cmap = np.zeros((height, width), np.uint8)
    scene = _Scene(ground)
    if "sky" in contexts:
        band = int(height * rng.uniform(0.3, 0.45))
        image[:band] = _sky(rng, band, width)
        cmap[:band] = CONTEXTS.index("sky") + 1
        scene.sky = band
    if "window" in contexts:
        scene.window = _window(rng, image, cmap, CONTEXTS.index("window") + 1)
    for bottom in ("road", "floor"):
        if bottom in contexts:
            band = int(height * rng.uniform(0.3, 0.45))
            image[height - band :] = (_road if bottom == "road" else _floor)(rng, band, width)
            cmap[height - band :] = CONTEXTS.index(bottom) + 1
            scene.ground = height - band
    before = image.copy()
    _distractors(rng, image, scene.ground, "ground")
    cmap[(image != before).any(axis=-1)] = 0
    if "branches" in contexts:
        scene.branches = _branches(rng, image, cmap, CONTEXTS.index("branches") + 1)
    scale = min(height, width) / 128.0
    figures: list[tuple[str, _Figure, tuple[int, int]]] = []
    for name in plan:
        low, high = _SIZES[name]
        size = float(np.exp(rng.uniform(np.log(low), np.log(high)))) * scale
        figure = _DRAW[name](rng, size)
        room = _room(name, scene)
        for _ in range(6):  # shrink it until it fits its context
            if room is None or figure.mask.shape[0] <= room:
                break
            size *= 0.95 * room / figure.mask.shape[0]
            figure = _DRAW[name](rng, size)
        if room is not None and figure.mask.shape[0] > room:
            return None
        corner = _place(
            rng, name, figure, scene, [(c[1], c[1] + f.mask.shape[1]) for _, f, c in figures], height, width
        )
        if corner is None:
            return None
        figures.append((name, figure, corner))
    figures.sort(key=lambda item: item[2][0] + item[1].mask.shape[0])  # far (higher base) first
    owner = np.zeros((height, width), np.int32)
    parts = []
    for index, (_name, figure, (y, x)) in enumerate(figures, start=1):
        fh, fw = figure.mask.shape
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + fh, height), min(x + fw, width)
        if y0 >= y1 or x0 >= x1:
            return None
        local = figure.mask[y0 - y : y1 - y, x0 - x : x1 - x]
        image[y0:y1, x0:x1][local] = figure.pixels[y0 - y : y1 - y, x0 - x : x1 - x][local]
        owner[y0:y1, x0:x1][local] = index
        part = np.zeros((height, width), bool)
        part[y0:y1, x0:x1] = figure.part[y0 - y : y1 - y, x0 - x : x1 - x]
        parts.append(part)
    cmap[owner > 0] = 0
    image += rng.standard_normal(image.shape, dtype=np.float32) * 2
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    items = [(name, int(figure.mask.sum())) for name, figure, _ in figures]
    return _truth(rgb, owner, items, parts, tuple(c for c in CONTEXTS if c in contexts), cmap)


def _truth(
    rgb: np.ndarray,
    owner: np.ndarray,
    items: list[tuple[str, int]],
    parts: list[np.ndarray],
    contexts: tuple[str, ...],
    cmap: np.ndarray,
) -> Optional[ContextSample]:
    """VOC ground truth as the scenes set's (``_scene_truth``), but a 2 px void band only on thick parts.

    An object over 900 px gets a 2 px band where it is at least 5 px thick, 1 px elsewhere (a
    2 px band would void a 3 px wheel or leg whole); smaller ones 1 px. None: draw again.
    """
    height, width = owner.shape
    semantic = np.zeros((height, width), np.uint8)
    instance = np.zeros((height, width), np.uint8)
    band = np.zeros((height, width), bool)
    objects: list[SyntheticObject] = []
    kept_parts: list[np.ndarray] = []
    for index, (name, full_area) in enumerate(items, start=1):
        visible = owner == index
        area = int(visible.sum())
        if area < 0.3 * full_area or not (parts[index - 1] & visible).any():
            if area:
                return None  # an unlabelled half-object would be a wrong label; draw again
            continue
        inner = ndimage.binary_erosion(visible, iterations=1, border_value=1)
        if np.count_nonzero(inner) < 12:
            return None
        if area > 900:  # 2 px on the thick parts; a 1 px band keeps thin ones (wheels, legs, wings)
            inner2 = ndimage.binary_erosion(inner, border_value=1)
            thick = ndimage.binary_dilation(inner2, iterations=2) & visible
            inner &= ~thick | inner2
        band |= visible & ~inner
        class_id = VOC_CLASSES.index(name) + 1
        semantic[visible] = class_id
        instance[visible] = len(objects) + 1
        ys, xs = np.nonzero(visible)
        bbox = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(SyntheticObject(class_id, bbox, area < full_area))
        kept_parts.append(parts[index - 1] & visible)
    if items and not objects:
        return None
    semantic[band] = IGNORE
    instance[band] = IGNORE
    part_masks = np.stack(kept_parts) if kept_parts else np.zeros((0, height, width), bool)
    return ContextSample(rgb, semantic, instance, objects, part_masks, contexts, cmap)


__all__ = ["CONTEXTS", "CONTEXT_CLASSES", "CONTEXT_OF", "ContextSample", "synthesize_contexts"]
