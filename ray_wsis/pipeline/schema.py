"""Arrow schemas of the stage outputs and the encoders that fill them.

Every inference UDF returns rows of its stage's schema plus an ``error`` column; the shard
sink writes rows with an empty error to the stage's Parquet files and the others to the
errors table. Masks are stored as PNG bytes and COCO RLE strings, never as pickles or
ragged tensor columns, so plain pyarrow readers need nothing from Ray.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from ray_wsis.data.decode import resize_label
from ray_wsis.masks import encode_gray_png, encode_label_png, encode_rles, rle_area, rle_bbox
from ray_wsis.method.scores import ThresholdLike, WalkScores, as_thresholds

ERROR_KINDS = ("failed", "skipped")

INSTANCE_TYPE = pa.struct(
    [
        ("category_id", pa.int16()),
        ("score", pa.float32()),
        ("rle", pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])),
        ("bbox", pa.list_(pa.float32(), 4)),
        ("area", pa.int64()),
    ]
)

PSEUDO_LABELS = pa.schema(
    [
        ("image_id", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("labels", pa.list_(pa.int16())),
        ("semantic", pa.binary()),
        ("confidence", pa.binary()),
        ("instances", pa.list_(INSTANCE_TYPE)),
        ("source", pa.string()),
    ]
)
"""semantic: PNG of the class map; confidence: grayscale PNG, 0..255, of each pixel's distance
from flipping its decision (method/scores.py ``confidence``); source: ``model`` (cut from the
walk) or ``human`` (a reviewer's mask pulled by ``ray-wsis review pull``; confidence 255)."""

SCORES = pa.schema(
    [
        ("image_id", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("labels", pa.list_(pa.int16())),
        ("infer_height", pa.int32()),
        ("infer_width", pa.int32()),
        ("scale", pa.int8()),
        ("score_height", pa.int32()),
        ("score_width", pa.int32()),
        ("semantic_scores", pa.binary()),
        ("instance_classes", pa.list_(pa.int16())),
        ("instance_scores", pa.binary()),
        ("background_scores", pa.binary()),
    ]
)
"""The walk's evidence (method/scores.py): uint8 bytes of (len(labels), score_height,
score_width) walked class maps and of (len(instance_classes), score_height, score_width)
walked (class x cluster) maps, each group quantised to its own peak; labels are cut from them
at infer_height x infer_width and resized to height x width. background_scores: AffinityNet's
walked background channel (1, score_height, score_width) on the semantic group's scale, empty
for IRNet. Same shard names as pseudo_labels/."""

CAMS = pa.schema(
    [
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("labels", pa.list_(pa.int16())),
        ("cam_height", pa.int32()),
        ("cam_width", pa.int32()),
        ("cam", pa.binary()),
    ]
)
"""cam: float16 bytes of a (len(labels), cam_height, cam_width) array (C order); cam_height
and cam_width are ceil(h/4), ceil(w/4) of the inference resolution, which differs from
height x width only for images above dataset.max_long_side."""

IR_LABELS = pa.schema(
    [
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("labels", pa.list_(pa.int16())),
        ("ir_label", pa.binary()),
    ]
)

ERRORS = pa.schema([("image_id", pa.string()), ("stage", pa.string()), ("kind", pa.string()), ("reason", pa.string())])

ERROR_COLUMN = "error"

THRESHOLDS_KEY = "ray_wsis.thresholds"
"""Parquet metadata key of pseudo-label shards: the background thresholds they were cut at (JSON)."""


SEMANTIC_WITHOUT_RELATION_LABELS = "semantic_without_relation_labels"
"""Key in a label shard's thresholds metadata: the semantic threshold its images without relation
labels were cut at, where it is not the semantic one."""


def thresholds_metadata(
    semantic: ThresholdLike,
    instance: ThresholdLike,
    source: str,
    without_relation_labels: Optional[ThresholdLike] = None,
) -> str:
    """JSON of the thresholds a shard was cut at; ``source``: "config" or "calibration";
    ``without_relation_labels``: the semantic one of images without relation labels, if another."""
    data: dict[str, Any] = {
        "semantic": as_thresholds(semantic).as_dict(),
        "instance": as_thresholds(instance).as_dict(),
        "source": source,
    }
    if without_relation_labels is not None:
        data[SEMANTIC_WITHOUT_RELATION_LABELS] = as_thresholds(without_relation_labels).as_dict()
    return json.dumps(data, sort_keys=True)


def error_text(kind: str, reason: str) -> str:
    """Pack an error kind and reason into the UDF's `error` column ("failed: truncated ...")."""
    if kind not in ERROR_KINDS:
        raise ValueError(f"error kind must be one of {ERROR_KINDS}")
    return f"{kind}: {reason}"


def describe_error(exc: BaseException) -> str:
    """One line for the errors table: the exception type and the first line of its message."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def split_error(text: str) -> tuple[str, str]:
    kind, _, reason = text.partition(": ")
    return (kind, reason) if kind in ERROR_KINDS else ("failed", text)


def error_row(schema: pa.Schema, image_id: str, error: str, **known: Any) -> dict[str, Any]:
    """A row of the stage schema with nulls, carrying only the id and the error."""
    row: dict[str, Any] = {name: None for name in schema.names}
    row.update(known, image_id=image_id)
    row[ERROR_COLUMN] = error
    return row


def rows_to_table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (with the error column) -> an Arrow table of schema + error."""
    full = schema.append(pa.field(ERROR_COLUMN, pa.string()))
    return pa.Table.from_pylist(list(rows), schema=full)


def instances_column(masks: np.ndarray, class_ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """Detections -> list<struct> of the pseudo-label schema (RLE via one pycocotools call)."""
    if len(masks) == 0:
        return []
    rles = encode_rles(masks)
    return [
        {
            "category_id": int(c),
            "score": float(s),
            "rle": {"size": [int(v) for v in r["size"]], "counts": r["counts"]},
            "bbox": [float(v) for v in rle_bbox(r)],
            "area": int(rle_area(r)),
        }
        for r, c, s in zip(rles, class_ids, scores)
    ]


def pseudo_label_row(
    image_id: str,
    height: int,
    width: int,
    labels: Sequence[int],
    semantic: np.ndarray,
    confidence: np.ndarray,
    masks: np.ndarray,
    class_ids: np.ndarray,
    scores: np.ndarray,
    source: str = "model",
) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "height": int(height),
        "width": int(width),
        "labels": [int(v) for v in labels],
        "semantic": encode_label_png(semantic),
        "confidence": encode_gray_png(confidence),
        "instances": instances_column(masks, class_ids, scores),
        "source": source,
        ERROR_COLUMN: "",
    }


def at_original_size(
    semantic: np.ndarray, confidence: np.ndarray, masks: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels cut at the inference size, resized (nearest) to the image's size when it was downscaled."""
    if semantic.shape == (height, width):
        return semantic, confidence, masks
    resized = (
        np.stack([resize_label(m.astype(np.uint8), height, width) > 0 for m in masks])
        if len(masks)
        else np.zeros((0, height, width), bool)
    )
    return resize_label(semantic, height, width), resize_label(confidence, height, width), resized


def scores_row(image_id: str, height: int, width: int, scores: WalkScores) -> dict[str, Any]:
    """A row of the scores table (original size height x width; the cut size is in ``scores``)."""
    return {
        "image_id": image_id,
        "height": int(height),
        "width": int(width),
        "labels": [int(v) for v in scores.class_ids],
        "infer_height": scores.height,
        "infer_width": scores.width,
        "scale": scores.scale,
        "score_height": int(scores.semantic.shape[1]),
        "score_width": int(scores.semantic.shape[2]),
        "semantic_scores": scores.semantic.tobytes(),
        "instance_classes": [int(v) for v in scores.instance_classes],
        "instance_scores": scores.instance.tobytes(),
        "background_scores": b"" if scores.background is None else scores.background.tobytes(),
        ERROR_COLUMN: "",
    }


def walk_scores(row: dict[str, Any]) -> WalkScores:
    """The :class:`WalkScores` of a row of the scores table."""
    h, w = int(row["score_height"]), int(row["score_width"])
    labels, classes = row["labels"] or [], row["instance_classes"] or []
    semantic = np.frombuffer(row["semantic_scores"], np.uint8).reshape(len(labels), h, w)
    instance = np.frombuffer(row["instance_scores"], np.uint8).reshape(len(classes), h, w)
    raw = row.get("background_scores") or b""
    background = np.frombuffer(raw, np.uint8).reshape(1, h, w) if raw else None
    return WalkScores(
        int(row["infer_height"]),
        int(row["infer_width"]),
        np.asarray(labels, np.int16),
        semantic,
        np.asarray(classes, np.int16),
        instance,
        int(row["scale"]),
        background,
    )


def cam_row(
    image_id: str, uri: str, height: int, width: int, labels: Sequence[int], cams: np.ndarray
) -> dict[str, Any]:
    """A row of the CAM table: (K, h, w) CAMs stored as float16 bytes; :func:`cam_array` reads it back."""
    cams = cams.astype(np.float16)
    return {
        "image_id": image_id,
        "uri": uri,
        "height": height,
        "width": width,
        "labels": labels,
        "cam_height": cams.shape[1],
        "cam_width": cams.shape[2],
        "cam": cams.tobytes(),
        ERROR_COLUMN: "",
    }


def cam_array(row: dict[str, Any]) -> np.ndarray:
    """The (K, h, w) float32 CAMs of a row of the CAM table."""
    k = len(row["labels"])
    return (
        np.frombuffer(row["cam"], dtype=np.float16).reshape(k, row["cam_height"], row["cam_width"]).astype(np.float32)
    )
