"""What every stage needs: config, output layout, dataset, Ray, markers and split records."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from ray_wsis import __version__
from ray_wsis.config import Config, ConfigError
from ray_wsis.data.records import DatasetSource, ImageRecord
from ray_wsis.data.sources import build_source
from ray_wsis.pipeline.layout import Layout
from ray_wsis.pipeline.model_files import fingerprint, model_digest
from ray_wsis.storage import StorageError, check_access, exists, read_bytes


@dataclass
class SplitRecords:
    """A split after validation: what to process, what to skip and what is broken."""

    records: list[ImageRecord]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.records) + len(self.skipped) + len(self.failed)


@dataclass
class StageContext:
    """The config of a run with the things its stages share: output layout, dataset, markers."""

    config: Config
    log: Callable[[str], None] = print
    _source: Optional[DatasetSource] = None
    _splits: dict[str, SplitRecords] = field(default_factory=dict)
    _human: Optional[dict[str, str]] = None

    @property
    def layout(self) -> Layout:
        return Layout.of(self.config)

    @property
    def source(self) -> DatasetSource:
        """The dataset's source; with the split of reviewed images when a review was pulled."""
        if self._source is None:
            from ray_wsis.data.reviewed import REVIEW_SPLIT, ReviewedSource

            source = build_source(self.config.dataset, self.config.storage)
            reviewed = self.human_digests()
            if reviewed or self.config.dataset.calibration_split == REVIEW_SPLIT:
                location = self.layout.human_labels
                source = ReviewedSource(source, location, self.config.dataset.infer_split, frozenset(reviewed))
            self._source = source
        return self._source

    def human_digests(self) -> dict[str, str]:
        """image_id -> digest of the reviewers' masks pulled into this output (read once a run)."""
        if self._human is None:
            from ray_wsis.data.reviewed import human_digests

            self._human = human_digests(self.layout.human_labels)
        return self._human

    @property
    def num_classes(self) -> int:
        return len(self.source.class_names)

    def split(self, name: str) -> SplitRecords:
        """Records to process (images without classes too, unless dataset.images_without_classes
        is skip: then they are skipped), broken ones failed.

        Listed once per run: planning and the stages all ask for the same splits."""
        if name not in self._splits:
            scan = getattr(self.source, "scan", None)
            records, invalid = scan(name) if scan else (self.source.records(name), [])
            if self.config.dataset.limit:
                records = records[: self.config.dataset.limit]
            if self.config.dataset.images_without_classes == "negatives":
                self._splits[name] = SplitRecords(records, [], list(invalid))
            else:
                labelled = [r for r in records if r.class_ids]
                skipped = [(r.image_id, "no image-level labels") for r in records if not r.class_ids]
                self._splits[name] = SplitRecords(labelled, skipped, list(invalid))
        return self._splits[name]

    def splits(self, *names: str) -> SplitRecords:
        """The union of splits (by image_id, first occurrence wins)."""
        seen: set[str] = set()

        def first(image_id: str) -> bool:
            new = image_id not in seen
            seen.add(image_id)
            return new

        out = SplitRecords([])
        for name in dict.fromkeys(names):
            part = self.split(name)
            out.records += [r for r in part.records if first(r.image_id)]
            out.skipped += [e for e in part.skipped if first(e[0])]
            out.failed += [e for e in part.failed if first(e[0])]
        return out

    def marker(self, stage: str) -> Optional[dict[str, Any]]:
        location = self.layout.marker(stage)
        return json.loads(read_bytes(location)) if exists(location) else None

    def check_model(self, kind: str, made_by: str) -> None:
        """Fail before any cluster work when a stage's model is missing or does not fit."""
        from ray_wsis.models.checkpoints import CheckpointError, check_header, read_checkpoint

        location = self.layout.model(kind)
        record = fingerprint(location)
        if record is not None:
            header = record["header"]
            check_header(header, kind, self.config.model.backbone, location.uri)
        elif exists(location):
            header = read_checkpoint(read_bytes(location), kind, self.config.model.backbone, location.uri)
        else:
            raise CheckpointError(f"{location.uri} is missing: run {made_by} first")
        if header["num_classes"] != self.num_classes:
            raise CheckpointError(f"{location.uri} has {header['num_classes']} classes, the dataset {self.num_classes}")

    def model_id(self, kind: str) -> str:
        """sha256 prefix of a model file, recorded in the Parquet metadata of what it made."""
        return model_digest(self.layout.model(kind))

    def parquet_metadata(self, *models: str) -> dict[str, str]:
        meta = {
            "ray_wsis.version": __version__,
            "ray_wsis.config_hash": self.config.hash(),
            "ray_wsis.method": self.config.method,
        }
        for kind in models:
            meta[f"ray_wsis.checkpoint.{kind}"] = self.model_id(kind)
        return meta


