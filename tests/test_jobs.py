"""Ray jobs: the CLI as entrypoint (`python -m ray_wsis`), jobs/submit.sh, and one real `ray job submit`.

The submit test starts its own Ray head (tests/ray_cluster.py: private --temp-dir and ports, so it
never touches another Ray on the machine nor leaves a stale /tmp/ray/ray_current_cluster) and stops
it by process id.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.pipeline_helpers import TINY_SETTINGS, make_tiny_voc
from tests.ray_cluster import local_cluster, ray_cli
from tests.s3_server import moto_endpoint, s3_env  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
SUBMIT_TIMEOUT_S = 360


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "/nonexistent/run.yaml"], "cannot read config file"),
        (["--set", "cam.epochs=zero"], "cam.epochs must be an integer"),
        (["--set", "dataset.root=/nonexistent/voc"], "dataset.root /nonexistent/voc does not exist"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    """The job entrypoint is the CLI: no traceback, one `error:` line, status 2, before any Ray is started."""
    import ray

    from ray_wsis.cli import main

    ray.shutdown()  # an earlier test may have left a Ray running in this process
    assert main(["run", "--set", f"output={tmp_path / 'out'}", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not ray.is_initialized()


def test_module_entrypoint_imports_the_working_dirs_ray_wsis(tmp_path: Path) -> None:
    """`python -m ray_wsis` run in a copy of the repo (a job's working dir) uses that copy's ray_wsis,
    installed package or not, and fails like the CLI."""
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "ray_wsis", copy / "ray_wsis", ignore=shutil.ignore_patterns("__pycache__"))
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['ray_wsis', 'run', '--config', '/nonexistent.yaml']\n"
        "try:\n"
        "    runpy.run_module('ray_wsis', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    print(sys.modules['ray_wsis'].__file__, exc.code)\n"
    )
    done = _run("-c", probe, cwd=copy)
    path, code = done.stdout.split()
    assert Path(path).is_relative_to(copy) and code == "2", done.stdout + done.stderr
    assert done.stderr.startswith("error: cannot read config file") and "Traceback" not in done.stderr


def test_submit_script_needs_a_command_and_passes_it_through(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ray").write_text('#!/usr/bin/env bash\necho "$@"\n')
    (fake / "ray").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    usage = subprocess.run(
        ["bash", str(ROOT / "jobs" / "submit.sh"), "--address", "x"], env=env, capture_output=True, text=True
    )
    assert usage.returncode == 2 and "usage" in usage.stderr
    done = subprocess.run(
        [
            "bash",
            str(ROOT / "jobs" / "submit.sh"),
            "--address",
            "http://h:8265",
            "--",
            "run",
            "--config",
            "configs/cluster.yaml",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    words = done.stdout.split()
    assert words[:3] == ["job", "submit", "--working-dir"] and words[3] == str(ROOT)
    assert "--runtime-env" in words and words[words.index("--runtime-env") + 1].endswith("cluster/runtime_env.yaml")
    assert words[-7:] == ["--", "python", "-m", "ray_wsis", "run", "--config", "configs/cluster.yaml"]


# -- one real Ray job ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="stops the head by pid via /proc (Linux)")
def test_submit_pipeline_job_reading_and_writing_s3(tmp_path: Path, s3_env: str) -> None:
    """The whole pipeline as a Ray job, dataset and output on an S3 server (moto) started here.

    Credentials reach the job's driver and workers only through the job's runtime env, as on a
    cluster. One run covers `ray job submit` and the S3 path of every stage (images decoded from
    S3, Ray Train checkpoints on S3, atomic shard writes, model files read back by actors).
    """
    from ray_wsis.labels import iter_pseudo_labels
    from ray_wsis.pipeline.context import check_output
    from tests.pipeline_helpers import tiny_config
    from tests.s3_server import CREDENTIALS, s3_client, upload_tree

    endpoint = s3_env
    client = s3_client(endpoint)
    client.create_bucket(Bucket="data")
    client.create_bucket(Bucket="labels")
    upload_tree(make_tiny_voc(tmp_path / "voc"), "data", "voc", endpoint)
    overrides = [
        "dataset.root=s3://data/voc",
        "output=s3://labels/job1",
        f"storage.endpoint_url={endpoint}",
        "run_name=tiny-job",
        *TINY_SETTINGS,
    ]
    config = tiny_config("s3://data/voc", "s3://labels/job1", f"storage.endpoint_url={endpoint}")
    check_output(config)
    command = ["run", "--config", "configs/demo.yaml", *[arg for item in overrides for arg in ("--set", item)]]
    with local_cluster(head_cpus=2) as head:
        env = {k: v for k, v in head.env.items() if k not in CREDENTIALS}  # not inherited by the job
        runtime_env = {"env_vars": {"OMP_NUM_THREADS": "1", **CREDENTIALS}}
        env["PATH"] = os.pathsep.join([str(Path(ray_cli()).parent), env.get("PATH", "")])  # submit.sh's `ray`
        submit = [
            "bash",
            "jobs/submit.sh",
            "--address",
            head.dashboard,
            "--submission-id",
            f"ray-wsis-test-{uuid.uuid4().hex[:8]}",
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            *command,
        ]
        done = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S)
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "succeeded" in log, log[-6000:]
    assert "pseudo-labels:" in log and "make-pseudo-labels" in log  # the summary table was printed
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="labels", Prefix="job1/")["Contents"]]
    assert any(k.startswith("job1/pseudo_labels/part-") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("job1/checkpoints/tiny-job-cam/epoch_000/") for k in keys)
    assert "job1/models/irnet.pt" in keys and "job1/metrics.json" in keys
    metrics = json.loads(client.get_object(Bucket="labels", Key="job1/metrics.json")["Body"].read())
    assert metrics["images"]["semantic"] == 8
    rows = list(iter_pseudo_labels("s3://labels/job1", config.storage))
    ids = [r["image_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 8
