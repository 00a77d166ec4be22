"""The progress display (pipeline/progress.py): redraws in a terminal, plain lines elsewhere, for
training, per-image and whole-result stages alike."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ray_wsis.config import Config
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.progress import ProgressLine


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_not_a_terminal_prints_plain_lines_every_few_seconds_or_percent() -> None:
    clock, lines, stream = Clock(), [], io.StringIO()
    line = ProgressLine("make-cams", 200, "images", lines.append, stream, False, every_s=10, every_pct=25, clock=clock)
    for second in range(1, 101):  # 2 images a second for 100 s
        clock.now += 1
        line.update(2 * second)
    line.close()
    assert stream.getvalue() == ""  # nothing redrawn, no carriage returns anywhere
    assert all("\r" not in text and "\x1b" not in text for text in lines)
    assert all(text.startswith("[make-cams] ") for text in lines)
    assert 4 <= len(lines) <= 11  # every 10 s (or 25%), not every update
    assert lines[0].startswith("[make-cams] 20/200 images, 2.0 images/s, ETA 1:30")
    assert lines[-1].startswith("[make-cams] 200/200 images")


def test_a_change_is_needed_for_a_new_line() -> None:
    clock, lines = Clock(), []
    line = ProgressLine("calibrate", 10, "images", lines.append, io.StringIO(), False, every_s=1, clock=clock)
    line.update(5)
    for _ in range(5):
        clock.now += 5
        line.update(5)
    assert len(lines) == 1


def test_terminal_redraws_one_line_and_messages_get_lines_of_their_own() -> None:
    clock, lines, stream = Clock(), [], io.StringIO()
    line = ProgressLine("train-cam", 30, "steps", lines.append, stream, True, clock=clock)
    clock.now += 1
    line.update(1, "epoch 1/3, loss 0.6931")
    clock.now += 1
    line.update(10, "epoch 1/3, loss 0.5")
    line.message("[train-cam] epoch 1/3: loss 0.5000")
    line.close()
    drawn = stream.getvalue()
    assert drawn.count("\r\x1b[K[train-cam] ") == 2 and "\n" not in drawn
    assert drawn.endswith("\r\x1b[K")  # cleared before the epoch line and at the end
    assert lines == ["[train-cam] epoch 1/3: loss 0.5000"]
    assert "9.0 steps/s" in drawn and "ETA 0:02" in drawn


def test_a_pass_ends_with_its_line_and_says_which_pass_it_is() -> None:
    clock, lines = Clock(), []
    line = ProgressLine(
        "evaluate", 100, "images", lines.append, io.StringIO(), False, every_pct=25, clock=clock, what="CAMs"
    )
    for done in (30, 95):
        clock.now += 1
        line.update(done)
    clock.now += 1
    line.update(100)  # 5% after the last line, 1 s later: printed all the same, the pass is over
    assert [text.split(",")[0] for text in lines] == [
        "[evaluate] CAMs: 30/100 images",
        "[evaluate] CAMs: 95/100 images",
        "[evaluate] CAMs: 100/100 images",
    ]


def _scores_rows(config: Config) -> list[dict[str, Any]]:
    """Walk scores for the tiny set's images, made up: no network, no training."""
    from ray_wsis.method.scores import WalkScores
    from ray_wsis.pipeline.schema import scores_row

    rng = np.random.default_rng(0)
    rows = []
    for record in StageContext(config).split(config.dataset.infer_split).records:
        h, w = 64, 80
        labels = np.asarray(record.class_ids, np.int16)
        semantic = rng.integers(0, 256, (len(labels), h // 4, w // 4), dtype=np.uint8)
        scores = WalkScores(h, w, labels, semantic, labels, semantic[:, ::-1].copy())
        rows.append(scores_row(record.image_id, h, w, scores))
    return rows


def test_whole_result_stages_print_plain_lines_when_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """calibrate, cut-labels and evaluate on made-up scores, output to a file: each pass prints plain
    lines, ending with all its images."""
    from ray_wsis.pipeline import progress
    from ray_wsis.pipeline.schema import SCORES, rows_to_table
    from ray_wsis.pipeline.sink import commit
    from tests.pipeline_helpers import make_tiny_voc, run_stages, start_local_ray, tiny_config

    monkeypatch.setattr(progress, "is_terminal", lambda stream: False)  # as under `> run.log`, whatever runs pytest
    config = tiny_config(make_tiny_voc(tmp_path / "voc"), str(tmp_path / "out"), "ray.progress_bars=true")
    rows = _scores_rows(config)
    for start in range(0, len(rows), 4):  # two shards: the per-shard tasks count each one's rows
        commit(StageContext(config).layout.scores, rows_to_table(rows[start : start + 4], SCORES), retries=0)
    start_local_ray()
    lines: list[str] = []
    run_stages(config, "calibrate", "cut-labels", "evaluate", log=lines.append)
    shown = [text for text in lines if "/8 images" in text]
    assert all("\r" not in text and "\x1b" not in text for text in lines)
    assert {text.split("]")[0] + "]" for text in shown} == {"[calibrate]", "[cut-labels]", "[evaluate]"}
    ends = {text.split(",")[0] for text in shown if "8/8 images" in text}
    assert {
        "[calibrate] label-free criteria: 8/8 images",
        "[cut-labels] 8/8 images",
        "[evaluate] pseudo-labels: 8/8 images",
        "[evaluate] threshold sweep: 8/8 images",
        "[evaluate] reference cut: 8/8 images",
    } <= ends, lines
