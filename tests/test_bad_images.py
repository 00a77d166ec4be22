"""Odd and broken inputs through make-cams: each is processed correctly or recorded with a reason."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.sink import read_table
from tests.pipeline_helpers import make_tiny_voc, run_stages, start_local_ray, tiny_config
from tests.test_reliability import _untrained_models

pytestmark = pytest.mark.slow


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _odd_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    sixteen = Image.fromarray((rng.integers(0, 65535, (30, 50))).astype(np.uint16))
    valid = _jpeg(rgb)
    return {
        "bad_empty": b"",
        "bad_truncated": valid[: len(valid) // 2],
        "bad_text": b"this is not an image at all\n" * 20,
        "odd_gray": _jpeg(rgb.convert("L")),
        "odd_rgba": _png(rgb.convert("RGBA")),
        "odd_cmyk": _jpeg(rgb.convert("CMYK")),
        "odd_png16": _png(sixteen),
        "odd_exif": _jpeg(rgb, exif=exif),
        "odd_tiny": _jpeg(Image.new("RGB", (1, 1), (200, 10, 10))),
        "odd_huge": _jpeg(Image.new("RGB", (6000, 4000), (30, 120, 200)), quality=50),
        "bad_unknown_class": valid,
        "bad_no_labels": valid,
    }


def _xml(name: str, objects: list[str]) -> str:
    parts = "".join(f"<object><name>{o}</name><difficult>0</difficult></object>" for o in objects)
    return f"<annotation><filename>{name}.jpg</filename>{parts}</annotation>"


def test_odd_and_broken_images_are_processed_or_recorded(tmp_path, capsys):
    import ray

    from ray_wsis.stages.run import summary_table

    root = make_tiny_voc(tmp_path / "voc", n_train=4, n_val=0)
    files = _odd_files()
    for name, data in files.items():
        with open(os.path.join(root, "JPEGImages", f"{name}.jpg"), "wb") as f:
            f.write(data)
        objects = {"bad_unknown_class": ["unicorn"], "bad_no_labels": []}.get(name, ["bird"])
        with open(os.path.join(root, "Annotations", f"{name}.xml"), "w") as f:
            f.write(_xml(name, objects))
    with open(os.path.join(root, "ImageSets", "Segmentation", "train.txt"), "a") as f:
        f.write("\n".join(files) + "\n")
    config = tiny_config(root, str(tmp_path / "out"), "dataset.max_long_side=256")
    _untrained_models(config.output)
    ray.shutdown()
    start_local_ray()
    ctx = StageContext(config, log=lambda _m: None)
    summary = run_stages(config, "make-cams")["make-cams"]

    total = 4 + len(files)
    assert summary["input"] == total
    assert summary["processed"] + summary["kept"] + summary["skipped"] + summary["failed"] == total
    errors = {row["image_id"]: row for row in read_table(ctx.layout.errors("make-cams")).to_pylist()}
    # an XML without objects is an image without classes: processed (a negative), not an error
    assert set(errors) == {"bad_empty", "bad_truncated", "bad_text", "bad_unknown_class"}
    assert "empty" in errors["bad_empty"]["reason"]
    assert "truncated" in errors["bad_truncated"]["reason"] or "corrupt" in errors["bad_truncated"]["reason"]
    assert "not an image" in errors["bad_text"]["reason"]
    assert "unicorn" in errors["bad_unknown_class"]["reason"]
    assert summary == {**summary, "skipped": 0, "failed": 4, "processed": total - 4}

    cams = {row["image_id"]: row for row in read_table(ctx.layout.cams).to_pylist()}
    assert cams["bad_no_labels"]["labels"] == [] and cams["bad_no_labels"]["cam"] == b""
    assert (cams["odd_exif"]["height"], cams["odd_exif"]["width"]) == (60, 40)  # EXIF rotation applied
    assert (cams["odd_huge"]["height"], cams["odd_huge"]["width"]) == (4000, 6000)  # original size kept
    assert (cams["odd_huge"]["cam_height"], cams["odd_huge"]["cam_width"]) == (43, 64)  # processed at 256 long side
    assert (cams["odd_tiny"]["cam_height"], cams["odd_tiny"]["cam_width"]) == (1, 1)
    for name in ("odd_gray", "odd_rgba", "odd_cmyk", "odd_png16"):
        assert cams[name]["cam_height"] > 0

    print(summary_table({"make-cams": summary}, config.output))
    printed = capsys.readouterr().out
    assert "make-cams" in printed and f"{total}" in printed
    ray.shutdown()


def test_images_without_classes_are_skipped_when_asked(tmp_path):
    """dataset.images_without_classes: skip records them as skipped, with the reason."""
    root = make_tiny_voc(tmp_path / "voc", n_train=2, n_val=0)
    with open(os.path.join(root, "Annotations", "syn_000001.xml"), "w") as f:
        f.write(_xml("syn_000001", []))
    used = StageContext(tiny_config(root, str(tmp_path / "out"))).split("train")
    assert [r.image_id for r in used.records] == ["syn_000001", "syn_000002"] and not used.skipped
    config = tiny_config(root, str(tmp_path / "out"), "dataset.images_without_classes=skip")
    skipped = StageContext(config).split("train")
    assert [r.image_id for r in skipped.records] == ["syn_000002"]
    assert skipped.skipped == [("syn_000001", "no image-level labels")]
