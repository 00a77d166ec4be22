"""What a run shows on the console, and where Ray's own log lines go instead.

A normal run prints our lines (stage banners, progress, the summary) and real warnings; Ray's
internal INFO lines, deprecation notices and per-report chatter go to a log file under the
output, ``<output>/logs/ray.log`` (for an object-store output: a local file, named on the
console). ``--verbose`` keeps everything on the console as well.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings

from ray_wsis.config import Config
from ray_wsis.storage import is_remote

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air", "ray.serve")


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
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        if not verbose:
            for old in list(logger.handlers):
                if isinstance(old, logging.StreamHandler) and not isinstance(old, logging.FileHandler):
                    logger.removeHandler(old)
        logger.addHandler(handler)
    if not verbose:
        logging.captureWarnings(True)
        warnings_logger = logging.getLogger("py.warnings")
        warnings_logger.propagate = False
        warnings_logger.addHandler(handler)
        warnings.filterwarnings("default")
    os.environ["RAY_WSIS_LOG_FILE"] = path
    return path
