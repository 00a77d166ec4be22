"""Where IRNet's semantic walk should run: the compiled CPU kernel (the CPU tasks) against the
stencil of many images per call (``walk_many``, the model actor on its device; walk.runs_in).

    python bench/walk_where.py [--images 8] [--classes 2] [--device cpu|cuda] [--threads 1]

Walks the same random CAMs on the same random boundary maps (94x125 at stride 4, a 375x500 image)
both ways and prints one JSON line: each way's seconds, and the largest difference from the
kernel's result as a share of its peak. docs/performance.md records the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ray_wsis.method.labels import boundary_walk
from ray_wsis.method.random_walk import walk_many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    h, w, steps = 94, 125, 256
    boundaries = [torch.from_numpy(rng.random((h, w)).astype(np.float32)) for _ in range(args.images)]
    x = torch.from_numpy(rng.random((args.images, args.classes, h, w)).astype(np.float32))
    operators = [boundary_walk(b, args.radius, 10.0) for b in boundaries]
    operators[0](x[0], 1)  # compiles the kernel
    start = time.perf_counter()
    expected = [op(x[i], steps) for i, op in enumerate(operators)]
    kernel = time.perf_counter() - start
    on_device = [boundary_walk(b.to(device), args.radius, 10.0) for b in boundaries]
    start = time.perf_counter()
    got = walk_many(on_device, x.to(device), steps).cpu()
    stencil = time.perf_counter() - start
    error = max(float((got[i] - expected[i]).abs().max() / expected[i].abs().max()) for i in range(args.images))
    print(
        json.dumps(
            {
                "bench": "walk_where",
                "images": args.images,
                "classes": args.classes,
                "size": [h, w],
                "radius": args.radius,
                "steps": steps,
                "threads": args.threads,
                "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                "kernel_s": round(kernel, 3),
                "walk_many_s": round(stencil, 3),
                "max_difference_of_peak": error,
            }
        )
    )


if __name__ == "__main__":
    main()
