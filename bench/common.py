"""Shared benchmark helpers: machine description and peak-memory measurement in a subprocess."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from typing import Any, Optional


def machine() -> dict[str, Any]:
    """CPU model, cores, GPU name (or None): every benchmark labels its absolute figures with this."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu: Optional[str] = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_json(args: list[str], env: Optional[dict[str, str]] = None, timeout: float = 3600) -> dict[str, Any]:
    """Run `python <args>` in a fresh process and parse the JSON object on its last line.

    A fresh process per measurement isolates peak RSS and thread settings from the caller.
    """
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
