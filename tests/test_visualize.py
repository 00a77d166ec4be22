"""The visualizer on a hand-made run folder (no pipeline, no model file): files, links, charts, the
panels' tiles drawn from the stored maps, and a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ray_wsis.config import Config, load_config
from ray_wsis.data.synthetic import make_synthetic_voc
from ray_wsis.data.voc import VOCSource
from ray_wsis.method.scores import WalkScores
from ray_wsis.pipeline.schema import CAMS, PSEUDO_LABELS, SCORES, pseudo_label_row, rows_to_table, scores_row
from ray_wsis.storage import resolve
from ray_wsis.visualize.panels import display_size
from ray_wsis.visualize.report import METRIC_KEYS, write_report

HEIGHT, WIDTH = 64, 80
NO_CAM_ID = "syn_000002"
"""The image whose CAM row the fake run lacks."""
NO_SCORES_ID = "syn_000003"
"""The image whose scores row the fake run lacks."""


def _cam_row(image_id: str, labels: tuple[int, ...], rng: np.random.Generator) -> dict[str, Any]:
    h, w = -(-HEIGHT // 4), -(-WIDTH // 4)
    cam = rng.random((len(labels), h, w)).astype(np.float16)
    return {
        "image_id": image_id,
        "uri": "",
        "height": HEIGHT,
        "width": WIDTH,
        "labels": list(labels),
        "cam_height": h,
        "cam_width": w,
        "cam": cam.tobytes(),
        "error": "",
    }


def _scores_row(image_id: str, labels: tuple[int, ...], rng: np.random.Generator) -> dict[str, Any]:
    """Walked maps, made up: a bright square per class on a dark field."""
    h, w = -(-HEIGHT // 4), -(-WIDTH // 4)
    semantic = rng.integers(0, 40, (len(labels), h, w), dtype=np.uint8)
    for k in range(len(labels)):
        semantic[k, 2 + 2 * k : 8 + 2 * k, 3:10] = 255
    classes = np.asarray(labels, np.int16)
    return scores_row(image_id, HEIGHT, WIDTH, WalkScores(HEIGHT, WIDTH, classes, semantic, classes, semantic.copy()))


def _label_row(source: VOCSource, image_id: str, labels: tuple[int, ...]) -> dict[str, Any]:
    """Pseudo-labels = ground truth with void as background, instances scored 0.9."""
    truth = source.ground_truth(image_id)
    semantic = np.where(truth.semantic == 255, 0, truth.semantic).astype(np.uint8)
    masks = truth.instance_masks if truth.instance_masks is not None else np.zeros((0, HEIGHT, WIDTH), bool)
    return pseudo_label_row(
        image_id,
        HEIGHT,
        WIDTH,
        labels,
        semantic,
        np.full_like(semantic, 255),
        masks,
        truth.instance_class_ids,
        np.full(len(masks), 0.9, np.float32),
    )


def _metrics(names: tuple[str, ...]) -> dict[str, Any]:
    n = len(names)
    return {
        "cam_miou": 41.5,
        "ir_label_precision": 80.25,
        "ir_label_coverage": 55.0,
        "sem_miou": 52.0,
        "ins_map25": 40.0,
        "ins_map50": 30.0,
        "ins_map70": None,
        "ins_map75": 10.0,
        "per_class": {
            "names": ["background", *names],
            "cam_iou": [70.0] + [30.0 + k for k in range(n)],
            "sem_iou": [80.0] + [None] + [40.0 + k for k in range(n - 1)],
            "ins_ap50": [20.0 + k if k % 3 else None for k in range(n)],
        },
        "images": {"split": "train"},
    }


def _write_run(run: Path, data: str, with_extras: bool) -> None:
    """pseudo_labels/ and cams/ shards (one image without a CAM row) [+ scores/ (one image without a
    row) and metrics.json]. No models/: the report must not need them."""
    from ray_wsis.pipeline.sink import commit

    source = VOCSource(data)
    records = source.records("train")
    rng = np.random.default_rng(0)
    labels = [_label_row(source, r.image_id, r.class_ids) for r in records]
    cams = [_cam_row(r.image_id, r.class_ids, rng) for r in records if r.image_id != NO_CAM_ID]
    commit(resolve(str(run / "pseudo_labels")), rows_to_table(labels, PSEUDO_LABELS), retries=0)
    commit(resolve(str(run / "cams")), rows_to_table(cams, CAMS), retries=0)
    if with_extras:
        scores = [_scores_row(r.image_id, r.class_ids, rng) for r in records if r.image_id != NO_SCORES_ID]
        commit(resolve(str(run / "scores")), rows_to_table(scores, SCORES), retries=0)
        (run / "metrics.json").write_text(json.dumps(_metrics(source.class_names)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("voc")
    make_synthetic_voc(str(root), n_train=4, n_val=1, size=(HEIGHT, WIDTH))
    return str(root)


@pytest.fixture(scope="module")
def config(dataset: str) -> Config:
    return load_config(None, [f"dataset.root={dataset}", "dataset.infer_split=train"])


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory, dataset: str, config: Config) -> tuple[Path, dict]:
    run, out = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("report")
    _write_run(run, dataset, with_extras=True)
    return out, write_report(str(run), str(out), config, n=3)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links.extend(v for k, v in attrs if k in ("src", "href") and v)


def _links(index: Path) -> list[str]:
    parser = _Links()
    parser.feed(index.read_text())
    return parser.links


def _assert_links_exist(index: Path) -> list[str]:
    from urllib.parse import unquote, urlparse

    links = _links(index)
    for link in links:
        assert not urlparse(link).scheme and not link.startswith("/"), f"not a relative path: {link}"
        assert (index.parent / unquote(link)).is_file(), f"index.html links to missing {link}"
    return links


def _png_size(path: Path, modes: tuple[str, ...] = ("RGB",)) -> tuple[int, int]:
    """Size of a PNG that PIL can verify and decode in full."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.mode in modes
        return image.size


