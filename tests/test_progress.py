"""The progress display (pipeline/progress.py): redraws in a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

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
