"""What a running stage shows: one progress display for training and Ray Data stages alike.

``[make-cams] 120/240 images, 3.2 images/s, ETA 0:37``: the stage, what is done of the total,
the rate and the time left. In a terminal the line is redrawn in place (on stderr); when the
output is a file or a pipe, a plain line is printed every ``every_s`` seconds or every
``every_pct`` percent instead, and never a carriage return (:class:`ProgressLine`).

Training: Ray Train runs the loop in worker processes whose output a normal run does not forward
(console.py), so rank 0 posts its state to a small actor after every step, and a driver thread
draws it, printing one line per finished epoch. Ray Data stages: a pass-through operator before
the write counts the rows that reach it on the same kind of actor (``count_rows``). Ray's own
dataset bars stay off unless ``--verbose`` (pipeline/context.py).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional, TextIO

import pyarrow as pa
import ray


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` reaches a terminal (stderr: the real one, under console.py's filter)."""
    from ray_wsis.console import stderr_is_terminal

    if stream is sys.stderr:
        return stderr_is_terminal()
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressLine:
    """One stage's progress: redrawn in place in a terminal, plain lines every few seconds or
    percent otherwise (a file or a pipe then holds readable lines, not redraws)."""

    def __init__(
        self,
        name: str,
        total: int,
        unit: str = "images",
        log: Callable[[str], None] = print,
        stream: Optional[TextIO] = None,
        terminal: Optional[bool] = None,
        every_s: float = 10.0,
        every_pct: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.total, self.unit, self.log = name, max(0, total), unit, log
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = is_terminal(self.stream) if terminal is None else terminal
        self.every_s, self.every_pct, self.clock = every_s, every_pct, clock
        self.start = clock()
        self.first: Optional[tuple[float, float]] = None  # (time, done) of the first progress seen
        self.done = 0.0
        self.extra = ""
        self.drawn = False
        self.last_line: tuple[float, float] = (self.start, 0.0)  # (time, percent) of the last plain line

    def text(self) -> str:
        now = self.clock()
        parts = [f"[{self.name}] {self.done:.0f}/{self.total} {self.unit}"]
        if self.first is not None and now > self.first[0] and self.done > self.first[1]:
            rate = (self.done - self.first[1]) / (now - self.first[0])
            parts.append(f"{rate:.1f} {self.unit}/s")
            if self.total > self.done:
                parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
        if self.extra:
            parts.append(self.extra)
        return ", ".join(parts)

    def update(self, done: float, extra: str = "") -> None:
        now = self.clock()
        if self.first is None and done > 0:
            self.first = (now, done)  # rates from here: start-up (actors, workers) is not work
        changed = done != self.done or extra != self.extra
        self.done, self.extra = done, extra
        if self.terminal:
            if changed or not self.drawn:
                self.stream.write("\r\x1b[K" + self.text()[:200])
                self.stream.flush()
                self.drawn = True
            return
        percent = 100.0 * done / self.total if self.total else 100.0
        last_time, last_percent = self.last_line
        if changed and (now - last_time >= self.every_s or percent - last_percent >= self.every_pct):
            self.last_line = (now, percent)
            self.log(self.text())

    def message(self, line: str) -> None:
        """A line of its own (an epoch's summary) that no redraw is glued to."""
        self.clear()
        self.log(line)

    def clear(self) -> None:
        if self.terminal and self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False

    def close(self) -> None:
        self.clear()


# --------------------------------------------------------------------------- the board
@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest state rank 0 posted, or the rows counted so far (the driver polls it)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.epochs: list[dict[str, Any]] = []
        self.rows = 0

    def step(self, **state: Any) -> None:
        self.state = state

    def epoch(self, **summary: Any) -> None:
        self.epochs.append(summary)

    def add(self, rows: int) -> None:
        self.rows += rows

    def read(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return self.state, self.epochs

    def count(self) -> int:
        return self.rows


def poster(board: Optional[Any], epoch: int, epochs: int) -> Callable[[int, int, float, int, float], None]:
    """A step callback for run_epoch that posts (fire and forget) to the board, if any."""
    if board is None:
        return lambda *_args: None

    def post(step: int, steps: int, loss: float, samples: int, seconds: float) -> None:
        board.step.remote(
            epoch=epoch, epochs=epochs, step=step, steps=steps, loss=loss, images_per_s=samples / max(seconds, 1e-6)
        )

    return post


def count_rows(batch: pa.Table, board: Any) -> pa.Table:
    """A pass-through Ray Data operator: tells the board how many rows went by."""
    board.add.remote(batch.num_rows)
    return batch


@contextlib.contextmanager
def _polling(name: str, draw: Callable[[], bool], every_s: float = 0.5) -> Iterator[None]:
    """Call ``draw`` in a driver thread every ``every_s`` until the block ends (or it returns False)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if not draw():
                break
            stop.wait(every_s)

    thread = threading.Thread(target=loop, name=f"{name}-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


@contextlib.contextmanager
def images_progress(
    name: str, total: int, enabled: bool, log: Callable[[str], None]
) -> Iterator[Callable[[ray.data.Dataset], ray.data.Dataset]]:
    """Yield a function that adds the row-counting operator to a Ray Data stage's dataset, while a
    thread shows images done / total, images/s and the ETA."""
    if not enabled or total <= 0:
        yield lambda ds: ds
        return
    board = ProgressBoard.remote()  # type: ignore[attr-defined]
    line = ProgressLine(name, total, "images", log)

    def draw() -> bool:
        try:
            line.update(min(total, ray.get(board.count.remote(), timeout=5)))
        except ray.exceptions.GetTimeoutError:  # a busy machine starts the board late: ask again
            return True
        except Exception:  # the board is gone with Ray; nothing left to draw
            return False
        return True

    def counted(ds: ray.data.Dataset) -> ray.data.Dataset:
        return ds.map_batches(
            count_rows,
            fn_kwargs={"board": board},
            batch_format="pyarrow",
            batch_size=None,  # whole blocks as they come: no re-batching in front of the write
            zero_copy_batch=True,
            num_cpus=0,
            compute=ray.data.TaskPoolStrategy(size=1),  # one task at a time: 0 CPUs must not mean 8 workers
        )

    try:
        with _polling(name, draw, every_s=1.0):
            yield counted
        draw()
    finally:
        line.close()
        with contextlib.suppress(Exception):
            ray.kill(board)


@contextlib.contextmanager
def training_progress(name: str, enabled: bool, log: Callable[[str], None]) -> Iterator[Optional[Any]]:
    """Yield a board handle for the workers (None when disabled) while a thread draws it."""
    if not enabled:
        yield None
        return
    board = ProgressBoard.remote()  # type: ignore[attr-defined]
    shown: dict[str, Any] = {"line": None, "printed": 0, "last": None}

    def draw() -> bool:
        try:
            state, epochs = ray.get(board.read.remote(), timeout=5)
        except ray.exceptions.GetTimeoutError:  # a busy machine starts the board late: ask again
            return True
        except Exception:  # the board is gone with Ray; nothing left to draw
            return False
        line: Optional[ProgressLine] = shown["line"]
        for summary in epochs[shown["printed"] :]:
            text = (
                f"[{name}] epoch {summary['epoch']}/{summary['epochs']}: loss {summary['loss']:.4f}, "
                f"{summary['seconds']:.1f} s, {summary['images_per_s']:.1f} images/s"
            )
            if line is not None:
                line.message(text)
            else:
                log(text)
            shown["printed"] += 1
        if state and state != shown["last"]:
            shown["last"] = state
            if line is None:
                line = shown["line"] = ProgressLine(name, state["steps"] * state["epochs"], "steps", log)
            line.update(
                (state["epoch"] - 1) * state["steps"] + state["step"],
                f"epoch {state['epoch']}/{state['epochs']}, loss {state['loss']:.4f}, "
                f"{state['images_per_s']:.1f} images/s",
            )
        return True

    try:
        with _polling(name, draw):
            yield board
        time.sleep(0.6)  # let the last epoch line through
        draw()
    finally:
        if shown["line"] is not None:
            shown["line"].close()
        with contextlib.suppress(Exception):
            ray.kill(board)
