"""`ray-wsis visualize`: panels, a contact sheet, charts and an index.html for one run.

Everything is read from the run's output URI (local or object store) through
:mod:`ray_wsis.storage`; images and ground truth come from the configured dataset. A panel is
drawn from what the run stored: the CAMs (cams/), the walked scores the labels were cut from
(scores/), the labels and their confidence (pseudo_labels/). No network runs and no model file
is read, so the report needs neither torch nor the run's models (docs/architecture.md, "The
report"). It is written to a local folder and references only files it wrote, by relative path.
"""

from __future__ import annotations

import html
import json
import math
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from ray_wsis.config import Config
from ray_wsis.data.decode import ImageDecodeError, inference_size
from ray_wsis.data.records import DatasetError, DatasetSource, ImageRecord
from ray_wsis.data.sources import build_source, load_image
from ray_wsis.labels import PART_PREFIX, decode_row, shard_location
from ray_wsis.method.scores import WalkScores
from ray_wsis.method.upsample import upsample_cams
from ray_wsis.pipeline.schema import cam_array, walk_scores
from ray_wsis.storage import Location, exists, list_files, read_bytes, resolve
from ray_wsis.visualize.panels import contact_sheet, panel

METRIC_KEYS = (
    "cam_miou",
    "ir_label_precision",
    "ir_label_coverage",
    "sem_miou",
    "ins_map25",
    "ins_map50",
    "ins_map70",
    "ins_map75",
)
METRIC_TITLES = {
    "cam_miou": "CAM mIoU",
    "ir_label_precision": "relation-label precision",
    "ir_label_coverage": "relation-label coverage",
    "sem_miou": "pseudo semantic mIoU",
    "ins_map25": "instance mAP@0.25",
    "ins_map50": "instance mAP@0.50",
    "ins_map70": "instance mAP@0.70",
    "ins_map75": "instance mAP@0.75",
}


@dataclass
class PanelEntry:
    """What index.html says about one panel."""

    image_id: str
    file: str
    classes: list[str]
    instances: int
    notes: list[str] = field(default_factory=list)
    image_found: bool = True


# ----------------------------------------------------------------------------------------
# Reading the run


def _parent(location: Location) -> Location:
    return Location(
        location.fs, posixpath.dirname(location.path.rstrip("/")), location.uri.rstrip("/").rsplit("/", 1)[0]
    )


def run_root(labels_uri: str, config: Config) -> tuple[Location, Location]:
    """(run output folder, pseudo-label shard folder); accepts either URI from the user."""
    shards = shard_location(labels_uri, config.storage)
    given = resolve(labels_uri, config.storage)
    root = _parent(shards) if shards.path.rstrip("/") == given.path.rstrip("/") else given
    return root, shards


def _ids_by_file(location: Location) -> dict[str, list[str]]:
    """image_ids of each shard (one column read per file)."""
    return {
        p: pq.read_table(p, columns=["image_id"], filesystem=location.fs).column("image_id").to_pylist()
        for p in list_files(location, ".parquet", PART_PREFIX)
    }


def rows_with_ids(
    location: Location, ids: Sequence[str], ids_by_file: Optional[dict[str, list[str]]] = None
) -> list[dict[str, Any]]:
    """Rows of the given ids, sorted by id, reading only the shards that hold them."""
    wanted, rows = set(ids), []
    value_set = pa.array(sorted(wanted), pa.string())
    for path, file_ids in (ids_by_file if ids_by_file is not None else _ids_by_file(location)).items():
        if wanted.isdisjoint(file_ids):
            continue
        table = pq.read_table(path, filesystem=location.fs)
        rows.extend(table.filter(pc.is_in(table.column("image_id"), value_set=value_set)).to_pylist())
    return sorted(rows, key=lambda r: r["image_id"])


def first_label_rows(shards: Location, n: int) -> list[dict[str, Any]]:
    """Raw pseudo-label rows of the n smallest image_ids."""
    ids_by_file = _ids_by_file(shards)
    chosen = sorted({i for ids in ids_by_file.values() for i in ids})[: max(n, 0)]
    return rows_with_ids(shards, chosen, ids_by_file)


