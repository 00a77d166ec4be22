"""Faults injected on purpose: every image ends up exactly once, and training resumes.

Hooks live in ray_wsis/pipeline/faults.py; they are armed through environment variables set
before Ray starts (workers inherit them) and fire once, guarded by a flag file.
"""

from __future__ import annotations

import json
import os
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
from tests.processes import exited, kill_tagged, kill_tree, tagged

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
    summary.pop("timing", None)  # per-stage timings: not what this test is about
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


@pytest.fixture()
def cli():
    """Launch `python -m ray_wsis ...` in a session of its own. At the end, whatever a launched
    driver left running (it timed out, the test failed half-way) is killed by pid, with its Ray."""
    launched: list[subprocess.Popen] = []
    tokens: list[str] = []

    def launch(args: list[str], env: dict[str, str]) -> subprocess.Popen:
        env, token = tagged(env)
        tokens.append(token)
        process = subprocess.Popen(
            [sys.executable, "-m", "ray_wsis", *args],
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        launched.append(process)
        return process

    yield launch
    for process in launched:
        if process.returncode is None:  # not reaped: its pid still names only our processes
            kill_tree(process)
            process.wait(timeout=30)
    for token in tokens:  # what a driver that exited normally left behind
        kill_tagged(token)


def _sets(config_args: list[str]) -> list[str]:
    return [item for setting in config_args for item in ("--set", setting)]


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started (its local Ray: GCS, raylet, workers), by pid.

    A local Ray's workers run in sessions of their own, so the driver's process group does not hold
    them all; they are found as the driver's descendants and frozen before any is killed
    (tests/processes.py). Nothing that this test did not start is touched."""
    survivors = kill_tree(process)
    process.wait(timeout=30)
    assert not survivors, f"processes this test started survived SIGKILL: {survivors}"


def _wait_for(predicate, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if exited(process):  # not reaped yet, so what it left behind can still be found
            _kill_group(process)
            raise AssertionError(f"process ended early:\n{process.stdout.read()}")
        time.sleep(0.2)
    _kill_group(process)
    raise AssertionError("timed out waiting for the process to make progress")


def test_driver_killed_mid_pseudo_labels_resumes_exactly_once(tmp_path, fresh_ray, cli):
    images, shards_of = 12, 6  # ray.rows_per_file=2: two images a shard
    data = make_tiny_voc(tmp_path / "voc12", n_train=images, n_val=0)
    settings = [
        f"dataset.root={data}",
        f"output={tmp_path / 'out'}",
        "run_name=tiny",
        *TINY_SETTINGS,
        "ray.rows_per_file=2",
        "ray.inference_batch_size=1",
    ]
    config = tiny_config(data, str(tmp_path / "out"), *settings[2:])
    _untrained_models(config.output)
    start_local_ray()  # for every step but the killed drivers (and the last, a no-op): idle while they run
    run_stages(config, "make-cams")
    scores = Path(config.output) / "scores"  # make-pseudo-labels writes the walked maps; cut-labels the labels
    env = dict(os.environ)
    # the first run's model actor sleeps 2 s before each image (one a batch, one actor): the kill, at
    # most a second after the first shard is seen, lands mid-stage; the re-run goes at full speed
    first = cli(["make-pseudo-labels", *_sets(settings)], {**env, faults.SLOW_ACTOR: "pseudo_labels:2"})
    _wait_for(lambda: scores.exists() and len(list(scores.glob("part-*.parquet"))) >= 1, first, timeout=300)
    _kill_group(first)  # SIGKILL: no cleanup, no marker
    before = len(committed_ids(resolve(str(scores))))
    assert 0 < before < images, f"kill came too late to test a resume ({before} of {images} done)"
    # the re-runs go in this process's Ray: a kill needs a driver of its own, a re-run does not
    second = run_stages(config, "make-pseudo-labels")["make-pseudo-labels"]
    ids = committed_ids(resolve(str(scores)))
    assert len(ids) == len(set(ids)) == images
    counts = {key: second[key] for key in ("action", "input", "processed", "kept")}
    assert counts == {"action": "run", "input": images, "processed": images - before, "kept": before}, second

    # cut-labels (the one writer of pseudo_labels/), killed half-way: every shard it wrote is whole,
    # no image twice, and a re-run cuts only the shards that are missing
    for model in (Path(config.output) / "models").glob("*.pt"):  # calibrate and cut-labels run no network
        model.unlink()
    run_stages(config, "calibrate")
    shards = Path(config.output) / "pseudo_labels"
    cut = lambda: sum(_thresholds_of(p)["source"] == "calibration" for p in shards.glob("part-*.parquet"))  # noqa: E731
    # 2 s after each shard, two tasks at a time: 6 s for the 6 shards, as long as 12 shards at 1 s took
    fourth = cli(["cut-labels", *_sets(settings)], {**env, faults.SLOW_CUT: "2"})
    _wait_for(lambda: shards.exists() and cut() >= 1, fourth, timeout=300)
    _kill_group(fourth)
    done = cut()
    assert 0 < done < shards_of, f"kill came too late ({done} of {shards_of} shards cut)"
    ids = committed_ids(resolve(str(shards)))
    assert len(ids) == len(set(ids)) == 2 * done  # whole shards only (2 rows each), never a doubled image
    run_stages(config, "cut-labels")
    assert cut() == shards_of and len(set(committed_ids(resolve(str(shards))))) == images
    marker = json.loads((Path(config.output) / "stages" / "cut-labels.json").read_text())
    assert (marker["summary"]["shards"], marker["summary"]["cut"]) == (shards_of, shards_of - done), marker["summary"]
    stamps = {p.name: p.stat().st_mtime_ns for p in shards.glob("part-*.parquet")}
    sixth = cli(["cut-labels", *_sets(settings)], env)
    out, _ = sixth.communicate(timeout=600)
    assert sixth.returncode == 0 and "cut-labels: done, nothing changed" in out, out
    assert stamps == {p.name: p.stat().st_mtime_ns for p in shards.glob("part-*.parquet")}  # a no-op


def _thresholds_of(path: Path) -> dict:
    import pyarrow.parquet as pq

    from ray_wsis.pipeline.schema import THRESHOLDS_KEY

    return json.loads(pq.read_schema(path).metadata[THRESHOLDS_KEY.encode()])


def test_rerun_after_killed_driver_resumes_training(tmp_path, fresh_ray, cli):
    data = make_tiny_voc(tmp_path / "voc")
    # two epochs: the kill comes once epoch 0 is registered, and the re-run trains epoch 1 from it
    settings = [f"dataset.root={data}", f"output={tmp_path / 'out'}", "run_name=tiny", *TINY_SETTINGS, "cam.epochs=2"]
    env = dict(os.environ)
    first = cli(["train-cam", *_sets(settings)], env)
    snapshot = tmp_path / "out" / "checkpoints" / "tiny-cam" / "checkpoint_manager_snapshot.json"
    # the checkpoint counts once Ray Train's snapshot names it (the file alone is not yet registered)
    _wait_for(lambda: snapshot.exists() and "epoch_000" in snapshot.read_text(), first, timeout=300)
    _kill_group(first)
    start_local_ray()  # the re-run goes in this process: a kill needs a driver of its own, a re-run does not
    run_stages(tiny_config(data, str(tmp_path / "out"), "cam.epochs=2"), "train-cam")
    marker = json.loads((tmp_path / "out" / "stages" / "train-cam.json").read_text())
    assert marker["summary"]["resumed_from_epoch"] >= 1, marker


def test_wrong_architecture_checkpoint_fails_before_cluster_work(tmp_path, cli):
    config = tiny_config(make_tiny_voc(tmp_path / "voc"), str(tmp_path / "out"))
    _untrained_models(config.output)  # resnet18 files
    env = dict(os.environ)
    settings = [
        f"dataset.root={config.dataset.root}",
        f"output={config.output}",
        *TINY_SETTINGS,
        "model.backbone=resnet50",
    ]
    process = cli(["make-cams", *_sets(settings)], env)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "resnet18" in out and "resnet50" in out and "Traceback" not in out
    assert "Started a local Ray" not in out
