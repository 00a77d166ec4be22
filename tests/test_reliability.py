"""Faults injected on purpose: every image ends up exactly once, and training resumes.

Hooks live in ray_wsis/pipeline/faults.py; they are armed through environment variables set
before Ray starts (workers inherit them) and fire once, guarded by a flag file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_wsis.models.checkpoints import build_model, checkpoint_bytes
from ray_wsis.pipeline import faults
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.sink import committed_ids
from ray_wsis.storage import resolve, write_bytes_atomic
from tests.pipeline_helpers import TINY_SETTINGS, make_tiny_voc, run_stages, start_local_ray, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture()
def fresh_ray():
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


def _untrained_models(output: str) -> None:
    """Random-weight model files: enough to exercise the inference stages' plumbing."""
    for kind in ("cam", "irnet"):
        model = build_model(kind, "resnet18", 20)
        write_bytes_atomic(
            resolve(os.path.join(output, "models", f"{kind}.pt")), checkpoint_bytes(model, kind, "resnet18", 20)
        )


def _arm(monkeypatch, tmp_path: Path, **hooks: str) -> Path:
    flag = tmp_path / "fault.flag"
    monkeypatch.setenv(faults.FLAG, str(flag))
    for name, value in hooks.items():
        monkeypatch.setenv(name, value)
    return flag


def test_training_worker_failure_restarts_from_checkpoint(tmp_path, monkeypatch, fresh_ray):
    from ray_wsis.pipeline.training import latest_checkpoint_epoch

    flag = _arm(monkeypatch, tmp_path, **{faults.TRAIN_EPOCH: "1"})
    config = tiny_config(make_tiny_voc(tmp_path / "voc"), str(tmp_path / "out"), "cam.epochs=2", "ray.max_failures=2")
    start_local_ray()
    ctx = StageContext(config, log=lambda _m: None)
    summary = run_stages(config, "train-cam")["train-cam"]
    assert flag.exists(), "the fault never fired"
    assert summary["resumed_from_epoch"] == 1, "the restarted worker did not start from the epoch-0 checkpoint"
    assert latest_checkpoint_epoch(ctx, "cam") == 1
    ctx.check_model("cam", "train-cam")  # final weights complete and loadable


def test_inference_actor_crash_loses_and_duplicates_nothing(tmp_path, monkeypatch, fresh_ray):
    flag = _arm(monkeypatch, tmp_path, **{faults.ACTOR: "cam"})
    config = tiny_config(make_tiny_voc(tmp_path / "voc"), str(tmp_path / "out"))
    _untrained_models(config.output)
    start_local_ray()
    ctx = StageContext(config, log=lambda _m: None)
    summary = run_stages(config, "make-cams")["make-cams"]
    assert flag.exists(), "the actor was never killed"
    ids = committed_ids(ctx.layout.cams)
    assert len(ids) == len(set(ids)) == 8  # the train split (infer_split defaults to train)
    assert summary == {
        "input": 8,
        "processed": 8,
        "kept": 0,
        "skipped": 0,
        "failed": 0,
        "unaccounted": 0,
        "action": "run",
    }


def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ray_wsis", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _sets(config_args: list[str]) -> list[str]:
    return [item for setting in config_args for item in ("--set", setting)]


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the driver's process group, then the Ray workers it left behind.

    A local Ray's workers run in sessions of their own; with their raylet gone they are re-parented
    to init (ppid 1) and would linger, so every orphaned `ray::` process is killed too."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    from tests.ray_cluster import kill, processes

    kill({pid for pid, (ppid, _, cmd) in processes().items() if ppid == 1 and cmd.startswith("ray::")})


def _wait_for(predicate, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"process ended early:\n{process.stdout.read()}")
        time.sleep(0.2)
    _kill_group(process)
    raise AssertionError("timed out waiting for the process to make progress")


def _row(out: str, stage: str) -> list[str]:
    """The words of a stage's line in the summary table `run` and the stage commands print."""
    return next(line.split() for line in out.splitlines() if line.startswith(stage + " "))


