"""make-affinity-labels: psa's relation labels for AffinityNet (psa infer_cls.py la/ha CRFs).

CPU tasks, the same as make-ir-labels' (stages/relation_labels.py): per training image the
CAMs are upsampled, stacked with a background plane (1 - max CAM)^alpha at a low and a high
power, each stack refined by a dense CRF, and combined into confident foreground, confident
background and ignore (method/affinity_labels.py). Used with ``method: affinitynet`` and ``affinity.labels: psa``.
"""

from __future__ import annotations

from typing import Any

from ray_wsis.stages.base import StageRun
from ray_wsis.stages.relation_labels import label_stage


def make_affinity_labels(run: StageRun) -> dict[str, Any]:
    return label_stage(run, run.layout.affinity_labels, "psa")
