"""Bytes -> RGB uint8 arrays, and label PNGs -> class-index maps.

Real datasets hold every kind of image PIL can open (EXIF-rotated phone photos, CMYK JPEGs,
16-bit PNGs, palette GIFs...). The models want one thing: an (H, W, 3) uint8 RGB array in
the orientation a viewer shows. A file that cannot give that raises
:class:`ImageDecodeError` with a short reason, so the pipeline can record it per image and
go on instead of failing a whole batch.
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ray_wsis.classes import voc_palette

MAX_PIXELS = 200_000_000
"""Decompression-bomb guard. PIL itself refuses images above 2 * Image.MAX_IMAGE_PIXELS
(about 179 MP with its default) before we can look at them; both give an ImageDecodeError."""

_CORRUPT = "truncated or corrupt image"


class ImageDecodeError(ValueError):
    """An image that cannot be decoded; ``reason`` is short enough for a per-image error table."""

    def __init__(self, reason: str, source: str = ""):
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)

    def __reduce__(self):  # keep reason/source separate across Ray's pickling of exceptions
        return (type(self), (self.reason, self.source))


def _open(data: bytes, source: str) -> Image.Image:
    """Open and fully decode, turning every PIL failure into a short reason."""
    if not data:
        raise ImageDecodeError("empty file", source)
    try:
        img = Image.open(io.BytesIO(data))  # PIL warns (only) above Image.MAX_IMAGE_PIXELS, ~89 MP
    except Image.DecompressionBombError:
        raise ImageDecodeError(f"image too large (over {MAX_PIXELS // 1_000_000} megapixels)", source) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image", source) from None
    except Exception:  # noqa: BLE001 - PIL raises many types for a broken header
        raise ImageDecodeError(_CORRUPT, source) from None
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            f"image too large ({width}x{height} pixels, over {MAX_PIXELS // 1_000_000} megapixels)", source
        )
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})", source)
    try:
        img.load()  # force the whole decode: PIL is lazy and truncation shows only here
    except Exception:  # noqa: BLE001 - OSError, SyntaxError, zlib errors, struct errors...
        raise ImageDecodeError(_CORRUPT, source) from None
    return img


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """Premultiply by alpha: transparent pixels become black whatever colour they stored."""
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def _high_bit_depth_to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit integer holding 16-bit) samples -> 8 bit by dropping the low byte."""
    return (np.clip(values.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def _to_rgb_array(img: Image.Image, source: str) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in img.info):
        return _composite_on_black(np.asarray(img.convert("RGBA"), dtype=np.uint8))
    if mode.startswith("I;16") or mode == "I":
        gray = _high_bit_depth_to_uint8(np.asarray(img))
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:  # a [0, 1] float image, as most tools write them
            values = values * 255.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    try:  # L, 1, P, CMYK, YCbCr, RGBX, HSV...
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError):
        raise ImageDecodeError(f"unsupported image mode {mode}", source) from None


def decode_image(data: bytes, *, source: str = "") -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 RGB array, upright as EXIF says.

    Alpha (RGBA, LA, palette transparency) is composited on black, i.e. colours are
    premultiplied by alpha: fully transparent pixels carry no colour a model could learn.
    16-bit and 32-bit integer gray is scaled by ``>> 8`` (65535 -> 255, 32768 -> 128);
    float images in [0, 1] are scaled by 255, other float images are clipped to [0, 255].
    Multi-frame files give their first frame. ``source`` only names the file in errors.
    """
    img = _open(data, source)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose a good image
        pass
    array = _to_rgb_array(img, source)
    return np.ascontiguousarray(array)


def inference_size(height: int, width: int, max_long_side: int) -> tuple[int, int]:
    """(height, width) after shrinking so that the long side is at most max_long_side."""
    if max_long_side <= 0:
        raise ValueError(f"max_long_side must be positive, got {max_long_side}")
    long_side = max(height, width)
    if long_side <= max_long_side:
        return height, width
    scale = max_long_side / long_side
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_long_side(image: np.ndarray, max_long_side: int) -> np.ndarray:
    """Shrink (bicubic) so that max(H, W) <= max_long_side; smaller images come back as is."""
    height, width = inference_size(image.shape[0], image.shape[1], max_long_side)
    if (height, width) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))


def resize_label(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """A label map back to (height, width) with nearest neighbours (images above max_long_side)."""
    if label.shape == (height, width):
        return label
    return np.asarray(Image.fromarray(label).resize((width, height), Image.Resampling.NEAREST))


def _palette_lookup() -> dict[int, int]:
    palette = np.asarray(voc_palette(), dtype=np.int64).reshape(256, 3)
    keys = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    lookup: dict[int, int] = {}
    for index, key in enumerate(keys.tolist()):
        lookup.setdefault(key, index)  # first index wins for repeated colours
    return lookup


def decode_label_png(data: bytes, *, source: str = "") -> np.ndarray:
    """A label map (H, W) uint8 of class or instance indices, from a VOC-style PNG.

    Palette (mode P) PNGs give their raw indices, never their colours, so 255 stays void.
    Gray (L, SBD's SegmentationClassAug) gives its values. An RGB label image is mapped
    back through the VOC palette; a colour that is not in it raises ImageDecodeError.
    """
    img = _open(data, source)
    mode = img.mode
    if mode in ("P", "L"):
        return np.array(img, dtype=np.uint8)
    if mode == "1":
        return np.array(img.convert("L"), dtype=np.uint8) // 255
    if mode.startswith("I"):
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ImageDecodeError("label values outside 0..255", source)
        return values.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.int64)
        keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        unique, inverse = np.unique(keys, return_inverse=True)
        lookup = _palette_lookup()
        mapped: list[Optional[int]] = [lookup.get(int(k)) for k in unique]
        if any(m is None for m in mapped):
            bad = int(unique[[m is None for m in mapped]][0])
            raise ImageDecodeError(
                f"colour {(bad >> 16, (bad >> 8) & 255, bad & 255)} is not in the VOC palette", source
            )
        return np.asarray(mapped, dtype=np.uint8)[inverse].reshape(keys.shape)
    raise ImageDecodeError(f"unsupported label image mode {mode}", source)