def read_cams(root: Location, ids: Sequence[str]) -> dict[str, tuple[list[int], np.ndarray]]:
    """image_id -> (class ids, (K, h, w) stride-4 CAMs) for the ids that have a CAM row."""
    folder = root.child("cams")
    if not ids or not exists(folder):
        return {}
    return {
        r["image_id"]: ([int(c) for c in r["labels"]], cam_array(r))
        for r in rows_with_ids(folder, ids)
        if r.get("cam") is not None
    }


def read_scores(root: Location, ids: Sequence[str]) -> dict[str, WalkScores]:
    """image_id -> the walked maps its labels were cut from, for the ids that have a scores row
    (none in outputs made before make-pseudo-labels stored them)."""
    folder = root.child("scores")
    if not ids or not exists(folder):
        return {}
    return {r["image_id"]: walk_scores(r) for r in rows_with_ids(folder, ids) if r.get("semantic_scores") is not None}


def read_json_object(root: Location, name: str) -> Optional[dict[str, Any]]:
    """A JSON object file of the run (metrics.json of evaluate, calibration.json of calibrate: the
    thresholds the labels were cut at), or None when the stage has not run or the file is unreadable."""
    location = root.child(name)
    if not exists(location):
        return None
    try:
        content = json.loads(read_bytes(location))
    except ValueError:
        return None
    return content if isinstance(content, dict) else None


class ImageLookup:
    """image_id -> record over the configured splits, scanning a split only when needed."""

    def __init__(self, source: DatasetSource, splits: Sequence[str]) -> None:
        self.source = source
        self.pending = [s for i, s in enumerate(splits) if s and s not in splits[:i]]
        self.records: dict[str, ImageRecord] = {}

    def get(self, image_id: str) -> Optional[ImageRecord]:
        while image_id not in self.records and self.pending:
            try:
                self.records.update((r.image_id, r) for r in self.source.records(self.pending.pop(0)))
            except DatasetError:
                continue
        return self.records.get(image_id)


def load_display_image(
    lookup: ImageLookup, image_id: str, height: int, width: int, config: Config
) -> tuple[np.ndarray, Optional[str]]:
    """(image, problem): the dataset's pixels, or a grey placeholder of the label's size and why."""
    record = lookup.get(image_id)
    if record is None:
        return np.full((height, width, 3), 96, np.uint8), "image not in the dataset"
    try:
        image = load_image(record, config.storage)
    except ImageDecodeError as exc:
        return np.full((height, width, 3), 96, np.uint8), f"image unreadable ({exc.reason})"
    if image.shape[:2] != (height, width):
        return np.full(
            (height, width, 3), 96, np.uint8
        ), f"image is {image.shape[1]}x{image.shape[0]}, labels {width}x{height}"
    return image, None


def ground_truth(source: DatasetSource, image_id: str) -> Optional[np.ndarray]:
    try:
        truth = source.ground_truth(image_id)
    except (DatasetError, ImageDecodeError, KeyError):
        return None
    return None if truth is None else truth.semantic


# ----------------------------------------------------------------------------------------
# Panels


def upsample_stride4(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, ceil(H/4), ceil(W/4)) -> (C, H, W), the pipeline's own bilinear x4 and crop."""
    if maps.shape[1:] != (math.ceil(height / 4), math.ceil(width / 4)):
        height, width = maps.shape[1] * 4, maps.shape[2] * 4  # another max_long_side: keep it whole
    return upsample_cams(maps, height, width)


def walked_maps(scores: WalkScores) -> tuple[list[int], np.ndarray]:
    """(class ids, (C, H, W) maps) of the walk at the inference size, on the scale the cut compares
    with its thresholds (over the top class value); psa's walked background channel first, as 0."""
    ids = [int(c) for c in scores.class_ids]
    if not ids:
        return [], np.zeros((0, scores.height, scores.width), np.float32)
    semantic = upsample_cams(scores.semantic.astype(np.float32), scores.height, scores.width, scores.scale)
    peak = max(float(semantic.max()), 1e-6)
    if scores.background is None:
        return ids, semantic / peak
    background = upsample_cams(scores.background.astype(np.float32), scores.height, scores.width, scores.scale)
    return [0, *ids], np.concatenate([background, semantic]) / peak


