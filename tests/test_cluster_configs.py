"""cluster/ and the shipped configs, checked offline: what `ray up`, `kubectl apply` and
`ray job submit --working-dir .` would choke on (or silently get wrong) fails here first.

The launcher YAML goes through Ray's own prepare_config + validate_config (defaults merged from
ray/autoscaler/aws/defaults.yaml, schema ray-schema.json) with sockets and boto3 blocked. KubeRay has
no offline validator in Ray, so the manifests get a structural check of the fields that matter;
broken copies (negative controls) prove each check can fail.
"""

from __future__ import annotations

import copy
import os
import shlex
import socket
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from ray_wsis.cli import STAGE_NAMES
from ray_wsis.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
GPU = "nvidia.com/gpu"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the network (AWS included) fails the test."""
    import boto3

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network/cloud call during offline validation: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(boto3, "client", refuse)
    monkeypatch.setattr(boto3, "resource", refuse)
    monkeypatch.setattr(boto3.session.Session, "client", refuse)
    monkeypatch.setattr(boto3.session.Session, "resource", refuse)
    monkeypatch.chdir(ROOT)  # file_mounts' local "." is the checkout, as for `ray up` run from the root


# -- cluster launcher (AWS) -----------------------------------------------------------------


def launcher_checked(raw: dict[str, Any]) -> dict[str, Any]:
    """Ray's validation (raises on a schema error) followed by this project's policy."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    assert "cluster_synced_files" in config  # prepare filled the defaults in
    problems = launcher_problems(config)
    if problems:
        raise ValueError("; ".join(problems))
    return config


def launcher_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    image = config.get("docker", {}).get("image", "")
    if f":{ray.__version__}-" not in image + "-":
        problems.append(f"docker.image {image!r} is not pinned to ray {ray.__version__}")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    if head.get("resources", {}).get("CPU") != 0:
        problems.append("head node type must declare resources: {CPU: 0}")
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu = [t for t in workers.values() if t["node_config"].get("InstanceType", "").startswith(("g4", "g5", "g6", "p"))]
    if not gpu:
        problems.append("no GPU worker node type (g4/g5/g6/p instances)")
    for t in gpu:
        if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") != "spot":
            problems.append("GPU workers should be spot instances")
        if not 0 <= t.get("min_workers", 0) < t.get("max_workers", 0) <= config["max_workers"]:
            problems.append("GPU workers need 0 <= min_workers < max_workers <= max_workers")
    for name, t in types.items():
        if "Arn" not in t["node_config"].get("IamInstanceProfile", {}):
            problems.append(f"{name}: IamInstanceProfile.Arn missing (S3 access comes from it)")
    if not any("ray_wsis" in cmd for cmd in config["setup_commands"]):
        problems.append("setup_commands do not install ray_wsis")
    for remote, local in config.get("file_mounts", {}).items():
        if not (Path(os.path.expanduser(local)) / "ray_wsis").is_dir():
            problems.append(f"file_mounts {remote}: {local} is not the checkout")
    return problems


def test_launcher_yaml_passes_rays_offline_validation(offline: None) -> None:
    config = launcher_checked(_yaml(CLUSTER / "aws-gpu.yaml"))
    assert config["available_node_types"]["gpu_worker"]["max_workers"] == 8
    assert config["head_setup_commands"][0] == config["setup_commands"][0]  # merged by prepare_config


def _break_launcher(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    broken = copy.deepcopy(_yaml(CLUSTER / "aws-gpu.yaml"))
    change(broken)
    return broken


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.update(idle_timeout_minute=10),  # typo: the schema forbids unknown keys
        lambda c: c["available_node_types"]["gpu_worker"].update(max_workers="eight"),
        lambda c: c.update(head_node_type="missing"),
        lambda c: c["available_node_types"]["head"].update(resources={}),
        lambda c: c["docker"].update(image="rayproject/ray:2.52.0-py311-gpu"),
        lambda c: c["available_node_types"]["gpu_worker"]["node_config"].pop("IamInstanceProfile"),
    ],
    ids=["unknown-key", "wrong-type", "no-head-type", "cpu-on-head", "old-image", "no-profile"],
)
def test_launcher_negative_controls(offline: None, change: Callable[[dict[str, Any]], None]) -> None:
    import jsonschema

    with pytest.raises((jsonschema.ValidationError, ValueError)):
        launcher_checked(_break_launcher(change))


# -- KubeRay ------------------------------------------------------------------------------


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc.get("kind") == "RayJob" else doc["spec"]


