"""The one-screen summary of metrics.json that `run`, `demo` and `status` print (no Ray, no torch)."""

from __future__ import annotations

from typing import Any, Optional


def metrics_table(metrics: dict[str, Any]) -> str:
    """The one-screen table `run`, `demo` and `status` end with: shipped labels beside the threshold
    sweep (metrics.json's keys)."""

    def show(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:6.1f}"

    lines = [f"{'':<28}{'mIoU':>8}{'mAP50':>8}"]
    lines.append(f"{'CAM (cam.eval_threshold)':<28}{show(metrics.get('cam_miou')):>8}{'':>8}")
    sem_ref, ins_ref = metrics.get("sem_miou_at_reference"), metrics.get("ins_map50_at_reference")
    reference = (metrics.get("reference") or {}).get("semantic", {})
    name = (
        "walk, psa's background"
        if reference.get("plane") == "walked"
        else f"walk at {reference.get('default', 0.25):.2f} (reference)"
    )
    lines.append(f"{name:<28}{show(sem_ref):>8}{show(ins_ref):>8}")
    calibrated = metrics.get("calibrated")
    label = f"walk calibrated ({calibrated['mode']})" if calibrated else "walk as shipped"
    lines.append(f"{label:<28}{show(metrics.get('sem_miou')):>8}{show(metrics.get('ins_map50')):>8}")
    oracle = metrics.get("oracle") or {}
    sem_o, ins_o = oracle.get("semantic"), oracle.get("instance")
    lines.append(
        f"{'oracle (best with masks)':<28}{show(sem_o and sem_o['value']):>8}{show(ins_o and ins_o['value']):>8}"
    )
    if calibrated:
        lines.append(
            f"thresholds: calibrated semantic {calibrated['semantic']['default']:.2f} / instance "
            f"{calibrated['instance']['default']:.2f}; oracle "
            f"{sem_o['threshold'] if sem_o else '-'} / {ins_o['threshold'] if ins_o else '-'}"
        )
    lines.append(
        f"relation labels: {show(metrics.get('ir_label_precision')).strip()}% precise, "
        f"{show(metrics.get('ir_label_coverage')).strip()}% of pixels labelled"
    )
    return "\n".join(lines)
