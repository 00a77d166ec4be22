"""Ray Train: a 2-worker TorchTrainer (DDP over gloo) trains the classifier and checkpoints."""

from __future__ import annotations

import os

import pytest
import torch

from ray_wsis.models.checkpoints import model_from_checkpoint
from ray_wsis.pipeline.context import StageContext
from ray_wsis.pipeline.training import latest_checkpoint_epoch
from tests.pipeline_helpers import make_tiny_voc, run_stages, start_local_ray, tiny_config

pytestmark = pytest.mark.slow


def test_two_worker_trainer_checkpoints_every_epoch(tmp_path):
    data = make_tiny_voc(tmp_path / "voc")
    config = tiny_config(data, str(tmp_path / "out"), "ray.num_workers=2", "cam.epochs=2", "ray.cpus_per_worker=0.5")
    start_local_ray()
    ctx = StageContext(config, log=lambda _m: None)
    summary = run_stages(config, "train-cam")["train-cam"]
    assert summary["epochs"] == 2
    assert latest_checkpoint_epoch(ctx, "cam") == 1
    with open(os.path.join(config.output, "models", "cam.pt"), "rb") as f:
        model, payload = model_from_checkpoint(f.read(), "cam", "resnet18")
    assert payload["meta"]["epochs"] == 2
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 20)
