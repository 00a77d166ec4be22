"""Where each stage writes under the output URI (documented in the README)."""

from __future__ import annotations

from dataclasses import dataclass

from ray_wsis.config import Config
from ray_wsis.storage import Location, resolve


@dataclass(frozen=True)
class Layout:
    """<output>/
    checkpoints/<run>-cam, <run>-irn   Ray Train runs (resume by re-running)
    models/cam.pt, models/irnet.pt     final weights (weights-only torch files)
    cams/part-*.parquet                stride-4 float16 CAMs of present classes
    ir_labels/part-*.parquet           relation labels (PNG)
    affinity_labels/part-*.parquet     psa's relation labels for AffinityNet (PNG)
    pseudo_labels/part-*.parquet       the product: semantic PNG + instance RLEs
    scores/part-*.parquet              the walked maps the labels are cut from
    errors/<stage>/part-*.parquet      image_id, stage, kind, reason
    stages/<stage>.json                completion marker with the stage summary
    calibration.json                   the chosen background thresholds (calibrate)
    metrics.json                       evaluation
    review/pushed.json                 what `review push` sent to Label Studio (tasks, image ids)
    review/human_labels.parquet        the reviewers' masks `review pull` fetched (data/reviewed.py)
    """

    root: Location

    @classmethod
    def of(cls, config: Config) -> Layout:
        return cls(resolve(config.output, config.storage))

    @property
    def checkpoints(self) -> Location:
        return self.root.child("checkpoints")

    def model(self, kind: str) -> Location:
        return self.root.child("models", f"{kind}.pt")

    @property
    def cams(self) -> Location:
        return self.root.child("cams")

    @property
    def ir_labels(self) -> Location:
        return self.root.child("ir_labels")

    @property
    def affinity_labels(self) -> Location:
        return self.root.child("affinity_labels")

    @property
    def pseudo_labels(self) -> Location:
        return self.root.child("pseudo_labels")

    @property
    def scores(self) -> Location:
        return self.root.child("scores")

    def errors(self, stage: str) -> Location:
        return self.root.child("errors", stage)

    def marker(self, stage: str) -> Location:
        return self.root.child("stages", f"{stage}.json")

    @property
    def calibration(self) -> Location:
        return self.root.child("calibration.json")

    @property
    def metrics(self) -> Location:
        return self.root.child("metrics.json")

    @property
    def review(self) -> Location:
        return self.root.child("review")

    @property
    def review_pushed(self) -> Location:
        return self.root.child("review", "pushed.json")

    @property
    def human_labels(self) -> Location:
        return self.root.child("review", "human_labels.parquet")
