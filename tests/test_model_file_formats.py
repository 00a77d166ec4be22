"""One writer and one reader of model files (models/checkpoints.py) for the pipeline's networks and
the downstream models: the same weights-only plain dict, two formats that refuse each other."""

from __future__ import annotations

import io

import pytest
import torch

from ray_wsis.downstream.models import FORMAT as DOWNSTREAM_FORMAT
from ray_wsis.downstream.models import ModelSpec, build, load_model, model_bytes
from ray_wsis.models.checkpoints import FORMAT, CheckpointError, build_model, checkpoint_bytes, read_checkpoint

SPEC = ModelSpec("deeplab", "resnet18", 4, 64)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    meta = {"epochs": 2, "note": "x", "dropped": [1, 2]}
    return {
        "cam": checkpoint_bytes(build_model("cam", "resnet18", 3), "cam", "resnet18", 3, meta),
        "deeplab": model_bytes(build(SPEC), SPEC, meta),
    }


def _payload(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def test_both_files_are_the_same_plain_dict(files):
    headers = {
        "cam": (FORMAT, {"kind": "cam", "arch": "resnet18", "num_classes": 3}),
        "deeplab": (DOWNSTREAM_FORMAT, SPEC.header()),
    }
    for name, data in files.items():
        file_format, header = headers[name]
        payload = _payload(data)
        assert set(payload) == {"format", "meta", "state_dict", *header}
        assert payload["format"] == file_format
        assert {k: payload[k] for k in header} == header
        assert payload["meta"] == {"epochs": 2, "note": "x"}  # plain values only
        tensors = payload["state_dict"].values()
        assert tensors and all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tensors)


def test_each_reader_refuses_the_other_format(files):
    with pytest.raises(CheckpointError, match="cam.pt is not a ray_wsis downstream model file"):
        load_model(files["cam"], "deeplab", "cam.pt")
    with pytest.raises(CheckpointError, match="deeplab.pt is not a ray_wsis model file"):
        read_checkpoint(files["deeplab"], "cam", source="deeplab.pt")


def test_the_downstream_reader_checks_kind_fit_and_bytes(files):
    model, payload = load_model(files["deeplab"], "deeplab")
    assert payload["num_classes"] == 4 and isinstance(model, torch.nn.Module)
    with pytest.raises(CheckpointError, match="holds a deeplab model, expected maskrcnn"):
        load_model(files["deeplab"], "maskrcnn")
    short = _payload(files["deeplab"])
    short["state_dict"].pop(next(iter(short["state_dict"])))
    buffer = io.BytesIO()
    torch.save(short, buffer)
    with pytest.raises(CheckpointError, match=r"short.pt \(deeplab/resnet18\) does not fit"):
        load_model(buffer.getvalue(), "deeplab", "short.pt")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model(files["deeplab"][: len(files["deeplab"]) // 2], "deeplab")
