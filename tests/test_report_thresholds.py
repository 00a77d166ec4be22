"""The report's thresholds section: the thresholds used, the criterion curve and the sweep (issue 25)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ray_wsis.visualize.report import bar_chart, calibration_chart, calibration_section

CANDIDATES = ["0.05", "0.15", "0.25", "0.35", "0.45", "0.55"]

CALIBRATION = {
    "mode": "label-free",
    "images": 240,
    "semantic": {
        "threshold": {"default": 0.45, "per_class": {}},
        "criterion": "mean over images of Otsu's between-class share",
        "values": dict(zip(CANDIDATES, [0.1, 0.2, 0.3, 0.4, 0.5, 0.45])),
    },
    "instance": {
        "threshold": {"default": 0.35, "per_class": {}},
        "criterion": "steepest contour",
        "values": dict(zip(CANDIDATES, [0.3, 0.2, 0.25, 0.5, 0.4, 0.1])),
    },
}

METRICS = {
    "sem_miou_by_threshold": dict(zip(CANDIDATES, [40.0, 50.0, 58.6, 61.7, 60.4, 55.0])),
    "ins_map50_by_threshold": dict(zip(CANDIDATES, [20.0, 25.0, 29.3, 29.8, 27.7, None])),
    "oracle": {"semantic": {"threshold": 0.35, "value": 61.7}, "instance": {"threshold": 0.35, "value": 29.8}},
}


def test_the_section_names_the_thresholds_used_and_the_oracle() -> None:
    section = calibration_section(CALIBRATION, METRICS, "charts/calibration.png")
    assert "label-free" in section and "240 images" in section
    assert ">0.45<" in section and ">0.35<" in section  # semantic and instance thresholds used
    assert "0.35 (61.7)" in section and "0.35 (29.8)" in section  # the oracle beside them
    assert "steepest contour" in section and 'src="charts/calibration.png"' in section
    assert "calibrate has not run" in calibration_section(None, None, None)


def test_the_curve_is_drawn_with_and_without_ground_truth(tmp_path: Path) -> None:
    assert calibration_chart(CALIBRATION, METRICS, tmp_path / "with.png")
    assert calibration_chart(CALIBRATION, None, tmp_path / "without.png")
    assert Image.open(tmp_path / "with.png").size[0] > 600
    off = {"mode": "off", "semantic": {"threshold": {"default": 0.25}}, "instance": {"threshold": {"default": 0.25}}}
    assert not calibration_chart(off, METRICS, tmp_path / "off.png")
    assert "off" in calibration_section(off, None, None)


def test_charts_leave_out_classes_without_values(tmp_path: Path, monkeypatch) -> None:
    shown: list[list[str]] = []
    from matplotlib.axes import Axes

    real = Axes.set_xticks

    def record(self, ticks, labels=None, **kwargs):  # type: ignore[no-untyped-def]
        shown.append(list(labels or []))
        return real(self, ticks, labels, **kwargs)

    monkeypatch.setattr(Axes, "set_xticks", record)
    nan = np.nan
    values = np.array([50.0, nan, 30.0, nan])
    assert bar_chart(tmp_path / "c.png", ["a", "b", "c", "d"], [("x", values)], "t", "y")
    assert shown == [["a", "c"]]