def test_driver_killed_mid_pseudo_labels_resumes_exactly_once(tmp_path, fresh_ray):
    data = make_tiny_voc(tmp_path / "voc24", n_train=24, n_val=0)
    settings = [
        f"dataset.root={data}",
        f"output={tmp_path / 'out'}",
        "run_name=tiny",
        *TINY_SETTINGS,
        "ray.rows_per_file=2",
        "ray.inference_batch_size=1",
        "walk.centroid_iterations=300",
        "walk.exp_times=8",
    ]
    config = tiny_config(data, str(tmp_path / "out"), *settings[2:])
    _untrained_models(config.output)
    start_local_ray()
    run_stages(config, "make-cams")
    import ray

    ray.shutdown()
    shards = Path(config.output) / "pseudo_labels"
    env = dict(os.environ)
    first = _cli(["make-pseudo-labels", *_sets(settings)], env)
    _wait_for(lambda: shards.exists() and len(list(shards.glob("part-*.parquet"))) >= 1, first, timeout=300)
    _kill_group(first)  # SIGKILL: no cleanup, no marker
    before = len(committed_ids(resolve(str(shards))))
    assert 0 < before < 24, f"kill came too late to test a resume ({before} of 24 done)"
    second = _cli(["make-pseudo-labels", *_sets(settings)], env)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out
    ids = committed_ids(resolve(str(shards)))
    assert len(ids) == len(set(ids)) == 24
    action, total, processed, kept = _row(out, "make-pseudo-labels")[1:5]
    assert (action, total, processed, kept) == ("run", "24", str(24 - before), str(before)), out

    # calibrate, killed half-way through its re-cut: every image once, a re-run finishes the rest
    calibrated = settings
    for model in (Path(config.output) / "models").glob("*.pt"):  # calibrate runs no network
        model.unlink()
    slow = {**env, faults.SLOW_RECUT: "1"}
    third = _cli(["calibrate", *_sets(calibrated)], slow)
    recut = lambda: sum(_thresholds_of(p)["source"] == "calibration" for p in shards.glob("part-*.parquet"))  # noqa: E731
    _wait_for(lambda: recut() >= 1, third, timeout=300)
    _kill_group(third)
    assert 0 < recut() < 12, f"kill came too late ({recut()} of 12 shards re-cut)"
    ids = committed_ids(resolve(str(shards)))
    assert len(ids) == len(set(ids)) == 24  # mixed thresholds, never a lost or doubled image
    fourth = _cli(["calibrate", *_sets(calibrated)], env)
    out, _ = fourth.communicate(timeout=600)
    assert fourth.returncode == 0, out
    assert recut() == 12 and len(set(committed_ids(resolve(str(shards))))) == 24
    stamps = {p.name: p.stat().st_mtime_ns for p in shards.glob("part-*.parquet")}
    fifth = _cli(["calibrate", *_sets(calibrated)], env)
    out, _ = fifth.communicate(timeout=600)
    assert fifth.returncode == 0 and "calibrate: done, nothing changed" in out, out
    assert stamps == {p.name: p.stat().st_mtime_ns for p in shards.glob("part-*.parquet")}  # a no-op


def _thresholds_of(path: Path) -> dict:
    import pyarrow.parquet as pq

    from ray_wsis.pipeline.schema import THRESHOLDS_KEY

    return json.loads(pq.read_schema(path).metadata[THRESHOLDS_KEY.encode()])


def test_rerun_after_killed_driver_resumes_training(tmp_path, fresh_ray):
    data = make_tiny_voc(tmp_path / "voc")
    settings = [f"dataset.root={data}", f"output={tmp_path / 'out'}", "run_name=tiny", *TINY_SETTINGS, "cam.epochs=3"]
    env = dict(os.environ)
    first = _cli(["train-cam", *_sets(settings)], env)
    snapshot = tmp_path / "out" / "checkpoints" / "tiny-cam" / "checkpoint_manager_snapshot.json"
    # the checkpoint counts once Ray Train's snapshot names it (the file alone is not yet registered)
    _wait_for(lambda: snapshot.exists() and "epoch_000" in snapshot.read_text(), first, timeout=300)
    _kill_group(first)
    second = _cli(["train-cam", *_sets(settings)], env)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out
    marker = json.loads((tmp_path / "out" / "stages" / "train-cam.json").read_text())
    assert marker["summary"]["resumed_from_epoch"] >= 1, marker


def test_wrong_architecture_checkpoint_fails_before_cluster_work(tmp_path):
    config = tiny_config(make_tiny_voc(tmp_path / "voc"), str(tmp_path / "out"))
    _untrained_models(config.output)  # resnet18 files
    env = dict(os.environ)
    settings = [
        f"dataset.root={config.dataset.root}",
        f"output={config.output}",
        *TINY_SETTINGS,
        "model.backbone=resnet50",
    ]
    process = _cli(["make-cams", *_sets(settings)], env)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "resnet18" in out and "resnet50" in out and "Traceback" not in out
    assert "Started a local Ray" not in out
