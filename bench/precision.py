"""ResNet-50 forward in float32 (NCHW, channels-last) and bfloat16 autocast (channels-last) on one thread.

Says whether this CPU computes bfloat16 fast enough for `model.precision: auto` to pick it (it picks it
where the CPU reports AVX-512 BF16 or AMX). Two 384x512 images, random weights, second call timed.

    python bench/precision.py

Prints one JSON object as its last line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine  # noqa: E402
from ray_wsis.models.backbone import Backbone  # noqa: E402
from ray_wsis.models.precision import cpu_has_native_bfloat16  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Backbone("resnet50").eval()
    x = torch.randn(2, 3, 384, 512)
    out: dict[str, object] = {"native_bfloat16": cpu_has_native_bfloat16()}
    reference = None
    for name, layout, dtype in (
        ("float32_nchw", torch.contiguous_format, torch.float32),
        ("float32_channels_last", torch.channels_last, torch.float32),
        ("bfloat16_channels_last", torch.channels_last, torch.bfloat16),
    ):
        net, batch = model.to(memory_format=layout), x.contiguous(memory_format=layout)
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            net(batch)
            start = time.perf_counter()
            features = net(batch)[-1].float()
            out[f"{name}_s"] = round(time.perf_counter() - start, 3)
        if reference is None:
            reference = features
        else:
            out[f"{name}_error_of_peak"] = float((features - reference).abs().max() / reference.abs().max())
    out["machine"] = machine()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