def kuberay_problems(doc: dict[str, Any]) -> list[str]:
    """The fields that decide whether the pipeline runs (and on GPUs, with S3 access)."""
    problems: list[str] = []
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") not in ("RayCluster", "RayJob"):
        return [f"apiVersion/kind {doc.get('apiVersion')}/{doc.get('kind')} is not ray.io/v1 RayCluster/RayJob"]
    spec = _cluster_spec(doc)
    if spec.get("rayVersion") != ray.__version__:
        problems.append(f"rayVersion {spec.get('rayVersion')!r} != installed ray {ray.__version__}")
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling is not true")
    head = spec["headGroupSpec"]
    if head.get("rayStartParams", {}).get("num-cpus") != "0":
        problems.append('head rayStartParams num-cpus must be the string "0"')
    pods = [("head", head["template"]["spec"])] + [
        (g.get("groupName", "?"), g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])
    ]
    for name, pod in pods:
        if not pod.get("serviceAccountName"):
            problems.append(f"{name}: serviceAccountName missing (bucket access via IRSA/workload identity)")
        for container in pod["containers"]:
            if ray.__version__ not in container.get("image", ""):
                problems.append(f"{name}: image {container.get('image')!r} is not pinned to {ray.__version__}")
    gpu_groups = [
        g
        for g in spec.get("workerGroupSpecs", [])
        if any(
            int(c.get("resources", {}).get("limits", {}).get(GPU, 0)) >= 1 for c in g["template"]["spec"]["containers"]
        )
    ]
    if not gpu_groups:
        problems.append(f"no worker group with a {GPU} limit")
    for group in spec.get("workerGroupSpecs", []):
        problems += _group_problems(group)
    if doc["kind"] == "RayJob":
        problems += _entrypoint_problems(doc["spec"])
    return problems


def _group_problems(group: dict[str, Any]) -> list[str]:
    name, pod = group.get("groupName"), group["template"]["spec"]
    problems = [] if name else ["a worker group has no groupName"]
    lo, n, hi = group.get("minReplicas", 0), group.get("replicas", 0), group.get("maxReplicas", 0)
    if not (isinstance(hi, int) and 0 <= lo <= n <= hi and hi >= 1):
        problems.append(f"{name}: need 0 <= minReplicas <= replicas <= maxReplicas, maxReplicas >= 1")
    if not any(t.get("key") == GPU for t in pod.get("tolerations", [])):
        problems.append(f"{name}: no {GPU} toleration")
    memory_volumes = {v["name"] for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"}
    for container in pod["containers"]:
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        if mounts.get("/dev/shm") not in memory_volumes:
            problems.append(f"{name}: /dev/shm is not an emptyDir Memory volume")
    return problems


def _entrypoint_problems(spec: dict[str, Any]) -> list[str]:
    problems = []
    words = shlex.split(spec.get("entrypoint", ""))
    if words[:3] != ["python", "-m", "ray_wsis"] or len(words) < 4 or words[3] not in (*STAGE_NAMES, "run"):
        problems.append(f"entrypoint {spec.get('entrypoint')!r} is not `python -m ray_wsis <run|stage> ...`")
    config = words[words.index("--config") + 1] if "--config" in words[:-1] else ""
    if not config or not (ROOT / config).is_file():
        problems.append(f"entrypoint config {config!r} does not exist")
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML", "")) or {}
    working_dir = runtime_env.get("working_dir", "")
    if not (working_dir.startswith("/") or "://" in working_dir):
        problems.append("runtimeEnvYAML working_dir must be a path in the image or a remote URI")
    return problems


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests(name: str) -> None:
    assert kuberay_problems(_yaml(CLUSTER / name)) == []


def test_rayjob_runs_the_pipeline_with_a_loadable_config() -> None:
    from ray.runtime_env import RuntimeEnv

    spec = _yaml(CLUSTER / "rayjob.yaml")["spec"]
    words = shlex.split(spec["entrypoint"])
    assert words[:4] == ["python", "-m", "ray_wsis", "run"]
    load_config(str(ROOT / words[words.index("--config") + 1]))
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    env.pop("working_dir")  # a path inside the image; Ray checks local paths exist
    RuntimeEnv(**env)  # Ray's own validation of the rest
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 0


def _workers(doc: dict[str, Any]) -> dict[str, Any]:
    return _cluster_spec(doc)["workerGroupSpecs"][0]


def _worker_container(doc: dict[str, Any]) -> dict[str, Any]:
    return _workers(doc)["template"]["spec"]["containers"][0]


BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "api-version": lambda d: d.update(apiVersion="ray.io/v1alpha1"),
    "ray-version": lambda d: _cluster_spec(d).update(rayVersion="2.52.0"),
    "no-autoscaling": lambda d: _cluster_spec(d).update(enableInTreeAutoscaling=False),
    "cpus-on-head": lambda d: _cluster_spec(d)["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
    "no-gpu-limit": lambda d: _worker_container(d)["resources"]["limits"].pop(GPU),
    "no-toleration": lambda d: _workers(d)["template"]["spec"].pop("tolerations"),
    "no-shm": lambda d: _worker_container(d).pop("volumeMounts"),
    "shm-on-disk": lambda d: _workers(d)["template"]["spec"]["volumes"][0].update(emptyDir={}),
    "no-service-account": lambda d: _workers(d)["template"]["spec"].pop("serviceAccountName"),
    "min-above-max": lambda d: _workers(d).update(minReplicas=9),
    "old-image": lambda d: _worker_container(d).update(image="rayproject/ray:2.52.0-py311-gpu"),
}
JOB_BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "unknown-command": lambda d: d["spec"].update(entrypoint="python -m ray_wsis nope --config configs/cluster.yaml"),
    "missing-config": lambda d: d["spec"].update(entrypoint="python -m ray_wsis run --config configs/nope.yaml"),
    "relative-working-dir": lambda d: d["spec"].update(runtimeEnvYAML="working_dir: ."),
}


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
@pytest.mark.parametrize("change", list(BREAKS), ids=list(BREAKS))
def test_kuberay_negative_controls(name: str, change: str) -> None:
    broken = copy.deepcopy(_yaml(CLUSTER / name))
    BREAKS[change](broken)
    assert kuberay_problems(broken), f"{change} went unnoticed"


