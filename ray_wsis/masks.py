"""Mask codecs: VOC palette PNGs for label maps, COCO RLE for instance masks.

Label maps are stored as palette ('P') PNGs so that they open as coloured images in any
viewer while the stored pixel values stay the class (or instance) indices. Instance masks
travel as COCO compressed RLE with ``counts`` as a utf-8 ``str`` so that records are plain
JSON/Parquet values (no pickling, no bytes columns).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ray_wsis.classes import voc_palette

MAX_INSTANCES = 254  # ids 1..254 in a uint8 map; 0 is background, 255 is void.

_PALETTE = voc_palette()

# pycocotools <= 2.0.11 decodes through an ``__array__`` without numpy 2's ``copy`` keyword,
# which numpy flags on every decode; harmless, and narrowed to that module and message.
warnings.filterwarnings(
    "ignore",
    message="__array__ implementation doesn't accept a copy keyword",
    category=DeprecationWarning,
    module="pycocotools",
)


# --------------------------------------------------------------------------- label PNGs
def encode_label_png(label: np.ndarray) -> bytes:
    """(H, W) uint8 index map -> palette PNG bytes with the VOC colour map."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be 2-D (H, W), got shape {label.shape}")
    if label.dtype != np.uint8:
        raise ValueError(f"label must be uint8, got dtype {label.dtype}")
    if label.size == 0:
        raise ValueError(f"label must not be empty, got shape {label.shape}")
    image = Image.fromarray(np.ascontiguousarray(label))  # mode 'L'
    image.putpalette(_PALETTE)  # turns 'L' into 'P' keeping the indices
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_gray_png(values: np.ndarray) -> bytes:
    """(H, W) uint8 map (a confidence, not labels) -> grayscale PNG bytes; read with decode_label_png."""
    values = np.asarray(values)
    if values.ndim != 2 or values.dtype != np.uint8 or values.size == 0:
        raise ValueError(f"values must be a non-empty 2-D uint8 map, got {values.shape} {values.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(values)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_label_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W) uint8 raw indices; accepts palette ('P') and grayscale ('L') PNGs.

    The palette is deliberately ignored: the values, not the colours, are the labels.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"data must be bytes, got {type(data).__name__}")
    try:
        image = Image.open(io.BytesIO(bytes(data)))
        image.load()
    except Exception as exc:  # PIL raises several unrelated types for garbage input
        raise ValueError(f"data is not a readable image: {exc}") from exc
    if image.mode not in ("P", "L"):
        raise ValueError(f"data must be a palette ('P') or grayscale ('L') PNG, got mode {image.mode!r}")
    return np.array(image, dtype=np.uint8)


# --------------------------------------------------------------------------- RLE
def _as_bool(name: str, array: np.ndarray, ndim: int) -> np.ndarray:
    """Accept bool or integer masks (nonzero = set); floats are ambiguous and refused."""
    array = np.asarray(array)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.integer):
        return array != 0
    raise ValueError(f"{name} must be bool (or integer 0/1), got dtype {array.dtype}")


def _rle_to_c(rle: Mapping[str, Any], name: str = "rle") -> dict:
    """Normalise an RLE dict to what pycocotools' C code wants (bytes counts)."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"{name} must be a dict with 'size' and 'counts'")
    size = rle["size"]
    if not isinstance(size, (list, tuple, np.ndarray)) or len(size) != 2 or any(int(s) < 0 for s in size):
        raise ValueError(f"{name}['size'] must be [h, w], got {size!r}")
    h, w = int(size[0]), int(size[1])
    counts = rle["counts"]
    if isinstance(counts, str):
        return {"size": [h, w], "counts": counts.encode("utf-8")}
    if isinstance(counts, (bytes, bytearray)):
        return {"size": [h, w], "counts": bytes(counts)}
    if isinstance(counts, (list, tuple, np.ndarray)):  # uncompressed RLE
        return mask_utils.frPyObjects({"size": [h, w], "counts": list(counts)}, h, w)
    raise ValueError(f"{name}['counts'] must be str, bytes or a list, got {type(counts).__name__}")


def _from_c(rle: Mapping[str, Any]) -> dict:
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("utf-8")}


def encode_rles(masks: np.ndarray) -> list[dict]:
    """(N, H, W) masks -> N COCO RLE dicts, with a single pycocotools call."""
    masks = _as_bool("masks", masks, 3)
    if masks.shape[0] == 0:
        return []
    if masks.shape[1] == 0 or masks.shape[2] == 0:
        raise ValueError(f"masks must have a non-empty (H, W), got shape {masks.shape}")
    # pycocotools wants (H, W, N) uint8 in Fortran order (column-major, as COCO's RLE is).
    fortran = np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)
    return [_from_c(r) for r in mask_utils.encode(fortran)]


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) mask -> ``{"size": [h, w], "counts": str}`` (COCO compressed RLE)."""
    mask = _as_bool("mask", mask, 2)
    if mask.size == 0:
        raise ValueError(f"mask must have a non-empty (H, W), got shape {mask.shape}")
    return encode_rles(mask[None])[0]


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """COCO RLE (counts as str, bytes or uncompressed list) -> (H, W) bool."""
    return mask_utils.decode(_rle_to_c(rle)).astype(bool)


def rle_area(rle: Mapping[str, Any]) -> int:
    """Number of set pixels, without decoding."""
    return int(mask_utils.area(_rle_to_c(rle)))


def rle_bbox(rle: Mapping[str, Any]) -> list[float]:
    """Tight box ``[x, y, w, h]`` in COCO convention (pixel-edge units; all zeros if empty)."""
    return [float(v) for v in mask_utils.toBbox(_rle_to_c(rle))]


# --------------------------------------------------------------------------- instance maps
def instance_label_map(masks: np.ndarray, scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Paint (N, H, W) instance masks into an (H, W) uint8 map with ids 1..N (0 = none).

    ``masks[i]`` gets id ``i + 1``. Where instances overlap the highest-scoring one wins
    (on equal scores the earlier one), as if painted lowest score first: this is the VOC
    ``SegmentationObject`` export, which cannot represent overlaps.
    """
    masks = _as_bool("masks", masks, 3)
    n = masks.shape[0]
    if n > MAX_INSTANCES:
        raise ValueError(f"masks holds {n} instances, more than {MAX_INSTANCES} fit in a uint8 map")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"scores must have shape ({n},) to match masks, got {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    if n == 0:
        return np.zeros(masks.shape[1:], dtype=np.uint8)
    # priority: n for the best instance down to 1 for the worst; 0 where nothing is set.
    order = np.argsort(-scores, kind="stable")
    priority = np.empty(n, dtype=np.uint8)
    priority[order] = np.arange(n, 0, -1, dtype=np.uint8)
    best = (masks * priority[:, None, None]).max(axis=0)  # (H, W) winning priority
    ids_by_priority = np.zeros(n + 1, dtype=np.uint8)
    ids_by_priority[priority] = np.arange(1, n + 1, dtype=np.uint8)
    return ids_by_priority[best]
