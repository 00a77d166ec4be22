"""Shared benchmark helpers: machine description, peak-memory measurement in a subprocess, and
few-shot calibration drawn at random."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Callable
from typing import Any, Optional

import numpy as np


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


def few_shot_draws(
    stats_of: Callable[[list[int]], Any],
    images: int,
    candidates: list[float],
    at: dict[float, tuple[float, float]],
    draws: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Few-shot calibration fitted ``draws`` times on k = 5, 10, 20 and 50 random images each.

    ``stats_of(indices)``: the FewShotStats of those images; ``at``: candidate -> (mIoU, mAP50) of
    the whole set, on which each draw's thresholds are scored (against its best mIoU).
    """
    from ray_wsis.method.calibration import choose_few_shot

    rng = np.random.default_rng(seed)
    best = float(np.nanmax([sem for sem, _ in at.values()]))
    few: dict[str, dict[str, float]] = {}
    for k in (5, 10, 20, 50):
        if k > images:
            continue
        sem_scores, ins_scores = [], []
        for _ in range(draws):
            pick = sorted(rng.choice(images, size=k, replace=False).tolist())
            stats = stats_of(pick)
            t_s = choose_few_shot(stats.semantic_miou(), candidates)
            t_i = choose_few_shot(stats.instance_map50(), candidates) or t_s
            sem_scores.append(at[t_s][0] if t_s in at else float("nan"))
            ins_scores.append(at[t_i][1])
        few[str(k)] = {
            "sem_miou_mean": float(np.mean(sem_scores)),
            "sem_miou_min": float(np.min(sem_scores)),
            "sem_of_oracle_mean": float(np.mean(sem_scores) / best),
            "sem_of_oracle_min": float(np.min(sem_scores) / best),
            "ins_map50_mean": float(np.mean(ins_scores)),
            "ins_map50_min": float(np.min(ins_scores)),
        }
    return few
