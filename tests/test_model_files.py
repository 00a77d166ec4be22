"""Model files and their fingerprints: the driver checks and names a model without reading it whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ray_wsis.models.checkpoints import CheckpointError, build_model, checkpoint_bytes
from ray_wsis.pipeline import model_files
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.model_files import digest, fingerprint, fingerprint_location, model_digest, write_model
from ray_wsis.storage import StorageError, read_bytes, resolve, stat, write_bytes_atomic
from tests.pipeline_helpers import make_tiny_voc, tiny_config


def _cam_file(num_classes: int = 20, arch: str = "resnet18") -> bytes:
    return checkpoint_bytes(build_model("cam", arch, num_classes), "cam", arch, num_classes)


def _header(num_classes: int = 20, arch: str = "resnet18") -> dict:
    return {"kind": "cam", "arch": arch, "num_classes": num_classes}


def _no_whole_reads(monkeypatch, model_path: str) -> None:
    """Reading the model file itself fails from here on: only its fingerprint may be read."""

    def guarded(location):
        if location.path == model_path:
            raise AssertionError(f"{model_path} was read whole")
        return read_bytes(location)

    monkeypatch.setattr(model_files, "read_bytes", guarded)
    monkeypatch.setattr("ray_wsis.pipeline.context.read_bytes", guarded)


def test_a_fingerprinted_model_is_named_without_reading_it(tmp_path, monkeypatch):
    location = resolve(str(tmp_path / "models" / "cam.pt"))
    data = _cam_file()
    write_model(location, data, _header())
    assert fingerprint(location)["header"] == _header()
    _no_whole_reads(monkeypatch, location.path)
    assert model_digest(location) == digest(data)


def test_a_model_replaced_by_hand_is_read_whole_again(tmp_path):
    location = resolve(str(tmp_path / "cam.pt"))
    write_model(location, _cam_file(), _header())
    replacement = _cam_file()  # same architecture: same size, other weights
    write_bytes_atomic(location, replacement)
    os.utime(location.path, ns=(1, 1))  # another modification time, whatever the clock's resolution
    assert fingerprint(location) is None
    assert model_digest(location) == digest(replacement)
    assert model_digest(resolve(str(tmp_path / "absent.pt"))) == ""


def test_a_broken_fingerprint_is_ignored(tmp_path):
    location = resolve(str(tmp_path / "cam.pt"))
    data = _cam_file()
    write_model(location, data, _header())
    write_bytes_atomic(fingerprint_location(location), b"{not json")
    assert fingerprint(location) is None and model_digest(location) == digest(data)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (_header(arch="resnet50"), "trained with backbone resnet50, but model.backbone is resnet18"),
        (_header(num_classes=7), "has 7 classes, the dataset 20"),
    ],
)
def test_check_model_reads_the_fingerprint_header(tmp_path: Path, monkeypatch, header, message):
    config = tiny_config(make_tiny_voc(tmp_path / "voc"), str(tmp_path / "out"))
    ctx = StageContext(config)
    location = ctx.layout.model("cam")
    write_model(location, _cam_file(), _header())
    _no_whole_reads(monkeypatch, location.path)
    ctx.check_model("cam", "train-cam")  # fits: decided from the fingerprint alone
    write_model(location, _cam_file(), header)  # a model of another shape, as its fingerprint says
    with pytest.raises(CheckpointError, match=message):
        ctx.check_model("cam", "train-cam")
    with pytest.raises(StorageError, match="missing file"):
        stat(resolve(str(tmp_path / "nowhere.pt")))
