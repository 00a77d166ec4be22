"""Training's autocast is models/precision.py's: bfloat16 on CUDA under model.amp, float32 on the CPU."""

from __future__ import annotations

import contextlib
import warnings

import torch

from ray_wsis.train.loops import classifier_step, training_autocast


def test_the_cpu_trains_in_float32_with_or_without_amp():
    layer = torch.nn.Linear(4, 3)
    for amp in (False, True):
        assert isinstance(training_autocast(torch.device("cpu"), amp), contextlib.nullcontext)
        with training_autocast(torch.device("cpu"), amp):
            assert not torch.is_autocast_enabled("cpu")
            assert layer(torch.zeros(2, 4)).dtype == torch.float32


def test_cuda_autocasts_to_bfloat16_only_under_amp():
    cuda = torch.device("cuda")
    assert isinstance(training_autocast(cuda, False), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without a GPU torch warns and builds it disabled; the request is what counts
        autocast = training_autocast(cuda, True)
    assert isinstance(autocast, torch.autocast)
    assert autocast.device == "cuda" and autocast.fast_dtype == torch.bfloat16


def test_a_cpu_step_under_amp_computes_its_loss_in_float32():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    batch = {"image": torch.rand(2, 3, 4, 4), "target": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    loss = classifier_step(model, batch, amp=True)["loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