def _classes(dataset: str) -> dict[str, int]:
    return {r.image_id: len(r.class_ids) for r in VOCSource(dataset).records("train")}


def test_report_writes_panels_charts_and_index(full_report: tuple[Path, dict], dataset: str) -> None:
    out, result = full_report
    assert result["panels"] == 3 and result["metrics"]
    assert result["without_cams"] == [NO_CAM_ID] and result["without_scores"] == [NO_SCORES_ID]
    assert result["without_images"] == []
    assert sorted(p.name for p in (out / "panels").iterdir()) == [f"syn_00000{k}.png" for k in (1, 2, 3)]
    tile_h, tile_w = display_size(HEIGHT, WIDTH)
    widths = {}
    for path in (out / "panels").iterdir():
        width, height = _png_size(path)
        assert height == tile_h + 16 and (width + 4) % (tile_w + 4) == 0
        widths[path.stem] = (width + 4) // (tile_w + 4)
    # image, confidence, semantic, instances, ground truth, and per class a CAM and a walk (where stored)
    classes = _classes(dataset)
    assert widths == {
        k: 5 + classes[k] * ((k != NO_CAM_ID) + (k != NO_SCORES_ID)) for k in ("syn_000001", NO_CAM_ID, NO_SCORES_ID)
    }
    sheet_w, sheet_h = _png_size(out / "contact_sheet.png")
    assert sheet_h >= 3 * (tile_h + 16) and sheet_w == max(widths.values()) * (tile_w + 4) - 4
    for chart in ("iou_per_class", "ap50_per_class"):
        width, height = Image.open(out / "charts" / f"{chart}.png").size
        assert width >= 400 and height >= 300
    links = _assert_links_exist(Path(result["index"]))
    assert {"charts/iou_per_class.png", "charts/ap50_per_class.png", "contact_sheet.png"} <= set(links)
    assert sum(link.startswith("panels/") for link in links) == 3
    text = Path(result["index"]).read_text()
    assert all(key in text for key in METRIC_KEYS) and "80.25" in text
    assert "no CAM row" in text and "no scores row" in text and "walk per class" in text


