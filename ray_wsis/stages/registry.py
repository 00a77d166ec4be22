"""The stage registry: which stages make a run, in which order, for each method.

The one list of stages; the CLI's commands, `run`, `status`, the docs table and the
config-coverage test all read it. It is cheap to import (no torch, no Ray): each stage is
declared here with what planning needs (the fields it reads, what it consumes, its outputs and
input ids, all computed from the dataset and the output's files), and its body is imported from
its module only when the stage runs. So `status`, `config show`, `export` and a `run` with
nothing to do never import torch or Ray (tests/test_cli_fast.py).

The stage modules hold the bodies only: this is the one place that declares a stage.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from ray_wsis.config import Config, ConfigError
from ray_wsis.pipeline.context import StageContext, relation_net_stage
from ray_wsis.pipeline.layout import Layout
from ray_wsis.pipeline.model_files import fingerprint_location
from ray_wsis.stages.base import Stage, StageRun
from ray_wsis.storage import Location, exists, list_files, read_bytes, resolve

PART_PREFIX = "part-"


def committed_ids(location: Location) -> list[str]:
    """image_ids of every committed shard in a stage folder, without Ray (as pipeline/sink.py's)."""
    import pyarrow.parquet as pq

    ids: list[str] = []
    for path in list_files(location, suffix=".parquet", prefix=PART_PREFIX):
        ids.extend(pq.read_table(path, columns=["image_id"], filesystem=location.fs).column("image_id").to_pylist())
    return ids


def body(module: str, function: str) -> Callable[[StageRun], dict[str, Any]]:
    """A stage body imported from its module (with its torch and Ray) when the stage runs."""

    def run(stage_run: StageRun) -> dict[str, Any]:
        result: dict[str, Any] = getattr(importlib.import_module(f"ray_wsis.stages.{module}"), function)(stage_run)
        return result

    run.__qualname__ = run.__name__ = f"{module}.{function}"
    return run


# --------------------------------------------------------------------------- inputs and outputs
def train_ids(ctx: StageContext) -> Sequence[str]:
    return [r.image_id for r in ctx.split(ctx.config.dataset.train_split).records]


def classifier_inputs(ctx: StageContext) -> Sequence[str]:
    """The training images and, for a second round (cam.paste_from), the identity of the first
    round's cut: new first-round labels are a changed input of train-cam."""
    paste_from = ctx.config.cam.paste_from
    if not paste_from:
        return train_ids(ctx)
    marker = Layout(resolve(paste_from, ctx.config.storage)).marker(CUT_LABELS.name)
    cut = json.loads(read_bytes(marker)).get("identity", "") if exists(marker) else "none"
    return [*train_ids(ctx), f"paste:{cut}"]


def cam_ids(ctx: StageContext) -> Sequence[str]:
    """Every image a later stage needs CAMs of: train, infer (+ calibration) splits (make_cams.cam_records)."""
    d = ctx.config.dataset
    records = ctx.splits(d.train_split, d.infer_split, *([d.calibration_split] if d.calibration_split else []))
    return [r.image_id for r in records.records]


def label_ids(ctx: StageContext) -> Sequence[str]:
    """The images to label: infer (+ calibration) split (make_pseudo_labels.label_records)."""
    d = ctx.config.dataset
    records = ctx.splits(d.infer_split, *([d.calibration_split] if d.calibration_split else []))
    return [r.image_id for r in records.records]


def relation_labels_of(layout: Layout, config: Config) -> Location:
    """The relation labels the run trained on: IRN's, or psa's for AffinityNet (affinity.labels)."""
    psa = config.method == "affinitynet" and config.affinity.labels == "psa"
    return layout.affinity_labels if psa else layout.ir_labels


def relation_ids(ctx: StageContext) -> Sequence[str]:
    return committed_ids(relation_labels_of(ctx.layout, ctx.config))


def scores_ids(ctx: StageContext) -> Sequence[str]:
    return committed_ids(ctx.layout.scores)


def human_entries(ctx: StageContext) -> list[str]:
    """One entry per reviewed image and version of its masks: a new or changed correction is a
    changed input of the stages that read the masks."""
    return [f"human:{image_id}:{sha}" for image_id, sha in sorted(ctx.human_digests().items())]


def calibrate_inputs(ctx: StageContext) -> Sequence[str]:
    """The scored images, and the reviewers' masks when they are the calibration split."""
    from ray_wsis.data.reviewed import REVIEW_SPLIT

    reviewed = ctx.config.dataset.calibration_split == REVIEW_SPLIT
    return [*scores_ids(ctx), *(human_entries(ctx) if reviewed else [])]


def cut_inputs(ctx: StageContext) -> Sequence[str]:
    """The scored images and the reviewers' masks (a reviewed image ships its human mask)."""
    return [*scores_ids(ctx), *human_entries(ctx)]


def scored_ids(ctx: StageContext) -> list[str]:
    """The eval split, less the few-shot calibration images (their masks chose the thresholds) and
    the reviewed images (their labels are the reviewers' masks)."""
    d = ctx.config.dataset
    held = set(ctx.human_digests())
    if d.calibration_split and ctx.config.calibration.enabled:
        held |= {r.image_id for r in ctx.split(d.calibration_split).records}
    return [r.image_id for r in ctx.split(d.eval_split or d.infer_split).records if r.image_id not in held]


def _model_outputs(kind: Callable[[Config], str]) -> Callable[[Layout, Config], tuple[Location, ...]]:
    def outputs(layout: Layout, config: Config) -> tuple[Location, ...]:
        model = layout.model(kind(config))
        return model, fingerprint_location(model), layout.checkpoints.child(f"{config.run_name}-{kind(config)}")

    return outputs


# --------------------------------------------------------------------------- the stages
TRAIN_CAM = Stage(
    name="train-cam",
    about="train the multi-label classifier on image-level labels (Ray Train; irn train_cam)",
    kind="train",
    reads=(
        "dataset.format",
        "dataset.root",
        "dataset.coco_annotations",
        "dataset.coco_image_dir",
        "dataset.manifest",
        "dataset.class_names_file",
        "dataset.max_long_side",
        "model",
        "seed",
        "cam.crop_size",
        "cam.resize_long",
        "cam.batch_size",
        "cam.epochs",
        "cam.learning_rate",
        "cam.head_lr_scale",
        "cam.weight_decay",
        "cam.momentum",
        "cam.optimizer",
        "cam.frozen_stages",
        "cam.color_jitter",
        "cam.negative_peak_weight",
        "cam.negative_top",
        "cam.context_prototype_weight",
        "cam.context_rectify",
        "cam.paste_from",
        "cam.paste_probability",
        "cam.paste_min_score",
    ),
    consumes=(),
    body=body("train_cam", "train_cam"),
    outputs=_model_outputs(lambda config: "cam"),
    inputs=classifier_inputs,
)

MAKE_CAMS = Stage(
    name="make-cams",
    about="multi-scale CAMs of the train and infer images, stride 4, float16 (Ray Data actors; irn make_cam)",
    kind="images",
    reads=("cam.scales", "dataset.max_long_side"),
    consumes=("train-cam",),
    body=body("make_cams", "make_cams"),
    outputs=lambda layout, config: (layout.cams, layout.errors("make-cams")),
    inputs=cam_ids,
)

MAKE_IR_LABELS = Stage(
    name="make-ir-labels",
    about="relation labels of the train images: two thresholds + dense CRF, 255 = ignore (irn cam_to_ir_label)",
    kind="images",
    reads=("ir_label",),
    consumes=("make-cams",),
    body=body("make_ir_labels", "make_ir_labels"),
    outputs=lambda layout, config: (layout.ir_labels, layout.errors("make-ir-labels")),
    inputs=train_ids,
)

MAKE_AFFINITY_LABELS = Stage(
    name="make-affinity-labels",
    about="psa's relation labels of the train images: two CRFs at background powers 4 / 32 (CPU tasks; psa infer_cls)",
    kind="images",
    reads=(
        "affinity.la_alpha",
        "affinity.ha_alpha",
        "affinity.crf_iterations",
        "affinity.crf_gaussian_sxy",
        "affinity.crf_gaussian_compat",
        "affinity.crf_bilateral_sxy",
        "affinity.crf_bilateral_srgb",
        "affinity.crf_bilateral_compat",
    ),
    consumes=("make-cams",),
    body=body("make_affinity_labels", "make_affinity_labels"),
    outputs=lambda layout, config: (layout.affinity_labels, layout.errors("make-affinity-labels")),
    inputs=train_ids,
)

TRAIN_IRN = Stage(
    name=relation_net_stage("irnet"),
    about="train IRNet (boundaries + displacements) on the relation labels (Ray Train; irn train_irn)",
    kind="train",
    reads=("method", "model", "seed", "irn"),
    consumes=("train-cam", "make-ir-labels"),
    body=body("train_irn", "train_irn"),
    outputs=_model_outputs(lambda config: config.method),
    inputs=relation_ids,
)

TRAIN_AFFINITYNET = dataclasses.replace(
    TRAIN_IRN,
    name=relation_net_stage("affinitynet"),
    about="train AffinityNet (feature affinities) on psa's relation labels (Ray Train; psa train_aff)",
    reads=(
        "method",
        "model",
        "seed",
        "affinity.labels",
        "affinity.crop_size",
        "affinity.batch_size",
        "affinity.epochs",
        "affinity.learning_rate",
        "affinity.weight_decay",
        "affinity.momentum",
        "affinity.radius",
        "affinity.color_jitter",
        "affinity.rescale",
        "affinity.batch_norm",
    ),
    consumes=("train-cam", "make-affinity-labels"),
)

MAKE_PSEUDO_LABELS = Stage(
    name="make-pseudo-labels",
    about="boundaries -> random walk -> semantic labels; displacements -> instances (irn make_*_seg_labels)",
    kind="images",
    reads=(
        "method",
        "walk.radius",
        "walk.beta",
        "walk.exp_times",
        "walk.centroid_iterations",
        "walk.cluster_threshold",
        "walk.flip",
        "walk.runs_in",
        "calibration.candidates",
    ),
    consumes=("make-cams", TRAIN_IRN.name),
    body=body("make_pseudo_labels", "make_pseudo_labels"),
    outputs=lambda layout, config: (layout.scores, layout.errors("make-pseudo-labels")),
    inputs=label_ids,
)

MAKE_PSEUDO_LABELS_AFFINITY = dataclasses.replace(
    MAKE_PSEUDO_LABELS,
    consumes=("make-cams", TRAIN_AFFINITYNET.name),
    about="feature affinities -> random walk with psa's background channel; instances are connected regions "
    "(Ray Data actors; psa infer_aff)",
    reads=(
        "method",
        "affinity.radius",
        "affinity.beta",
        "affinity.exp_times",
        "affinity.bg_alpha",
        "calibration.candidates",
    ),
)

CALIBRATE = Stage(
    name="calibrate",
    about="choose the walk's background thresholds for this data (label-free or few-shot), no labels written",
    kind="whole",
    reads=(
        "calibration",
        "dataset.calibration_split",
        "walk.sem_bg_threshold",
        "walk.ins_bg_threshold",
        "walk.min_fragment_fraction",
        "walk.keep_relation_labels",
        "walk.instances_follow_semantic",
    ),
    consumes=("make-pseudo-labels",),
    body=body("calibrate", "calibrate"),
    outputs=lambda layout, config: (layout.calibration,),
    inputs=calibrate_inputs,
)

CUT_LABELS = Stage(
    name="cut-labels",
    about="cut the labels from the walk's scores at the chosen thresholds: the one writer of pseudo_labels/",
    kind="whole",
    reads=("walk.min_fragment_fraction", "walk.keep_relation_labels", "walk.instances_follow_semantic"),
    consumes=("calibrate",),
    body=body("cut_labels", "cut"),
    outputs=lambda layout, config: (layout.pseudo_labels,),
    inputs=cut_inputs,
)

EVALUATE = Stage(
    name="evaluate",
    about="CAM / relation-label / semantic mIoU, instance AP, threshold sweeps -> metrics.json (CPU tasks)",
    kind="whole",
    reads=(
        "dataset.eval_split",
        "dataset.segmentation_class_dir",
        "cam.eval_threshold",
        "walk.keep_relation_labels",
        "walk.instances_follow_semantic",
    ),
    consumes=("make-cams", "make-ir-labels", "cut-labels"),
    body=body("evaluate", "evaluate"),
    outputs=lambda layout, config: (layout.metrics,),
    inputs=scored_ids,
)

IRNET: tuple[Stage, ...] = (
    TRAIN_CAM,
    MAKE_CAMS,
    MAKE_IR_LABELS,
    TRAIN_IRN,
    MAKE_PSEUDO_LABELS,
    CALIBRATE,
    CUT_LABELS,
    EVALUATE,
)
"""IRNet (irn): boundaries and displacements; instances from the displacement field."""

AFFINITYNET: tuple[Stage, ...] = (
    TRAIN_CAM,
    MAKE_CAMS,
    MAKE_AFFINITY_LABELS,
    TRAIN_AFFINITYNET,
    MAKE_PSEUDO_LABELS_AFFINITY,
    CALIBRATE,
    CUT_LABELS,
    dataclasses.replace(EVALUATE, consumes=("make-cams", "make-affinity-labels", "cut-labels")),
)
"""AffinityNet (psa): psa's relation labels and feature affinities; instances are connected regions."""

AFFINITYNET_ON_IRN_LABELS: tuple[Stage, ...] = (
    TRAIN_CAM,
    MAKE_CAMS,
    MAKE_IR_LABELS,
    dataclasses.replace(TRAIN_AFFINITYNET, consumes=("train-cam", "make-ir-labels")),
    MAKE_PSEUDO_LABELS_AFFINITY,
    CALIBRATE,
    CUT_LABELS,
    EVALUATE,
)
"""AffinityNet trained on IRN's relation labels (``affinity.labels: irn``)."""

INPUT_FIELDS: tuple[str, ...] = (
    "dataset.train_split",
    "dataset.infer_split",
    "dataset.limit",
    "dataset.images_without_classes",
)
"""Fields that choose the input images: a change is a changed input set (new images are processed
alone), not a changed setting."""

PIPELINES = (IRNET, AFFINITYNET, AFFINITYNET_ON_IRN_LABELS)

NAMES: tuple[str, ...] = tuple(dict.fromkeys(s.name for p in PIPELINES for s in p))
"""Every stage name, in pipeline order (the CLI's stage commands)."""


def pipeline(config: Config) -> tuple[Stage, ...]:
    if config.method == "irnet":
        return IRNET
    return AFFINITYNET if config.affinity.labels == "psa" else AFFINITYNET_ON_IRN_LABELS


def stage(config: Config, name: str) -> Stage:
    for s in pipeline(config):
        if s.name == name:
            return s
    raise ConfigError(
        f"{name} is not a stage of method {config.method!r} ({', '.join(s.name for s in pipeline(config))})"
    )


def downstream_of(config: Config, names: set[str]) -> set[str]:
    """The named stages and every stage that consumes one of them, directly or not."""
    out = set(names)
    for s in pipeline(config):  # in order, so one pass sees every consumer after its producer
        if out & set(s.consumes):
            out.add(s.name)
    return out