def render_panel(
    row: dict[str, Any],
    image: np.ndarray,
    cams: Optional[tuple[list[int], np.ndarray]],
    scores: Optional[WalkScores],
    truth: Optional[np.ndarray],
    class_names: Sequence[str],
    config: Config,
) -> np.ndarray:
    """The panel of one decoded pseudo-label row, from the maps the run stored for it."""
    height, width = row["height"], row["width"]
    cam_ids, cam_maps = cams if cams is not None else ([], None)
    if cam_maps is not None:
        cam_maps = upsample_stride4(cam_maps, *inference_size(height, width, config.dataset.max_long_side))
    walked_ids, walked = walked_maps(scores) if scores is not None else ([], None)
    confidence = row.get("confidence")
    return panel(
        image,
        cam_maps,
        walked,
        None if confidence is None else confidence / 255.0,
        row["semantic"],
        (row["masks"], row["category_ids"].tolist(), row["scores"].tolist()),
        truth,
        class_names,
        cam_ids,
        walked_ids,
    )


def safe_name(image_id: str, taken: set[str]) -> str:
    """A file name for the id: URL- and filesystem-safe, unique within the report."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._") or "image"
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array, np.uint8)).save(path, optimize=False)


# ----------------------------------------------------------------------------------------
# Charts (matplotlib objects only: no pyplot state shared with the caller)


def _values(values: Optional[Sequence[Optional[float]]], n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    for i, v in enumerate((values or [])[:n]):
        out[i] = np.nan if v is None else float(v)
    return out


def bar_chart(
    path: Path,
    names: Sequence[str],
    series: Sequence[tuple[str, np.ndarray]],
    title: str,
    ylabel: str,
    means: Sequence[tuple[str, Optional[float]]] = (),
) -> bool:
    """Grouped per-class bars saved as PNG; False (nothing written) when every value is missing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    present = [i for i in range(len(names)) if any(not np.isnan(v[i]) for _, v in series)]
    if not present:
        return False
    names = [names[i] for i in present]  # only the dataset's classes: none without a value anywhere
    series = [(label, values[present]) for label, values in series]
    fig = Figure(figsize=(min(max(6.0, 0.36 * len(names) + 2.5), 16.0), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x, width = np.arange(len(names)), 0.8 / len(series)
    for k, (label, values) in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, np.nan_to_num(values), width, label=label, color=f"C{k}")
    for k, (label, mean) in enumerate(means):
        if mean is not None:
            ax.axhline(mean, color=f"C{k}", linestyle="--", linewidth=1, label=f"{label} {mean:.1f}")
    ax.set_xticks(x, list(names), rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return True


def write_charts(metrics: Optional[dict[str, Any]], out: Path) -> list[str]:
    """charts/iou_per_class.png and charts/ap50_per_class.png from metrics['per_class']."""
    per_class = (metrics or {}).get("per_class") or {}
    names = list(per_class.get("names") or [])
    written = []
    iou = [
        ("CAM", _values(per_class.get("cam_iou"), len(names))),
        ("pseudo semantic", _values(per_class.get("sem_iou"), len(names))),
    ]
    if bar_chart(
        out / "charts" / "iou_per_class.png",
        names,
        iou,
        "IoU per class",
        "IoU (%)",
        [
            ("CAM mIoU", metrics.get("cam_miou") if metrics else None),
            ("semantic mIoU", metrics.get("sem_miou") if metrics else None),
        ],
    ):
        written.append("charts/iou_per_class.png")
    ap50 = per_class.get("ins_ap50") or []
    fg_names = names[1:] if len(names) == len(ap50) + 1 else names[: len(ap50)]
    if bar_chart(
        out / "charts" / "ap50_per_class.png",
        fg_names,
        [("AP50", _values(ap50, len(fg_names)))],
        "Instance AP50 per class",
        "AP50 (%)",
        [("mAP50", metrics.get("ins_map50") if metrics else None)],
    ):
        written.append("charts/ap50_per_class.png")
    return written


def _curve(values: Optional[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """{"0.25": v, ...} -> sorted thresholds and values (missing values as NaN)."""
    pairs = sorted((float(k), np.nan if v is None else float(v)) for k, v in (values or {}).items())
    return np.asarray([p[0] for p in pairs]), np.asarray([p[1] for p in pairs])


def _threshold(part: dict[str, Any]) -> Optional[float]:
    value = (part.get("threshold") or {}).get("default")
    return None if value is None else float(value)


def calibration_chart(calibration: dict[str, Any], metrics: Optional[dict[str, Any]], path: Path) -> bool:
    """The criterion at every candidate threshold with the chosen one, and where ground truth exists
    the sweep (semantic mIoU, instance mAP50) with the chosen and the best point; False when there
    is no curve to draw (calibration off)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sweeps = {"semantic": "sem_miou_by_threshold", "instance": "ins_map50_by_threshold"}
    parts = [p for p in ("semantic", "instance") if (calibration.get(p) or {}).get("values")]
    if not parts:
        return False
    fig = Figure(figsize=(6.0 * len(parts), 3.8), dpi=100)
    FigureCanvasAgg(fig)
    for k, name in enumerate(parts):
        part = calibration[name]
        ax = fig.add_subplot(1, len(parts), k + 1)
        x, y = _curve(part["values"])
        ax.plot(x, y, "o-", color="C0", markersize=3, label="criterion (no labels)")
        ax.set_xlabel("background threshold")
        ax.set_ylabel("criterion", color="C0")
        chosen = _threshold(part)
        if chosen is not None:
            ax.axvline(chosen, color="C2", linestyle="--", linewidth=1, label=f"chosen {chosen:.2f}")
        sx, sy = _curve((metrics or {}).get(sweeps[name]))
        if len(sx) and not np.isnan(sy).all():
            twin = ax.twinx()
            twin.plot(sx, sy, "s-", color="C1", markersize=3, label="with ground truth")
            twin.set_ylabel("mIoU (%)" if name == "semantic" else "mAP50 (%)", color="C1")
            best = int(np.nanargmax(sy))
            twin.plot([sx[best]], [sy[best]], "*", color="C3", markersize=12, label=f"best {sx[best]:.2f}")
            if chosen is not None and np.isclose(sx, chosen).any():
                at = int(np.argmin(np.abs(sx - chosen)))
                twin.plot([sx[at]], [sy[at]], "D", color="C2", markersize=7, label=f"chosen: {sy[at]:.1f}")
            twin.legend(fontsize=7, loc="lower right")
        ax.legend(fontsize=7, loc="upper left")
        ax.set_title(f"{name} threshold ({calibration.get('mode', '')})", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return True


def calibration_section(
    calibration: Optional[dict[str, Any]], metrics: Optional[dict[str, Any]], chart: Optional[str]
) -> str:
    """The thresholds the labels were cut at, how they were chosen, and the curve behind them."""
    if calibration is None:
        return "<h2>Thresholds</h2>\n<p>No calibration.json in this run (calibrate has not run).</p>"
    rows = []
    oracle = (metrics or {}).get("oracle") or {}
    for name in ("semantic", "instance"):
        part = calibration.get(name) or {}
        threshold = part.get("threshold") or {}
        value = threshold.get("plane") if threshold.get("plane") else _threshold(part)
        text = value if isinstance(value, str) else ("-" if value is None else f"{value:.2f}")
        if threshold.get("per_class"):
            text += " (per class: " + ", ".join(f"{k}: {v:.2f}" for k, v in threshold["per_class"].items()) + ")"
        best = oracle.get(name)
        best_text = "-" if not best else f"{best['threshold']:.2f} ({best['value']:.1f})"
        rows.append(
            f'<tr><td>{name}</td><td class="value">{html.escape(text)}</td>'
            f"<td>{html.escape(str(part.get('criterion', '')))}</td>"
            f'<td class="value">{best_text}</td></tr>'
        )
    images = calibration.get("images")
    head = (
        f"<p>Mode <code>{html.escape(str(calibration.get('mode')))}</code>"
        + (f", chosen on {images} images" if images else "")
        + ". The oracle column is the best candidate by the ground truth (evaluate), for comparison.</p>"
    )
    table = (
        "<table><tr><th>threshold</th><th>used</th><th>criterion</th><th>oracle (score)</th></tr>\n"
        + "\n".join(rows)
        + "\n</table>"
    )
    figure = f'<div class="charts"><img src="{quote(chart)}" alt="calibration curve"></div>' if chart else ""
    return f"<h2>Thresholds</h2>\n{head}\n{table}\n{figure}"


# ----------------------------------------------------------------------------------------
# index.html

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
table { border-collapse: collapse; margin-bottom: 1em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }
td.value { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0 0 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
.charts img { display: block; max-width: 100%; margin-bottom: 0.8em; }
"""


def _metric_rows(metrics: dict[str, Any]) -> str:
    rows = []
    for key in METRIC_KEYS:
        if key not in metrics and key == "ir_label_coverage":
            continue
        value = metrics.get(key)
        text = "-" if value is None else f"{float(value):.2f}"
        rows.append(
            f"<tr><td>{html.escape(METRIC_TITLES[key])}</td><td><code>{key}</code></td>"
            f'<td class="value">{text}</td></tr>'
        )
    return "\n".join(rows)


def metrics_section(metrics: Optional[dict[str, Any]], charts: Sequence[str]) -> str:
    if metrics is None:
        return (
            "<h2>Metrics</h2>\n<p>No metrics.json in this run (the evaluate stage has not run, "
            "or its split has no ground truth).</p>"
        )
    split = (metrics.get("images") or {}).get("split")
    caption = f"<p>Evaluated on split <code>{html.escape(str(split))}</code>, in percent.</p>" if split else ""
    images = "".join(f'<img src="{quote(c)}" alt="{html.escape(c)}">' for c in charts)
    return (
        f"<h2>Metrics</h2>\n{caption}\n<table><tr><th>metric</th><th>key</th><th>value</th></tr>\n"
        f"{_metric_rows(metrics)}\n</table>\n" + (f'<div class="charts">{images}</div>' if images else "")
    )


def panels_section(entries: Sequence[PanelEntry], contact: Optional[str]) -> str:
    if not entries:
        return "<h2>Panels</h2>\n<p>No pseudo-labels to show.</p>"
    head = f'<p><a href="{quote(contact)}">Contact sheet</a> of all panels.</p>' if contact else ""
    figures = []
    for e in entries:
        parts = [
            f"<b>{html.escape(e.image_id)}</b>",
            "classes: " + (html.escape(", ".join(e.classes)) or "none"),
            f"{e.instances} instance{'s' if e.instances != 1 else ''}",
            *map(html.escape, e.notes),
        ]
        figures.append(
            f'<figure id="{html.escape(e.image_id)}"><img src="{quote(e.file)}" loading="lazy" '
            f'alt="{html.escape(e.image_id)}"><figcaption>{" · ".join(parts)}</figcaption></figure>'
        )
    legend = (
        "<p>Each row: image | CAM per class | walk per class (the walked scores the labels are cut "
        "from, over the top class value: a pixel is the class where its walk beats the threshold) | "
        "confidence (blue: near flipping its decision, red: far from it) | semantic pseudo-label | "
        "instances (class, score) | ground truth. Drawn from the run's stored maps; no network runs.</p>"
    )
    return f"<h2>Panels ({len(entries)})</h2>\n{head}\n{legend}\n" + "\n".join(figures)


def index_html(
    title: str,
    metrics: Optional[dict[str, Any]],
    charts: Sequence[str],
    entries: Sequence[PanelEntry],
    contact: Optional[str],
    thresholds: str = "",
) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{metrics_section(metrics, charts)}\n{thresholds}\n"
        f"{panels_section(entries, contact)}\n</body>\n</html>\n"
    )


# ----------------------------------------------------------------------------------------


@dataclass
class RunInputs:
    """Everything a panel is drawn from, read once per report."""

    source: DatasetSource
    lookup: ImageLookup
    cams: dict[str, tuple[list[int], np.ndarray]]
    scores: dict[str, WalkScores]

    @property
    def names(self) -> list[str]:
        return list(self.source.class_names)


def write_panel(
    row: dict[str, Any], inputs: RunInputs, config: Config, out: Path, taken: set[str]
) -> tuple[PanelEntry, np.ndarray]:
    """Render and save one image's panel; notes say which tiles could not be drawn and why."""
    image_id = row["image_id"]
    image, problem = load_display_image(inputs.lookup, image_id, row["height"], row["width"], config)
    array = render_panel(
        row,
        image,
        inputs.cams.get(image_id),
        inputs.scores.get(image_id),
        ground_truth(inputs.source, image_id),
        inputs.names,
        config,
    )
    file = f"panels/{safe_name(image_id, taken)}.png"
    _save_png(array, out / file)
    notes = [
        *([] if image_id in inputs.cams else ["no CAM row"]),
        *([] if image_id in inputs.scores else ["no scores row"]),
        *([problem] if problem else []),
    ]
    classes = [_name(c, inputs.names) for c in row["labels"]]
    objects = int((np.asarray(row["scores"]) > 0).sum())  # score-0 fragments (under 1% of the image) are not objects
    return PanelEntry(image_id, file, classes, objects, notes, image_found=problem is None), array


def write_report(labels_uri: str, out_dir: str, config: Config, n: int = 32) -> dict[str, Any]:
    """Write panels/, contact_sheet.png, charts/ and index.html under out_dir; return a summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root, shards = run_root(labels_uri, config)
    rows = [decode_row(r) for r in first_label_rows(shards, n)]
    source = build_source(config.dataset, config.storage)
    splits = [config.dataset.infer_split, config.dataset.train_split, config.dataset.eval_split]
    ids = [r["image_id"] for r in rows]
    inputs = RunInputs(source, ImageLookup(source, splits), read_cams(root, ids), read_scores(root, ids))
    taken: set[str] = set()
    drawn = [write_panel(row, inputs, config, out, taken) for row in rows]
    entries = [entry for entry, _ in drawn]
    contact = None
    if drawn:
        _save_png(contact_sheet([array for _, array in drawn]), out / "contact_sheet.png")
        contact = "contact_sheet.png"
    metrics = read_json_object(root, "metrics.json")
    charts = write_charts(metrics, out)
    calibration = read_json_object(root, "calibration.json")
    curve = "charts/calibration.png"
    drew_curve = calibration is not None and calibration_chart(calibration, metrics, out / curve)
    thresholds = calibration_section(calibration, metrics, curve if drew_curve else None)
    index = out / "index.html"
    index.write_text(
        index_html(f"ray_wsis report: {root.uri}", metrics, charts, entries, contact, thresholds), encoding="utf-8"
    )
    return {
        "panels": len(entries),
        "index": str(index),
        "contact_sheet": str(out / contact) if contact else None,
        "charts": [str(out / c) for c in [*charts, *([curve] if drew_curve else [])]],
        "thresholds": calibration is not None,
        "metrics": metrics is not None,
        "without_cams": [e.image_id for e in entries if e.image_id not in inputs.cams],
        "without_scores": [e.image_id for e in entries if e.image_id not in inputs.scores],
        "without_images": [e.image_id for e in entries if not e.image_found],
    }


def _name(class_id: int, names: Sequence[str]) -> str:
    return names[int(class_id) - 1] if 0 < int(class_id) <= len(names) else str(int(class_id))