def relation_net_stage(method: str) -> str:
    """The stage that trains the method's relation network: irn's train_irn, or AffinityNet's."""
    return "train-irn" if method == "irnet" else "train-affinitynet"


def preflight(ctx: StageContext, stages: list[str]) -> None:
    """Check, before Ray starts, every model file a stage will read but no earlier stage makes."""
    method_model = ctx.config.method
    trainer = relation_net_stage(method_model)
    uses_classifier = ctx.config.method == "affinitynet" or ctx.config.irn.backbone_init == "classifier"
    consumes: dict[str, list[str]] = {
        "make-cams": ["cam"],
        trainer: ["cam"] if uses_classifier else [],
        "make-pseudo-labels": [method_model],
    }
    makers = {"cam": "train-cam", method_model: trainer}
    produced: set[str] = set()
    for stage in stages:
        for kind in consumes.get(stage, []):
            if kind not in produced:
                ctx.check_model(kind, makers[kind])
        if stage == "train-cam":
            produced.add("cam")
        if stage == trainer:
            produced.add(method_model)


def init_ray(config: Config, verbose: bool = False) -> None:
    """Connect to ray.address / RAY_ADDRESS, else start a local Ray sized by ray.num_cpus.

    Inside a Ray job RAY_ADDRESS is set; we pass no runtime_env so the job's own env is kept.
    Ray is imported here, not at the top: commands that only plan or read never import it.
    """
    import ray

    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS", "")
    # Workers' own output (Ray Train's per-report lines, Ray Data's internals) stays in Ray's
    # session logs unless --verbose; our progress reaches the driver through pipeline/progress.py.
    if address:
        ray.init(address=address, log_to_driver=verbose)
    else:
        cpus = config.ray.num_cpus or os.cpu_count() or 1
        check_cpu_room(config, cpus)
        # No dashboard on a local run (4 s less start-up on 2 cores); the hook quiets the one
        # warning that Ray Train then repeats every second (its state API lives in the dashboard).
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=verbose,
            runtime_env={"worker_process_setup_hook": "ray_wsis.pipeline.context.quiet_local_workers"},
        )
    context = ray.data.DataContext.get_current()
    # Ray's own dataset bars (and their "execution finished" lines) only with --verbose: our
    # progress line (pipeline/progress.py) shows the stage, images done, images/s and the ETA.
    context.enable_progress_bars = config.ray.progress_bars and verbose
    context.enable_operator_progress_bars = False  # one bar per stage execution, not one per operator
    context.print_on_execution_start = False


def quiet_local_workers() -> None:
    """Worker setup hook of a local Ray started without its dashboard.

    Ray Train's placement-group cleaner polls the state API, which lives in the dashboard, and
    logs "Failed to query Ray Train Controller actor state" each second of a training run. A
    local Ray ends with its driver, placement groups included, so nothing is left to clean.
    """
    import logging

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def check_cpu_room(config: Config, cpus: float) -> None:
    """Refuse a local Ray where the actor pool or the training workers hold every logical CPU.

    Then Ray Data cannot schedule the decode tasks that feed them and the stage hangs without an
    error (found by bench/scaling.py for actors and by the job-submit test for a trainer)."""
    r = config.ray
    for keys, held in (
        (("ray.inference_actors", "ray.cpus_per_actor"), r.inference_actors * r.cpus_per_actor),
        (("ray.num_workers", "ray.cpus_per_worker"), r.num_workers * r.cpus_per_worker),
    ):
        if held >= cpus:
            raise ConfigError(
                f"{keys[0]} x {keys[1]} = {held:g} would hold all {cpus:g} CPUs of the local Ray "
                f"and leave none for decoding (the stage would hang): raise ray.num_cpus "
                f"(logical CPUs may exceed cores) or lower them"
            )


def check_output(config: Config) -> None:
    """Fail fast (seconds, no traceback) on unreachable storage or refused credentials."""
    location = Layout.of(config).root
    try:
        check_access(location, config.storage, create=True)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot use output {config.output}: {exc}") from None
