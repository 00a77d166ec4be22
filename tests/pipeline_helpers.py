"""Shared pieces of the pipeline tests: a tiny dataset, tiny configs and a local Ray."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ray_wsis.config import Config, load_config
from ray_wsis.data.synthetic import make_synthetic_voc

TEST_RAY_CPUS = 2
"""Logical CPUs of every local Ray the tests start: in-process by start_local_ray, and by the CLI
(through ray.num_cpus below) in subprocesses. Decided here only, so a test gets the same Ray
whichever module started one first."""

TINY_SETTINGS = [
    "model.backbone=resnet18",
    "cam.crop_size=64",
    "cam.resize_long=[64, 96]",
    "cam.batch_size=4",
    "cam.epochs=1",
    "cam.frozen_stages=[]",
    "cam.scales=[1.0, 0.5]",
    "cam.momentum=0.9",
    "irn.crop_size=96",
    "irn.batch_size=4",
    "irn.epochs=1",
    "irn.backbone_init=classifier",
    "irn.train_backbone=true",
    "walk.centroid_iterations=30",
    "walk.exp_times=5",
    f"ray.num_cpus={TEST_RAY_CPUS}",
    "ray.inference_actors=1",
    "ray.cpus_per_worker=1",
    "ray.rows_per_file=4",
    "ray.progress_bars=false",
    "ray.inference_batch_size=2",
]


def make_tiny_voc(root: Path, n_train: int = 8, n_val: int = 2) -> str:
    if not (root / "JPEGImages").exists():
        make_synthetic_voc(str(root), n_train=n_train, n_val=n_val, size=(64, 80), seed=3)
    return str(root)


NO_CLASS_IMAGE = "syn_noclass"
"""The image :func:`add_image_without_classes` adds: background only, an empty label list."""


def add_image_without_classes(root: str, split: str = "train") -> str:
    """Add a background-only image to a VOC folder: an XML without <object>, all-0 masks."""
    from ray_wsis.classes import voc_palette
    from ray_wsis.data.synthetic import _jpeg, _png, voc_xml  # the set's own writers

    rng = np.random.default_rng(11)
    height, width = 64, 80
    rgb = np.clip(rng.normal(120, 30, (height, width, 3)), 0, 255).astype(np.uint8)
    folder = Path(root)
    (folder / "JPEGImages" / f"{NO_CLASS_IMAGE}.jpg").write_bytes(_jpeg(rgb))
    (folder / "Annotations" / f"{NO_CLASS_IMAGE}.xml").write_bytes(voc_xml(NO_CLASS_IMAGE, height, width, []))
    empty = np.zeros((height, width), np.uint8)
    for masks in ("SegmentationClass", "SegmentationObject"):
        (folder / masks / f"{NO_CLASS_IMAGE}.png").write_bytes(_png(empty, voc_palette()))
    lists = folder / "ImageSets" / "Segmentation" / f"{split}.txt"
    lists.write_text(lists.read_text().rstrip("\n") + f"\n{NO_CLASS_IMAGE}\n")
    return NO_CLASS_IMAGE


def tiny_config(data_root: str, output: str, *extra: str) -> Config:
    return load_config(None, [f"dataset.root={data_root}", f"output={output}", "run_name=tiny", *TINY_SETTINGS, *extra])


_started_session: list[str] = []  # the session name of the Ray start_local_ray started last


def start_local_ray() -> Any:
    """The tests' in-process local Ray, with TEST_RAY_CPUS CPUs; the one already running if it is ours.

    A Ray that something else started in this process (the CLI's init_ray, with other settings) is
    shut down and replaced, so the CPUs a test sees never depend on which test ran before it."""
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized() and ray.get_runtime_context().get_session_name() not in _started_session:
        ray.shutdown()
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=TEST_RAY_CPUS, include_dashboard=False, log_to_driver=False)
        _started_session[:] = [ray.get_runtime_context().get_session_name()]
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    return ray


def run_stages(
    config: Config,
    *names: str,
    force: tuple[str, ...] = (),
    retrain: bool = False,
    retry_failed: bool = False,
    log: Any = None,
) -> dict[str, Any]:
    """Run the named stages (all of the pipeline when none) as `ray-wsis run` would, quietly."""
    from ray_wsis.pipeline.context import StageContext
    from ray_wsis.stages.base import RunOptions
    from ray_wsis.stages.run import run_pipeline

    ctx = StageContext(config, log=log or (lambda _m: None))
    options = RunOptions(frozenset(force), retrain=retrain, retry_failed=retry_failed)
    return run_pipeline(ctx, list(names) or None, options)


def markers(config: Config) -> dict[str, dict[str, Any]]:
    """stage name -> its marker, for the stages that have one."""
    import json

    folder = Path(config.output) / "stages"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.exists() else {}


def assert_default_instance_choice(calibration: dict[str, Any]) -> None:
    """The default instance criterion: the steepest contour, or agreement where it finds no edge step.

    Which branch a tiny training takes depends on its scores, so both are checked for consistency.
    """
    instance = calibration["instance"]
    if instance["criterion"].startswith("steepest contour"):
        finite = {t: v for t, v in instance["values"].items() if v is not None}
        assert instance["threshold"]["default"] == float(max(finite, key=finite.__getitem__))
    else:
        assert "no edge step" in instance["criterion"]
        assert len(instance["steepness"]) == len(calibration["candidates"])
        if "instances_follow_semantic" in instance["criterion"]:  # they tile the shipped semantic label
            assert instance["threshold"] == calibration["semantic"]["threshold"]
        else:
            assert "semantic labels" in instance["criterion"]
