"""bench/ablation.py drives the real pipeline (`ray-wsis run`) and reports one JSON row per call.

The pipeline itself is replaced here by a stand-in that writes what a run leaves (stage markers,
metrics.json): what is checked is the command, the row's shape, and which stages count as run.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ray_wsis.config import load_config
from ray_wsis.stages import registry

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo.yaml")

METRICS: dict[str, Any] = {
    "cam_miou": 40.123,
    "ir_label_precision": 97.8,
    "ir_label_coverage": 71.4,
    "sem_miou": 66.25,
    "ins_map25": 40.0,
    "ins_map50": 33.9,
    "ins_map70": 20.0,
    "ins_map75": 15.0,
    "sem_miou_at_reference": 64.0,
    "ins_map50_at_reference": None,
    "sem_miou_by_threshold": {"0.25": 64.0, "0.30": 66.254},
    "ins_map50_by_threshold": {"0.25": None, "0.30": 33.9},
    "calibrated": {"mode": "label-free", "semantic": {"default": 0.3}, "instance": {"default": 0.35}, "images": 8},
    "images": {"split": "train", "scored": 8},
}


def _ablation() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_ablation", ROOT / "bench" / "ablation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_row_is_one_ray_wsis_run(monkeypatch):
    ablation = _ablation()
    seen: list[list[str]] = []

    class Done:
        returncode, stdout = 0, ""

    monkeypatch.setattr(ablation.subprocess, "run", lambda command, **_: seen.append(command) or Done())
    ablation.run_pipeline("configs/demo.yaml", ["irn.radius=3", "output=./out/x"], quiet=True)
    assert seen == [
        [sys.executable, "-m", "ray_wsis", "run", "--config", "configs/demo.yaml"]
        + ["--set", "irn.radius=3", "--set", "output=./out/x"]
    ]


def test_a_row_reports_the_metrics_and_the_stages_that_ran(tmp_path, monkeypatch, capsys):
    ablation = _ablation()
    (tmp_path / "voc" / "JPEGImages").mkdir(parents=True)  # a dataset is there: none is generated
    output = tmp_path / "out"
    data = f"dataset.root={tmp_path / 'voc'}"
    names = [s.name for s in registry.pipeline(load_config(CONFIG, [data]))]
    downstream_of_irn = names[names.index("train-irn") :]
    calls: list[list[str]] = []

    def pipeline(config_path: str, overrides: list[str], quiet: bool) -> None:
        calls.append(overrides)
        (output / "stages").mkdir(parents=True, exist_ok=True)
        for name in names if len(calls) == 1 else downstream_of_irn:
            marker = {"stage": name, "seconds": 1.26, "run": len(calls)}
            (output / "stages" / f"{name}.json").write_text(json.dumps(marker))
        (output / "metrics.json").write_text(json.dumps(METRICS))

    monkeypatch.setattr(ablation, "run_pipeline", pipeline)
    argv = ["--config", CONFIG, "--output", str(output), "--set", data, "--quiet"]
    first = ablation.main(argv)
    assert calls[0] == [data, f"output={output}"]
    assert first["seconds"] == {name.replace("-", "_"): 1.3 for name in names} and first["reused"] == []
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == first

    second = ablation.main([*argv, "--set", "irn.radius=3"])
    assert calls[1] == [data, "irn.radius=3", f"output={output}"]
    assert second["overrides"] == [data, "irn.radius=3"]
    assert set(second["seconds"]) == {name.replace("-", "_") for name in downstream_of_irn}
    assert second["reused"] == [name.replace("-", "_") for name in names[: names.index("train-irn")]]
    assert second["cam_miou"] == 40.12 and second["sem_miou_by_threshold"] == {"0.25": 64.0, "0.30": 66.25}
    assert "ins_map50_at_reference" not in second and second["ins_map50_by_threshold"] == {"0.30": 33.9}
    assert second["thresholds"] == {"mode": "label-free", "semantic": {"default": 0.3}, "instance": {"default": 0.35}}
    assert second["images"] == 8 and second["output"] == str(output)
