"""A weakly-supervised segmentation benchmark in miniature, written as a VOC 2012 folder.

What makes it a fair test of CAM -> random walk methods:

* Object bodies are blobs (ellipses, rounded rectangles, wobbly polygons) of widely varying
  size, filled with a colour drawn from ONE palette shared by every class, with mild texture
  and shading. A body alone says nothing about the class.
* Each object carries a small DISCRIMINATIVE PART (12-25 % of its area, fully inside it and
  never occluded) with a class-specific pattern and colours: stripes, checkerboard, dots,
  rings... A classifier's CAM therefore lights up the part only, and the random walk has
  to spread it over the body, stopping at the object's boundary.
* Clutter: a smooth coloured background with fine noise, distractor blobs that look like
  bodies but carry no part (some with a plain decoy disc), and small random patches.
* Some images hold two touching (or slightly overlapping) objects of the same class with
  different body colours, the case instance segmentation must split. Objects occlude each
  other in z-order; the instance map shows what is visible.
* Ground truth follows VOC: palette PNGs, 0 background, class id = index in VOC_CLASSES + 1,
  instance ids 1..n, and a void (255) band of 1 px (2 px for large objects) inside every
  object boundary. Image-level labels are the classes of the visible objects.

Everything is drawn from ``np.random.default_rng([seed, split, index])``, so an image does
not change when the number of images does.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image
from scipy import ndimage

from ray_wsis.classes import IGNORE, VOC_CLASSES, voc_palette
from ray_wsis.config import StorageConfig
from ray_wsis.data.synthetic_common import BODY_PALETTE, SyntheticObject, SyntheticSample, body_pixels, smooth_noise
from ray_wsis.data.synthetic_contexts import CONTEXT_CLASSES, synthesize_contexts
from ray_wsis.data.synthetic_scenes import SCENE_CLASSES, synthesize_scene
from ray_wsis.storage import Location, resolve, write_bytes_atomic

DEFAULT_CLASSES: tuple[str, ...] = ("aeroplane", "bicycle", "bird", "boat")
SYNTHETIC_KINDS: tuple[str, ...] = ("parts", "scenes", "contexts")

_PART_COLOURS = [
    ((252, 226, 36), (28, 28, 32)),  # 1 stripes: yellow / black
    ((40, 222, 244), (16, 24, 72)),  # 2 checkerboard: cyan / navy
    ((238, 40, 196), (246, 244, 238)),  # 3 dots: magenta on white
    ((52, 236, 72), (248, 250, 248)),  # 4 rings: green / white
    ((255, 120, 0), (20, 60, 20)),
    ((255, 255, 255), (200, 0, 40)),
    ((0, 90, 255), (255, 230, 200)),
    ((120, 255, 200), (90, 0, 90)),
]
_KINDS = ("stripes", "checker", "dots", "rings")


@dataclass(frozen=True)
class PartStyle:
    """The class-specific pattern of a discriminative part."""

    kind: str
    foreground: tuple[int, int, int]
    background: tuple[int, int, int]
    period: float
    angle: float


def part_style(class_index: int) -> PartStyle:
    """Pattern of the class at ``class_index`` (0-based position in the dataset's class list)."""
    kind = _KINDS[class_index % 4]
    foreground, background = _PART_COLOURS[class_index % len(_PART_COLOURS)]
    variant = class_index // 4
    period = (4.0, 5.0, 5.0, 4.0)[class_index % 4] + 1.0 * (variant % 2)
    angle = np.deg2rad((45.0, 0.0, 0.0, 0.0)[class_index % 4] + 50.0 * variant)
    if variant % 2:
        foreground, background = background, foreground
    return PartStyle(kind, foreground, background, period, float(angle))


@dataclass
class _Shape:
    """A blob in its own frame: mask, optional part, and its pixels (float RGB)."""

    mask: np.ndarray
    part: Optional[np.ndarray]
    pixels: np.ndarray
    short_side: float


@dataclass
class _Placed:
    shape: _Shape
    class_id: int
    y: int
    x: int
    full: np.ndarray
    guard: np.ndarray
    """The part, dilated: later objects must not cover it."""
    in_image: int


# ----------------------------------------------------------------------------------------
# Drawing


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.uniform(70, 190, size=3).astype(np.float32)
    gray = base.mean()
    base = gray + (base - gray) * 0.6  # less saturated than the bodies
    field = smooth_noise(rng, height, width, (int(rng.integers(2, 5)), int(rng.integers(2, 6))))
    field = field - field.mean(axis=(0, 1))
    mid = smooth_noise(rng, height, width, (max(2, height // 10), max(2, width // 10)), 1)
    image = base + field * rng.uniform(20, 45) + mid * rng.uniform(6, 14)
    return image + rng.normal(0, rng.uniform(3, 7), size=image.shape).astype(np.float32)


def _blob_mask(rng: np.random.Generator, short_side: float, long_cap: float) -> np.ndarray:
    """A random ellipse, superellipse (rounded rectangle) or wobbly blob, cropped to its box."""
    b = short_side / 2.0
    a = float(np.clip(b * rng.uniform(1.0, 1.8), b, max(b, long_cap / 2.0)))
    theta = rng.uniform(0, np.pi)
    reach = int(np.ceil(a * 1.5)) + 1
    yy, xx = np.mgrid[-reach : reach + 1, -reach : reach + 1].astype(np.float32)
    u = (xx * np.cos(theta) + yy * np.sin(theta)) / a
    v = (-xx * np.sin(theta) + yy * np.cos(theta)) / b
    kind = rng.integers(3)
    if kind == 0:
        mask = u * u + v * v <= 1.0
    elif kind == 1:
        power = rng.uniform(2.5, 5.0)
        mask = np.abs(u) ** power + np.abs(v) ** power <= 1.0
    else:
        phi = np.arctan2(v, u)
        k = np.arange(2, 6, dtype=np.float32)[:, None, None]
        amps = rng.uniform(0.0, 0.11, size=4).astype(np.float32)[:, None, None]
        phases = rng.uniform(0, 2 * np.pi, size=4).astype(np.float32)[:, None, None]
        radius = 1.0 + (amps * np.cos(k * phi[None] + phases)).sum(axis=0)
        mask = np.hypot(u, v) <= radius
        mask = ndimage.binary_opening(mask, iterations=1)  # no one-pixel spurs
        labels, count = ndimage.label(mask)
        if count > 1:
            mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _pattern(
    style: PartStyle, shape: tuple[int, int], centre: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    yy, xx = np.indices(shape, dtype=np.float32)
    yy -= centre[0]
    xx -= centre[1]
    angle = style.angle + rng.uniform(-0.15, 0.15)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    period = style.period
    if style.kind == "stripes":
        on = np.mod(u, period) < period / 2
    elif style.kind == "checker":
        cell = period / 2
        on = (np.floor(u / cell) + np.floor(v / cell)) % 2 == 0
    elif style.kind == "dots":
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        on = du * du + dv * dv <= (period * 0.32) ** 2
    else:
        on = np.mod(np.hypot(u, v), period) < period / 2
    return np.where(on[..., None], np.float32(style.foreground), np.float32(style.background))


def _disc(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float], angle: float) -> np.ndarray:
    yy, xx = np.indices(shape, dtype=np.float32)
    yy -= centre[0]
    xx -= centre[1]
    u = (xx * np.cos(angle) + yy * np.sin(angle)) / radii[0]
    v = (-xx * np.sin(angle) + yy * np.cos(angle)) / radii[1]
    return u * u + v * v <= 1.0


def _inner_spot(
    rng: np.random.Generator, mask: np.ndarray, fraction: float
) -> Optional[tuple[np.ndarray, tuple[float, float]]]:
    """A disc or short ellipse of ~fraction of the mask's area, at least 1.5 px inside it."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    elongation = rng.uniform(1.0, 1.6) if rng.random() < 0.5 else 1.0
    minor = np.sqrt(fraction * mask.sum() / (np.pi * elongation))
    while minor >= 2.5:
        major = minor * elongation
        candidates = np.argwhere(dist >= major + 1.5)
        if len(candidates):
            cy, cx = candidates[rng.integers(len(candidates))]
            spot = _disc(mask.shape, (float(cy), float(cx)), (major, minor), rng.uniform(0, np.pi)) & mask
            return spot, (float(cy), float(cx))
        minor *= 0.9
    return None


def _make_shape(
    rng: np.random.Generator,
    short_side: float,
    long_cap: float,
    colour: np.ndarray,
    style: Optional[PartStyle],
    decoy: Optional[np.ndarray] = None,
) -> Optional[_Shape]:
    """A body; with ``style`` a patterned part (None if none fits), with ``decoy`` a plain disc."""
    mask = _blob_mask(rng, short_side, long_cap)
    pixels = body_pixels(rng, mask.shape, colour)
    if style is None and decoy is None:
        return _Shape(mask, None, pixels, short_side)
    spot = _inner_spot(rng, mask, rng.uniform(0.12, 0.25))
    if spot is None:
        return None if style is not None else _Shape(mask, None, pixels, short_side)
    part, centre = spot
    if style is not None:
        fill = _pattern(style, mask.shape, centre, rng)
    else:
        fill = np.broadcast_to(np.float32(decoy), pixels.shape)
    fill = fill + rng.normal(0, 4, size=pixels.shape).astype(np.float32)
    pixels = np.where(part[..., None], fill, pixels)
    return _Shape(mask, part if style is not None else None, pixels, short_side)


def _slices(
    y: int, x: int, h: int, w: int, height: int, width: int
) -> Optional[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """Image and patch slices of a patch whose top-left corner is at (y, x); None if off-image."""
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, height), min(x + w, width)
    if y0 >= y1 or x0 >= x1:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))


def _full(local: np.ndarray, y: int, x: int, height: int, width: int) -> np.ndarray:
    full = np.zeros((height, width), dtype=bool)
    cut = _slices(y, x, *local.shape, height, width)
    if cut is not None:
        full[cut[0]] = local[cut[1]]
    return full


def _paint(image: np.ndarray, shape: _Shape, y: int, x: int) -> None:
    cut = _slices(y, x, *shape.mask.shape, *image.shape[:2])
    if cut is None:
        return
    (img_sl, patch_sl) = cut
    mask = shape.mask[patch_sl]
    region = image[img_sl]
    region[mask] = shape.pixels[patch_sl][mask]


# ----------------------------------------------------------------------------------------
# Layout


def _acceptable(shape: _Shape, y: int, x: int, placed: list[_Placed], owner: np.ndarray) -> Optional[np.ndarray]:
    """The new object's full mask if it may go at (y, x), else None.

    Rules: at least 60 % of it inside the image, its part wholly inside, no earlier part
    covered (with a margin), and every earlier object keeps half of its area visible.
    """
    height, width = owner.shape
    full = _full(shape.mask, y, x, height, width)
    area = int(full.sum())
    if area < 0.6 * shape.mask.sum():
        return None
    if shape.part is not None and _full(shape.part, y, x, height, width).sum() < shape.part.sum():
        return None
    for index, other in enumerate(placed, start=1):
        if (full & other.guard).any():
            return None
        still = np.count_nonzero((owner == index) & ~full)
        if still < 0.5 * other.in_image:
            return None
    return full


def _random_position(rng: np.random.Generator, shape: _Shape, height: int, width: int) -> tuple[int, int]:
    h, w = shape.mask.shape
    y = int(rng.integers(-h // 3, max(-h // 3 + 1, height - 2 * h // 3)))
    x = int(rng.integers(-w // 3, max(-w // 3 + 1, width - 2 * w // 3)))
    return y, x


def _touching_position(
    rng: np.random.Generator, anchor: _Placed, shape: _Shape, owner: np.ndarray, anchor_index: int
) -> Optional[tuple[int, int]]:
    """Slide the new shape out from the anchor's centre until they barely overlap, or just touch."""
    height, width = owner.shape
    visible = owner == anchor_index
    ys, xs = np.nonzero(visible)
    centre = ys.mean(), xs.mean()
    h, w = shape.mask.shape
    target = rng.uniform(0.0, 0.04) * shape.mask.sum()
    theta = rng.uniform(0, 2 * np.pi)
    dy, dx = np.sin(theta), np.cos(theta)
    for step in np.arange(0.0, height + width, 0.5):
        y = int(round(centre[0] + dy * step - h / 2))
        x = int(round(centre[1] + dx * step - w / 2))
        cut = _slices(y, x, h, w, height, width)
        if cut is None:
            return None
        overlap = np.count_nonzero(visible[cut[0]] & shape.mask[cut[1]])
        if overlap <= target:
            return y, x
    return None


def _distinct_colour(rng: np.random.Generator, avoid: Sequence[int]) -> int:
    choices = [
        i for i in range(len(BODY_PALETTE)) if all(np.abs(BODY_PALETTE[i] - BODY_PALETTE[j]).sum() > 150 for j in avoid)
    ]
    return int(rng.choice(choices)) if choices else int(rng.integers(len(BODY_PALETTE)))


def synthesize(
    rng: np.random.Generator, size: tuple[int, int] = (128, 160), class_ids: Sequence[int] = (1, 2, 3, 4)
) -> SyntheticSample:
    """One image and its ground truth; ``class_ids`` are the 1-based VOC ids the dataset uses."""
    for _ in range(50):
        sample = _try_synthesize(rng, size, tuple(class_ids))
        if sample is not None:
            return sample
    raise RuntimeError("could not lay out a synthetic image in 50 attempts")  # pragma: no cover


def _try_synthesize(
    rng: np.random.Generator, size: tuple[int, int], class_ids: tuple[int, ...]
) -> Optional[SyntheticSample]:
    height, width = size
    scale = min(height, width) / 128.0
    short_range = (18 * scale, 70 * scale)
    long_cap = 0.9 * max(height, width)

    def short_side() -> float:
        return float(np.exp(rng.uniform(np.log(short_range[0]), np.log(short_range[1]))))

    image = _background(rng, height, width)
    for _ in range(int(rng.integers(0, 4))):  # small patches
        ph, pw = (int(v) for v in rng.integers(int(3 * scale) + 1, int(10 * scale) + 2, size=2))
        py, px = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
        colour = BODY_PALETTE[rng.integers(len(BODY_PALETTE))] * rng.uniform(0.6, 1.3)
        image[py : py + ph, px : px + pw] = colour + rng.normal(0, 8, size=(ph, pw, 3))
    for _ in range(int(rng.choice(4, p=(0.25, 0.35, 0.25, 0.15)))):  # distractor bodies
        decoy = None
        if rng.random() < 0.4:
            decoy = BODY_PALETTE[rng.integers(len(BODY_PALETTE))] * rng.uniform(0.5, 1.3)
        shape = _make_shape(
            rng, short_side() * 0.9, long_cap, BODY_PALETTE[rng.integers(len(BODY_PALETTE))], None, decoy
        )
        if shape is not None:
            y, x = _random_position(rng, shape, height, width)
            _paint(image, shape, y, x)

    n_classes = int(min(len(class_ids), rng.choice((1, 2, 3), p=(0.45, 0.35, 0.20))))
    chosen = [int(c) for c in rng.choice(class_ids, size=n_classes, replace=False)]
    with_pair = bool(rng.random() < 0.4)
    minimum = n_classes + int(with_pair)
    n_objects = int(rng.integers(minimum, max(minimum, 4) + 1))
    head = [chosen[0], chosen[0]] if with_pair else [chosen[0]]  # a pair comes first, at the bottom
    rest = chosen[1:] + [int(rng.choice(chosen)) for _ in range(n_objects - len(head) - len(chosen) + 1)]
    rng.shuffle(rest)
    plan = head + rest

    owner = np.zeros((height, width), dtype=np.int32)
    placed: list[_Placed] = []
    colours: list[int] = []
    for slot, class_id in enumerate(plan):
        style = part_style(class_ids.index(class_id))
        in_pair = with_pair and slot < 2
        colour = _distinct_colour(rng, colours[:1] if in_pair and slot == 1 else [])
        for _ in range(25):
            shape = _make_shape(rng, short_side(), long_cap, BODY_PALETTE[colour], style)
            if shape is None:
                continue
            if in_pair and slot == 1:
                position = _touching_position(rng, placed[0], shape, owner, 1)
                if position is None:
                    continue
            else:
                position = _random_position(rng, shape, height, width)
            full = _acceptable(shape, *position, placed, owner)
            if full is None:
                continue
            guard = ndimage.binary_dilation(_full(shape.part, *position, height, width), iterations=2)
            owner[full] = len(placed) + 1
            _paint(image, shape, *position)
            placed.append(_Placed(shape, class_id, *position, full, guard, int(full.sum())))
            colours.append(colour)
            break
        else:
            if in_pair:
                return None  # the touching pair is the point of this layout: start again
    if not placed:
        return None

    image += rng.normal(0, 2.0, size=image.shape).astype(np.float32)
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return _ground_truth(rgb, owner, placed)


def _ground_truth(rgb: np.ndarray, owner: np.ndarray, placed: list[_Placed]) -> Optional[SyntheticSample]:
    height, width = owner.shape
    semantic = np.zeros((height, width), dtype=np.uint8)
    instance = np.zeros((height, width), dtype=np.uint8)
    band = np.zeros((height, width), dtype=bool)
    objects: list[SyntheticObject] = []
    parts: list[np.ndarray] = []
    for index, item in enumerate(placed, start=1):
        visible = owner == index
        width_px = 2 if item.shape.short_side >= 40 else 1
        inner = ndimage.binary_erosion(visible, iterations=width_px, border_value=1)
        band |= visible & ~inner
        if np.count_nonzero(inner) < 16:
            return None
        number = len(objects) + 1
        semantic[visible] = item.class_id
        instance[visible] = number
        ys, xs = np.nonzero(visible)
        truncated = bool(item.in_image < item.shape.mask.sum())
        objects.append(
            SyntheticObject(
                item.class_id, (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1), truncated
            )
        )
        parts.append(_full(item.shape.part, item.y, item.x, height, width) & visible)
    semantic[band] = IGNORE
    instance[band] = IGNORE
    return SyntheticSample(rgb, semantic, instance, objects, np.stack(parts))


# ----------------------------------------------------------------------------------------
# Writing a VOC folder


def voc_xml(image_id: str, height: int, width: int, objects: Sequence[SyntheticObject]) -> bytes:
    """A VOC-style annotation: filename, size and one <object> per visible instance."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "ray_wsis synthetic"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = VOC_CLASSES[obj.class_id - 1]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.bbox):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _png(labels: np.ndarray, palette: list[int]) -> bytes:
    """A palette PNG whose pixel values are the label indices themselves (VOC style)."""
    img = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
    img.putpalette(palette)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_split_lists(root: str, splits: dict[str, list[str]], storage: Optional[StorageConfig] = None) -> None:
    """ImageSets/Segmentation/{split}.txt and ImageSets/Main/{split}.txt, one id a line."""
    location = resolve(root, storage)
    for split, ids in splits.items():
        text = "".join(f"{i}\n" for i in ids).encode()
        for folder in ("Segmentation", "Main"):
            write_bytes_atomic(location.child("ImageSets", folder, f"{split}.txt"), text)


def _write_sample(location: Location, image_id: str, sample: SyntheticSample, palette: list[int]) -> None:
    height, width = sample.semantic.shape
    write_bytes_atomic(location.child("JPEGImages", f"{image_id}.jpg"), _jpeg(sample.image))
    write_bytes_atomic(
        location.child("Annotations", f"{image_id}.xml"), voc_xml(image_id, height, width, sample.objects)
    )
    write_bytes_atomic(location.child("SegmentationClass", f"{image_id}.png"), _png(sample.semantic, palette))
    write_bytes_atomic(location.child("SegmentationObject", f"{image_id}.png"), _png(sample.instance, palette))


def make_synthetic_voc(
    root: str,
    n_train: int = 240,
    n_val: int = 80,
    size: tuple[int, int] = (128, 160),
    classes: Optional[tuple[str, ...]] = None,
    seed: int = 0,
    storage: Optional[StorageConfig] = None,
    kind: str = "parts",
) -> None:
    """Write a synthetic dataset as a VOC 2012 folder (local path or URI) with train and val splits.

    ``kind`` "parts" (this module: blobs with a class-specific part, every image ``size``,
    (height, width)), "scenes" (:mod:`ray_wsis.data.synthetic_scenes`: outdoor scenes with
    co-occurring context, each image its own size; ``size`` is ignored) or "contexts"
    (:mod:`ray_wsis.data.synthetic_contexts`: a context per class, above, around or below it,
    and images of context alone with no label; each image its own size). ``classes`` are VOC
    class names (default: the kind's own); their class ids are their VOC ids (so ``bird`` is
    3 in any subset). Ids are ``syn_000001``...: train first, then val.
    """
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"kind must be 'parts', 'scenes' or 'contexts', got {kind!r}")
    own = {"parts": DEFAULT_CLASSES, "scenes": SCENE_CLASSES, "contexts": CONTEXT_CLASSES}[kind]
    classes = classes or own
    unknown = [c for c in classes if c not in VOC_CLASSES]
    if unknown or not classes:
        raise ValueError(f"classes must be VOC class names, got unknown {unknown or 'none'}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must not repeat: {classes}")
    if kind != "parts" and any(c not in own for c in classes):
        raise ValueError(f"the {kind} kind draws only {own}, got {classes}")
    if n_train < 0 or n_val < 0 or min(size) < 32:
        raise ValueError("n_train and n_val must be >= 0 and both sides of size >= 32")
    class_ids = tuple(VOC_CLASSES.index(c) + 1 for c in classes)
    location = resolve(root, storage)
    palette = voc_palette()
    splits: dict[str, list[str]] = {"train": [], "val": []}
    number = 0
    for split_index, (split, count) in enumerate((("train", n_train), ("val", n_val))):
        for index in range(count):
            number += 1
            image_id = f"syn_{number:06d}"
            rng = np.random.default_rng([seed, split_index, index])
            if kind == "parts":
                sample = synthesize(rng, size, class_ids)
            else:
                sample = _first_scene(rng, class_ids, synthesize_scene if kind == "scenes" else synthesize_contexts)
            _write_sample(location, image_id, sample, palette)
            splits[split].append(image_id)
    write_split_lists(root, splits, storage)


def _first_scene(rng: np.random.Generator, class_ids: tuple[int, ...], draw) -> SyntheticSample:  # type: ignore[no-untyped-def]
    for _ in range(100):
        sample = draw(rng, class_ids)
        if sample is not None:
            return sample
    raise RuntimeError("could not lay out a synthetic scene in 100 attempts")  # pragma: no cover


__all__ = [
    "DEFAULT_CLASSES",
    "SYNTHETIC_KINDS",
    "BODY_PALETTE",
    "PartStyle",
    "SyntheticObject",
    "SyntheticSample",
    "make_synthetic_voc",
    "part_style",
    "synthesize",
    "voc_xml",
    "write_split_lists",
]
