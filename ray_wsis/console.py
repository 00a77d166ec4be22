"""What a run shows on the console, and where Ray's own log lines go instead.

A normal run prints our lines (stage banners, progress, the summary) and real warnings; Ray's
internal INFO lines, deprecation notices and per-report chatter go to a log file under the
output, ``<output>/logs/ray.log`` (for an object-store output: a local file, named on the
console). ``--verbose`` keeps everything on the console as well.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
import threading
import warnings

from ray_wsis.config import Config
from ray_wsis.storage import is_remote

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air", "ray.serve")

RAY_STDERR_NOISE = ("has constructor arguments in the object store and max_restarts > 0",)
"""Lines Ray's C++ core writes to the driver's stderr in every normal run (Ray Data's actor pools
restart their actors, as they should); they go to the log file."""


def log_path(config: Config) -> str:
    """Where Ray's log lines of this run go."""
    if is_remote(config.output):
        return os.path.join(tempfile.gettempdir(), "ray_wsis", config.run_name, "ray.log")
    return os.path.join(config.output, "logs", "ray.log")


def configure_console(config: Config, verbose: bool = False) -> str:
    """Route Ray's Python loggers and warnings to the log file (and the console when verbose)."""
    path = log_path(config)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        if not verbose:
            for old in list(logger.handlers):
                if isinstance(old, logging.StreamHandler) and not isinstance(old, logging.FileHandler):
                    logger.removeHandler(old)
        logger.addHandler(handler)
    if not verbose:
        _route_warnings(handler)
        _filter_stderr(path)
    os.environ["RAY_WSIS_LOG_FILE"] = path
    return path


def _is_ray_warning(message: warnings.WarningMessage | Warning, filename: str) -> bool:
    return "/ray/" in filename.replace(os.sep, "/") or type(message).__name__ == "RayDeprecationWarning"


def _route_warnings(handler: logging.Handler) -> None:
    """Warnings raised inside Ray go to the log file; ours and everyone else's stay on the console."""
    shown = warnings.showwarning
    to_file = logging.getLogger("ray_wsis.ray_warnings")
    to_file.propagate = False
    to_file.addHandler(handler)

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if _is_ray_warning(message, filename):
            to_file.warning(warnings.formatwarning(message, category, filename, lineno, line).strip())
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


_FILTERING: list[int] = []


def stderr_is_terminal() -> bool:
    """Whether stderr reaches a terminal: the real one, also under the filter (its fd 2 is a pipe)."""
    try:
        return os.isatty(_FILTERING[0]) if _FILTERING else sys.stderr.isatty()
    except (OSError, ValueError, AttributeError):
        return False


def _filter_stderr(path: str) -> None:
    """Move the known Ray C++ noise lines of the driver's stderr (fd 2) to the log file."""
    if _FILTERING:
        return
    try:
        original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:
        return
    _FILTERING.append(original)

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as source, open(path, "ab", buffering=0) as log:
            pending = b""
            while True:
                chunk = source.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace")
                    target = log.fileno() if any(n in text for n in RAY_STDERR_NOISE) else original
                    os.write(target, line + b"\n")
                if pending and b"\r" in pending:  # progress bars redraw without a newline
                    os.write(original, pending)
                    pending = b""
            if pending:
                os.write(original, pending)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def drain() -> None:
        """At exit: put the real stderr back (closing the pipe) and let the pump finish its lines."""
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)
        thread.join(timeout=5)

    atexit.register(drain)
