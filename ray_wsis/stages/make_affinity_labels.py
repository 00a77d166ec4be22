"""make-affinity-labels: psa's relation labels for AffinityNet (psa infer_cls.py la/ha CRFs).

CPU tasks, as make-ir-labels: per training image the CAMs are upsampled, stacked with a
background plane (1 - max CAM)^alpha at a low and a high power, each stack refined by a dense
CRF, and combined into confident foreground, confident background and ignore
(method/affinity_labels.py). Used with ``method: affinitynet`` and ``affinity.labels: psa``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray_wsis.config import Config
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.layout import Layout
from ray_wsis.stages.base import Stage, StageRun
from ray_wsis.stages.make_ir_labels import label_stage
from ray_wsis.storage import Location


def make_affinity_labels(run: StageRun) -> dict[str, Any]:
    return label_stage(run, run.layout.affinity_labels, "psa")


def _outputs(layout: Layout, config: Config) -> tuple[Location, ...]:
    return layout.affinity_labels, layout.errors("make-affinity-labels")


def _inputs(ctx: StageContext) -> Sequence[str]:
    return [r.image_id for r in ctx.split(ctx.config.dataset.train_split).records]


STAGE = Stage(
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
    body=make_affinity_labels,
    outputs=_outputs,
    inputs=_inputs,
)
