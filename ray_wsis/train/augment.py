"""Training-time augmentation on uint8 numpy images (CPU, inside Ray Data map_batches).

Classifier (irn VOC12ClassificationDataset): random resize of the long side, ImageNet
normalisation, horizontal flip, random crop into a zero canvas. IRNet (irn
VOC12AffinityDataset): random rescale (image bicubic, label nearest), normalisation, flip,
random crop (image fill 0, label fill 255), label reduced x4 with nearest sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance

from ray_wsis.classes import IGNORE

MEAN = np.asarray((0.485, 0.456, 0.406), np.float32) * 255.0
STD = np.asarray((0.229, 0.224, 0.225), np.float32) * 255.0


def normalize(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) float32 with torchvision's ImageNet statistics."""
    return (image.astype(np.float32) - MEAN) / STD


def resize(image: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


def random_resize_long(image: np.ndarray, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    target = int(rng.integers(low, high + 1))
    scale = target / max(h, w)
    return resize(image, max(1, round(h * scale)), max(1, round(w * scale)))


def color_jitter(image: np.ndarray, strength: float | Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """torchvision-style ColorJitter: brightness, contrast, saturation factors in [1 - s, 1 + s]
    (one number: the same s for the three) and, given a fourth number h, a hue shift in [-h, h]
    of a turn (psa's AffinityNet: (0.3, 0.3, 0.3, 0.1)), applied in a random order as torchvision."""
    values = (float(strength),) * 3 if isinstance(strength, (int, float)) else tuple(float(v) for v in strength)
    if not any(v > 0 for v in values):
        return image
    pil = Image.fromarray(image)
    steps = [
        (enhancer, s)
        for enhancer, s in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), values[:3])
        if s > 0
    ]
    hue = values[3] if len(values) > 3 else 0.0
    order = rng.permutation(len(steps) + (1 if hue > 0 else 0))
    for k in order:
        if k < len(steps):
            enhancer, s = steps[k]
            pil = enhancer(pil).enhance(float(rng.uniform(max(0.0, 1 - s), 1 + s)))
        else:
            h, sat, val = pil.convert("HSV").split()
            shift = int(round(rng.uniform(-hue, hue) * 255))
            h = h.point(lambda x, shift=shift: (x + shift) % 256)
            pil = Image.merge("HSV", (h, sat, val)).convert("RGB")
    return np.asarray(pil)


def crop_box(height: int, width: int, size: int, rng: np.random.Generator) -> tuple[int, int, int, int, int, int]:
    """(canvas_top, canvas_left, image_top, image_left, h, w) of irn's random_crop."""
    ch, cw = min(size, height), min(size, width)
    if width > size:
        cont_left, img_left = 0, int(rng.integers(0, width - size + 1))
    else:
        cont_left, img_left = int(rng.integers(0, size - width + 1)), 0
    if height > size:
        cont_top, img_top = 0, int(rng.integers(0, height - size + 1))
    else:
        cont_top, img_top = int(rng.integers(0, size - height + 1)), 0
    return cont_top, cont_left, img_top, img_left, ch, cw


def place(array: np.ndarray, box: tuple[int, int, int, int, int, int], size: int, fill: float) -> np.ndarray:
    cont_top, cont_left, img_top, img_left, ch, cw = box
    canvas = np.full((size, size, *array.shape[2:]), fill, dtype=array.dtype)
    canvas[cont_top : cont_top + ch, cont_left : cont_left + cw] = array[
        img_top : img_top + ch, img_left : img_left + cw
    ]
    return canvas


def classifier_sample(
    image: np.ndarray, crop_size: int, resize_long: tuple[int, int], jitter: float, rng: np.random.Generator
) -> np.ndarray:
    """One classifier training input: (3, crop, crop) float32."""
    image = random_resize_long(image, resize_long[0], resize_long[1], rng)
    image = normalize(color_jitter(image, jitter, rng))
    if rng.random() < 0.5:
        image = image[:, ::-1]
    box = crop_box(image.shape[0], image.shape[1], crop_size, rng)
    return np.ascontiguousarray(place(image, box, crop_size, 0.0).transpose(2, 0, 1))


def relation_sample(
    image: np.ndarray,
    label: np.ndarray,
    crop_size: int,
    rescale: tuple[float, float],
    rng: np.random.Generator,
    stride: int = 4,
    jitter: float | Sequence[float] = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One IRNet/AffinityNet input: (3, crop, crop) float32 and (crop/stride)^2 uint8 labels."""
    scale = float(rng.uniform(rescale[0], rescale[1]))
    h, w = image.shape[:2]
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    image = normalize(color_jitter(resize(image, nh, nw) if (nh, nw) != (h, w) else image, jitter, rng))
    label = resize(label, nh, nw, nearest=True)
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    box = crop_box(nh, nw, crop_size, rng)
    image = place(image, box, crop_size, 0.0)
    label = place(label, box, crop_size, IGNORE)
    offset = stride // 2  # PIL nearest x(1/stride) samples the middle of each block
    return np.ascontiguousarray(image.transpose(2, 0, 1)), np.ascontiguousarray(label[offset::stride, offset::stride])


def top_left_sample(image: np.ndarray, crop_size: int) -> np.ndarray:
    """irn's displacement-mean pass input: normalised top-left crop in a zero canvas."""
    image = normalize(image)
    return np.ascontiguousarray(
        place(
            image, (0, 0, 0, 0, min(crop_size, image.shape[0]), min(crop_size, image.shape[1])), crop_size, 0.0
        ).transpose(2, 0, 1)
    )