@pytest.mark.parametrize("change", list(JOB_BREAKS), ids=list(JOB_BREAKS))
def test_rayjob_negative_controls(change: str) -> None:
    broken = copy.deepcopy(_yaml(CLUSTER / "rayjob.yaml"))
    JOB_BREAKS[change](broken)
    assert kuberay_problems(broken), f"{change} went unnoticed"


# -- working dir upload and runtime env ----------------------------------------------------


def test_working_dir_upload_is_small_and_complete(tmp_path: Path) -> None:
    """Zip the checkout exactly as `ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml`."""
    from ray._private.runtime_env.packaging import _zip_files
    from ray.runtime_env import RuntimeEnv

    env = _yaml(CLUSTER / "runtime_env.yaml")
    RuntimeEnv(**env)
    package = tmp_path / "wd.zip"
    _zip_files(str(ROOT), env["excludes"], str(package), include_gitignore=True)
    names = set(zipfile.ZipFile(package).namelist())
    assert package.stat().st_size < 64 * 2**20  # Ray's limit is 512 MiB; .venv alone is ~6 GB
    for needed in (
        "ray_wsis/__init__.py",
        "ray_wsis/__main__.py",
        "ray_wsis/data/voc.py",
        "ray_wsis/stages/run.py",
        "ray_wsis/stages/registry.py",
        "jobs/submit.sh",
        "configs/cluster.yaml",
        "configs/demo.yaml",
    ):
        assert needed in names, needed
    for left_out in (".venv/", "demo_data/", "outputs/", ".git/"):
        assert not any(n.startswith(left_out) for n in names), left_out


def test_rayignore_covers_the_big_folders() -> None:
    patterns = {line.strip() for line in (ROOT / ".rayignore").read_text().splitlines()}
    assert {"/.venv/", "/demo_data/", "/outputs/", "/demo_output/"} <= patterns
    assert "data/" not in patterns  # unanchored, it would also drop the package ray_wsis/data/


# -- shipped configs ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["voc12", "coco14", "cluster", "demo"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(str(ROOT / "configs" / f"{name}.yaml"))
    assert config.output


@pytest.mark.parametrize("name", ["voc12", "coco14", "cluster"])
def test_paper_configs_keep_the_reference_settings(name: str) -> None:
    """ImageNet weights, irn's frozen stages and SGD quirk, and irn's *global* batch sizes."""
    c = load_config(str(ROOT / "configs" / f"{name}.yaml"))
    assert c.model.backbone == "resnet50" and c.model.weights == "ResNet50_Weights.IMAGENET1K_V1"
    assert c.cam.frozen_stages == ("conv1", "layer1", "layer2") and c.cam.momentum == c.irn.momentum == 0.0
    assert c.irn.backbone_init == "weights" and c.irn.train_backbone is False
    assert c.ray.use_gpu and c.ray.num_workers == 8
    assert c.ray.num_workers * c.cam.batch_size == 16 and c.ray.num_workers * c.irn.batch_size == 32
    assert (c.cam.epochs, c.irn.epochs, c.cam.learning_rate, c.irn.learning_rate) == (5, 3, 0.1, 0.1)


def test_voc_and_coco_splits() -> None:
    voc, coco = (load_config(str(ROOT / "configs" / f"{n}.yaml")).dataset for n in ("voc12", "coco14"))
    assert (voc.train_split, voc.infer_split, voc.eval_split) == ("train_aug", "train", "train")
    assert voc.segmentation_class_dir == "SegmentationClass"
    assert coco.format == "coco" and "{split}" in coco.coco_annotations and coco.coco_image_dir == "{split}"
    assert coco.train_split == coco.infer_split == coco.eval_split == "train2014"
    cluster = load_config(str(ROOT / "configs" / "cluster.yaml"))
    assert cluster.dataset.root.startswith("s3://") and cluster.output.startswith("s3://")
