"""Ablations of the method on the real pipeline: one `ray-wsis run` per row, its settings by --set.

    python bench/ablation.py --config configs/demo.yaml --set irn.train_backbone=false ...

Each call runs `ray-wsis run` (a subprocess: the stages on a local Ray with the config's ray.*
settings) into --output and prints one JSON object: the settings changed, CAM / relation-label /
semantic / instance quality and the threshold sweeps from the output's metrics.json (evaluate's
split), the thresholds the labels were cut at, and the seconds of each stage that ran.

Rows that share an --output reuse whatever their settings leave valid, as any run does (the
stages' markers decide): a row that changes only irn.* keeps the classifier, the CAMs and the
relation labels of the row before it. ``--fresh`` starts the output empty. Pictures of a row:
``ray-wsis visualize --labels <output> --out <folder>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from typing import Any, Optional

from ray_wsis.config import Config, load_config
from ray_wsis.data.synthetic import make_synthetic_voc
from ray_wsis.pipeline.layout import Layout
from ray_wsis.stages import registry
from ray_wsis.storage import Location, exists, is_remote, read_bytes
from ray_wsis.visualize.report import METRIC_KEYS

QUALITY = (*METRIC_KEYS, "sem_miou_at_reference", "ins_map50_at_reference")
"""The scalar metrics of metrics.json a row reports."""

CURVES = ("sem_miou_by_threshold", "ins_map50_by_threshold", "cam_miou_by_threshold")


def _json(location: Location) -> Optional[dict[str, Any]]:
    return json.loads(read_bytes(location)) if exists(location) else None


def markers(config: Config) -> dict[str, Optional[dict[str, Any]]]:
    """Stage name -> its marker in the output (None for a stage without one)."""
    layout = Layout.of(config)
    return {stage.name: _json(layout.marker(stage.name)) for stage in registry.pipeline(config)}


def stage_seconds(
    before: dict[str, Optional[dict[str, Any]]], after: dict[str, Optional[dict[str, Any]]]
) -> tuple[dict[str, float], list[str]]:
    """Seconds of each stage whose marker this run wrote, and the stages it reused as they were."""
    seconds: dict[str, float] = {}
    reused: list[str] = []
    for name, marker in after.items():
        key = name.replace("-", "_")
        if marker is None:
            continue
        if marker != before.get(name):
            seconds[key] = round(float(marker.get("seconds", 0.0)), 1)
        else:
            reused.append(key)
    return seconds, reused


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items() if v is not None}
    return value


def row(
    overrides: list[str], config: Config, metrics: dict[str, Any], seconds: dict[str, float], reused: list[str]
) -> dict[str, Any]:
    """The JSON object of one ablation row."""
    calibrated = metrics.get("calibrated")
    return {
        "overrides": overrides,
        **{k: _rounded(metrics[k]) for k in QUALITY if metrics.get(k) is not None},
        **{k: _rounded(metrics[k]) for k in CURVES if metrics.get(k)},
        "thresholds": {
            "mode": calibrated["mode"] if calibrated else "off",
            "semantic": (calibrated or {}).get("semantic"),
            "instance": (calibrated or {}).get("instance"),
        },
        "seconds": seconds,
        "reused": reused,
        "images": (metrics.get("images") or {}).get("scored"),
        "cpus": config.ray.num_cpus,
        "output": config.output,
    }


def run_pipeline(config_path: str, overrides: list[str], quiet: bool) -> None:
    """`ray-wsis run` in a subprocess; its table and logs go to stderr (stdout is this script's JSON)."""
    command = [sys.executable, "-m", "ray_wsis", "run", "--config", config_path]
    for item in overrides:
        command += ["--set", item]
    done = subprocess.run(
        command,
        stdout=subprocess.PIPE if quiet else sys.stderr,
        stderr=subprocess.STDOUT if quiet else None,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stdout or "")[-4000:]
        raise SystemExit(f"ray-wsis run failed ({done.returncode}): {' '.join(command)}\n{tail}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--output", default="./out/ablation", help="the runs' output (shared by rows that reuse)")
    parser.add_argument("--fresh", action="store_true", help="delete --output first: every stage runs")
    parser.add_argument("--quiet", action="store_true", help="no stage logs (shown on failure)")
    args = parser.parse_args(argv)
    overrides = [*args.overrides, f"output={args.output}"]
    config = load_config(args.config, overrides)  # fail on a bad --set before anything runs
    if args.fresh and not is_remote(config.output) and os.path.isdir(config.output):
        shutil.rmtree(config.output)
    root = config.dataset.root
    if not is_remote(root) and not os.path.isdir(os.path.join(root, "JPEGImages")):
        make_synthetic_voc(root)
    before = markers(config)
    run_pipeline(args.config, overrides, args.quiet)
    metrics = _json(Layout.of(config).metrics)
    if metrics is None:
        raise SystemExit(f"no metrics.json in {config.output}: the run evaluated nothing (no ground truth?)")
    seconds, reused = stage_seconds(before, markers(config))
    result = row(args.overrides, config, metrics, seconds, reused)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