def test_walked_tiles_show_the_stored_maps(full_report: tuple[Path, dict], dataset: str) -> None:
    """A walk tile is the stored map upsampled: its bright square lands where the row put it."""
    out, _ = full_report
    panel = np.asarray(Image.open(out / "panels" / "syn_000001.png").convert("RGB"), np.int16)
    tile_h, tile_w = display_size(HEIGHT, WIDTH)
    cams = _classes(dataset)["syn_000001"]
    x = (1 + cams) * (tile_w + 4)  # image, then the CAMs; the first walk tile next
    walk = panel[16:, x : x + tile_w]
    sy, sx = tile_h / HEIGHT, tile_w / WIDTH
    inside = walk[int(4 * 3 * sy) : int(4 * 7 * sy), int(4 * 4 * sx) : int(4 * 9 * sx)]
    outside = walk[int(50 * sy) :, int(60 * sx) :]
    assert inside[..., 0].mean() > 180 and outside[..., 2].mean() > outside[..., 0].mean()  # red peak, blue field


def test_report_without_metrics_scores_or_cams(tmp_path: Path, dataset: str, config: Config) -> None:
    run = tmp_path / "run"
    _write_run(run, dataset, with_extras=False)
    shutil.rmtree(run / "cams")
    result = write_report(str(run / "pseudo_labels"), str(tmp_path / "out"), config, n=32)
    assert result["panels"] == 4 and not result["metrics"] and not result["charts"]
    assert len(result["without_cams"]) == 4 and len(result["without_scores"]) == 4
    assert not (tmp_path / "out" / "charts").exists()
    tile_h, tile_w = display_size(HEIGHT, WIDTH)
    for path in (tmp_path / "out" / "panels").iterdir():
        assert _png_size(path) == (5 * (tile_w + 4) - 4, tile_h + 16)  # image, confidence, semantic, instances, truth
    links = _assert_links_exist(Path(result["index"]))
    assert not any("charts" in link for link in links)
    assert "No metrics.json" in Path(result["index"]).read_text()


def test_cli_visualize_prints_summary(tmp_path: Path, dataset: str, capsys: pytest.CaptureFixture) -> None:
    from ray_wsis.cli import main

    run = tmp_path / "run"
    _write_run(run, dataset, with_extras=False)
    code = main(
        [
            "visualize",
            "--labels",
            str(run),
            "--out",
            str(tmp_path / "out"),
            "--n",
            "2",
            "--set",
            f"dataset.root={dataset}",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["panels"] == 2 and Path(summary["index"]).is_file()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")


def _run_chromium(binary: str, index: Path, profile: str, *args: str) -> subprocess.CompletedProcess:
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *args,
        index.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


def test_index_renders_in_headless_chromium(full_report: tuple[Path, dict]) -> None:
    binary = _chromium()
    index = Path(full_report[1]["index"])
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        done = _run_chromium(
            binary, index, str(Path(tmp) / "profile"), f"--screenshot={shot}", "--window-size=1200,900"
        )
        assert shot.is_file(), f"no screenshot (rc {done.returncode}): {done.stderr[-2000:]}"
        assert _png_size(shot, ("RGB", "RGBA")) == (1200, 900)
        pixels = np.asarray(Image.open(shot).convert("RGB"), np.int16)
        assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "blank screenshot"
        dom = _run_chromium(binary, index, str(Path(tmp) / "profile"), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"\s+", " ", dom.stdout)
    for key in METRIC_KEYS:
        assert key in text, f"{key} missing from the rendered page"
    assert "pseudo semantic mIoU" in text and "syn_000001" in text and "walk per class" in text
