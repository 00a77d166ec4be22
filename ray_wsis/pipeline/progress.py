"""Training progress on the driver: a bar per training stage with epoch, loss and images/s.

Ray Train runs the loop in worker processes whose output a normal run does not forward
(console.py), so rank 0 posts its state to a small actor after every step and a driver
thread draws it with tqdm, printing one line per finished epoch.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional

import ray


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest state rank 0 posted (the driver polls it)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.epochs: list[dict[str, Any]] = []

    def step(self, **state: Any) -> None:
        self.state = state

    def epoch(self, **summary: Any) -> None:
        self.epochs.append(summary)

    def read(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return self.state, self.epochs


def poster(board: Optional[Any], epoch: int, epochs: int) -> Callable[[int, int, float, int, float], None]:
    """A step callback for run_epoch that posts (fire and forget) to the board, if any."""
    if board is None:
        return lambda *_args: None

    def post(step: int, steps: int, loss: float, samples: int, seconds: float) -> None:
        board.step.remote(
            epoch=epoch, epochs=epochs, step=step, steps=steps, loss=loss, images_per_s=samples / max(seconds, 1e-6)
        )

    return post


@contextlib.contextmanager
def training_progress(name: str, enabled: bool, log: Callable[[str], None]) -> Iterator[Optional[Any]]:
    """Yield a board handle for the workers (None when disabled) while a thread draws it."""
    if not enabled:
        yield None
        return
    board = ProgressBoard.remote()  # type: ignore[attr-defined]
    stop = threading.Event()

    def draw() -> None:
        from tqdm import tqdm

        bar: Optional[tqdm] = None
        printed, last = 0, None
        while not stop.is_set():
            try:
                state, epochs = ray.get(board.read.remote(), timeout=5)
            except Exception:  # the board is gone with Ray; nothing left to draw
                break
            for summary in epochs[printed:]:
                if bar is not None:
                    bar.clear()
                log(
                    f"[{name}] epoch {summary['epoch']}/{summary['epochs']}: loss {summary['loss']:.4f}, "
                    f"{summary['seconds']:.1f} s, {summary['images_per_s']:.1f} images/s"
                )
                printed += 1
            if state and state != last:
                last = state
                total = state["steps"] * state["epochs"]
                if bar is None:
                    bar = tqdm(total=total, desc=name, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)
                bar.n = (state["epoch"] - 1) * state["steps"] + state["step"]
                bar.set_postfix_str(
                    f"epoch {state['epoch']}/{state['epochs']}, loss {state['loss']:.4f}, "
                    f"{state['images_per_s']:.1f} img/s",
                    refresh=False,
                )
                bar.refresh()
            stop.wait(0.5)
        if bar is not None:
            bar.close()

    thread = threading.Thread(target=draw, name=f"{name}-progress", daemon=True)
    thread.start()
    try:
        yield board
    finally:
        time.sleep(0.6)  # let the last epoch line through
        stop.set()
        thread.join(timeout=10)
        ray.kill(board)
