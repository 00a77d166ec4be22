"""What a running stage shows: one progress display for training and Ray Data stages alike.

``[make-cams] 120/240 images, 3.2 images/s, ETA 0:37``: the stage, what is done of the total,
the rate and the time left (``[evaluate] CAMs: 120/240 images, ...`` for one of a stage's passes).
In a terminal the line is redrawn in place (on stderr); when the output is a file or a pipe, a
plain line is printed every ``every_s`` seconds or every ``every_pct`` percent, and when a pass
ends, instead, and never a carriage return (:class:`ProgressLine`).

Training: Ray Train runs the loop in worker processes whose output a normal run does not forward
(console.py), so rank 0 posts its state to a small actor after every step, and a driver thread
draws it, printing one line per finished epoch. Per-image Ray Data stages, whose rows go to the
shard sink in the workers: a pass-through operator before the write counts the rows that reach it
on the same kind of actor (``count_rows``). Whole-result stages (calibrate, cut-labels, evaluate),
whose tasks return a few rows each to the driver: each task adds the images it covered to its
rows (``counted``), and the driver counts them as they arrive (:meth:`Progress.take_all`); no actor.
Ray's own dataset bars stay off unless ``--verbose`` (pipeline/context.py).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional, TextIO

import pyarrow as pa
import pyarrow.compute as pc
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
        what: str = "",
    ) -> None:
        self.name, self.total, self.unit, self.log = name, max(0, total), unit, log
        self.what = what
        """Which of the stage's passes this is ("CAMs"); empty for a stage of one pass."""
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
        head = f"[{self.name}] {self.what}: " if self.what else f"[{self.name}] "
        parts = [f"{head}{self.done:.0f}/{self.total} {self.unit}"]
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
        finished = percent >= 100.0 > last_percent  # the end of a pass always gets its line
        if changed and (now - last_time >= self.every_s or percent - last_percent >= self.every_pct or finished):
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


# --------------------------------------------------------------------------- whole-result stages
COVERED = "progress_images"
"""The column :func:`counted` adds to a task's rows: the images its batch covered (first row)."""


def counted_task(
    batch: pa.Table, fn: Callable[..., pa.Table], kwargs: dict[str, Any], weight: Optional[str]
) -> pa.Table:
    """``fn(batch, **kwargs)``, its rows told how many images the batch covered: one a row, or the
    sum of the batch's ``weight`` column (a task per shard: its rows). ``fn`` returns at least one
    row per batch, as every whole-result task does (its sums)."""
    out = fn(batch, **kwargs)
    images = int(pc.sum(batch.column(weight)).as_py() or 0) if weight else batch.num_rows
    covered = [images] + [0] * (out.num_rows - 1) if out.num_rows else []
    return out.append_column(COVERED, pa.array(covered, pa.int64()))


def counted(
    ds: ray.data.Dataset,
    fn: Callable[..., pa.Table],
    kwargs: dict[str, Any],
    weight: Optional[str] = None,
    **options: Any,
) -> ray.data.Dataset:
    """``ds.map_batches(fn, fn_kwargs=kwargs, **options)`` whose rows count the images they covered
    (:func:`counted_task`), for :meth:`Progress.take_all`."""

    def task(batch: pa.Table, **fn_kwargs: Any) -> pa.Table:
        return counted_task(batch, fn, fn_kwargs, weight)

    task.__name__ = task.__qualname__ = fn.__name__  # Ray names the operator after it: MapBatches(eval_cams)
    return ds.map_batches(task, fn_kwargs=kwargs, batch_format="pyarrow", **options)


@dataclass(frozen=True)
class Progress:
    """A whole-result stage's progress: one line per pass over its images, drawn by the driver as
    the tasks' rows arrive."""

    name: str
    enabled: bool = False
    log: Callable[[str], None] = print

    def take_all(self, ds: ray.data.Dataset, total: int, what: str = "") -> list[dict[str, Any]]:
        """Every row of a :func:`counted` dataset, less the count, while a line shows the images
        covered of ``total`` (``what``: which pass, when the stage makes several)."""
        line = ProgressLine(self.name, total, "images", self.log, what=what) if self.enabled and total > 0 else None
        rows: list[dict[str, Any]] = []
        done = 0
        try:
            if line is not None:
                line.update(0)  # a terminal shows the pass before its first rows
            for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                done += int(pc.sum(block.column(COVERED)).as_py() or 0)
                rows.extend(block.drop_columns([COVERED]).to_pylist())
                if line is not None:
                    line.update(min(done, total))
        finally:
            if line is not None:
                line.close()
        return rows


QUIET = Progress("")
"""No lines (a stage's helpers called on their own: tests, benchmarks)."""
