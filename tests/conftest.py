"""Test-wide settings: one torch thread. With two threads per small op next to busy neighbours a
2-core box measured 1000x slower (docs/performance.md keeps benchmarks to one thread for the same reason)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

torch.set_num_threads(1)
