"""SIGTERM (what Kubernetes and job schedulers send) stops a run cleanly: one line saying what was
committed and that a re-run continues, exit status 143, Ray shut down in order, no stack dump."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline_helpers import TINY_SETTINGS, make_tiny_voc
from tests.processes import exited, kill_tagged, kill_tree, tagged

pytestmark = pytest.mark.slow


def test_sigterm_stops_a_run_with_one_line(tmp_path: Path) -> None:
    data = make_tiny_voc(tmp_path / "voc")
    output = tmp_path / "out"
    settings = [f"dataset.root={data}", f"output={output}", "run_name=tiny", *TINY_SETTINGS, "cam.epochs=5"]
    env, token = tagged({k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    process = subprocess.Popen(
        [sys.executable, "-m", "ray_wsis", "run", *(item for s in settings for item in ("--set", s))],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        snapshot = output / "checkpoints" / "tiny-cam" / "checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + 300
        while not (snapshot.exists() and "epoch_000" in snapshot.read_text()):
            assert not exited(process), process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "timed out waiting for the first epoch"
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGTERM)  # the driver only, by its pid: it stops the rest
        deadline = time.monotonic() + 120
        while not exited(process):
            assert time.monotonic() < deadline, "the driver did not stop within 120 s of SIGTERM"
            time.sleep(0.2)
    finally:
        left = kill_tree(process) if process.returncode is None else []
        out = process.stdout.read() if process.stdout else ""
        process.wait(timeout=30)
        left += kill_tagged(token)
    assert not left, left
    assert process.returncode == 143, out
    stopped = [line for line in out.splitlines() if line.startswith("stopped (SIGTERM)")]
    assert len(stopped) == 1, out
    assert "stages done" in stopped[0]  # e.g. "0 stages done; train-cam: its finished epochs are checkpointed"
    assert "run the same command again to continue" in stopped[0]
    for dump in ("PC: @", "Aborted", "Traceback", "*** SIGTERM", "logging.cc"):
        assert dump not in out, out
