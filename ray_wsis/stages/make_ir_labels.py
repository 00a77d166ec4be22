"""make-ir-labels: inter-pixel relation labels from the CAMs (irn step/cam_to_ir_label.py).

CPU tasks: per training image the CAMs are upsampled, thresholded twice against a constant
background plane (or per-image quantiles, ``ir_label.threshold_mode``), each refined by a
dense CRF, and combined into confident foreground, confident background and ignore (255)
(method/ir_labels.py). The task and the body are shared with make-affinity-labels
(stages/relation_labels.py). This module imports no torch.
"""

from __future__ import annotations

from typing import Any

from ray_wsis.stages.base import StageRun
from ray_wsis.stages.relation_labels import label_stage


def make_ir_labels(run: StageRun) -> dict[str, Any]:
    return label_stage(run, run.layout.ir_labels, "irn")
