"""The stage registry: which stages make a run, in which order, for each method.

The one list of stages; the CLI's commands, `run`, `status`, the docs table and the
config-coverage test all read it. Importing it imports every stage (and torch): drivers only.
"""

from __future__ import annotations

import dataclasses

from ray_wsis.config import Config, ConfigError
from ray_wsis.stages import (
    calibrate,
    cut_labels,
    evaluate,
    make_affinity_labels,
    make_cams,
    make_ir_labels,
    make_pseudo_labels,
    train_cam,
    train_irn,
)
from ray_wsis.stages.base import Stage

IRNET: tuple[Stage, ...] = (
    train_cam.STAGE,
    make_cams.STAGE,
    make_ir_labels.STAGE,
    train_irn.STAGE,
    make_pseudo_labels.STAGE,
    calibrate.STAGE,
    cut_labels.STAGE,
    evaluate.STAGE,
)
"""IRNet (irn): boundaries and displacements; instances from the displacement field."""

AFFINITYNET: tuple[Stage, ...] = (
    train_cam.STAGE,
    make_cams.STAGE,
    make_affinity_labels.STAGE,
    train_irn.AFFINITY_STAGE,
    make_pseudo_labels.AFFINITY_STAGE,
    calibrate.STAGE,
    cut_labels.STAGE,
    dataclasses.replace(evaluate.STAGE, consumes=("make-cams", "make-affinity-labels", "cut-labels")),
)
"""AffinityNet (psa): psa's relation labels and feature affinities; instances are connected regions."""

AFFINITYNET_ON_IRN_LABELS: tuple[Stage, ...] = (
    train_cam.STAGE,
    make_cams.STAGE,
    make_ir_labels.STAGE,
    dataclasses.replace(train_irn.AFFINITY_STAGE, consumes=("train-cam", "make-ir-labels")),
    make_pseudo_labels.AFFINITY_STAGE,
    calibrate.STAGE,
    cut_labels.STAGE,
    evaluate.STAGE,
)
"""AffinityNet trained on IRN's relation labels (``affinity.labels: irn``)."""

NOT_AFFECTING_OUTPUTS: tuple[str, ...] = ("output", "run_name", "ray", "storage", "downstream")
"""Config fields no pipeline stage's output depends on (where things run and go; the downstream
trainers have their own stages, downstream/train.py)."""

INPUT_FIELDS: tuple[str, ...] = ("dataset.train_split", "dataset.infer_split", "dataset.limit")
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
