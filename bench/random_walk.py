"""Sparse random walk vs the reference's dense (hw)^2 transition matrix squared 8 times.

    python bench/random_walk.py [--threads 1] [--dense-large]

Same inputs for both: 3 classes, radius 5, beta 10, t = 256, a random boundary map with
lines through it. Each measurement runs in its own process so peak RSS is its own. Prints
one JSON object (last line): speedup_vs_dense, memory_ratio_vs_dense, max_abs_diff_rel (at
48x64) and seconds_375x500 (the walk of one 94x125 map, a 375x500 image at stride 4).
At 94x125 the dense walk needs a 552 MB matrix and 26 TFLOP; it runs only with --dense-large,
otherwise its cost is reported as computed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine, peak_rss_mb, run_json  # noqa: E402


def inputs(height: int, width: int, classes: int = 3, seed: int = 0):
    import torch

    from ray_wsis.method.path_index import boundary_to_affinity, path_index

    g = torch.Generator().manual_seed(seed)
    boundary = torch.rand(1, height, width, generator=g) ** 6
    boundary[:, :, width // 3] = 0.95  # a wall and a ring so the walk has structure to respect
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ring = ((yy - height / 2) ** 2 + (xx - 2 * width / 3) ** 2).sqrt()
    boundary[0][(ring - min(height, width) / 4).abs() < 1] = 0.9
    seeds = torch.rand(classes, height, width, generator=g) ** 4
    index = path_index(5)
    affinity = boundary_to_affinity(boundary, index, "same")[0]
    return seeds * (1 - boundary), affinity, index


def measure(kind: str, height: int, width: int, threads: int, out: str) -> None:
    """Child process: one walk, its time and this process's peak RSS above the baseline."""
    import numpy as np
    import torch

    from ray_wsis.method.random_walk import dense_random_walk, random_walk

    torch.set_num_threads(threads)
    x, affinity, index = inputs(height, width)
    # One-time per process, outside the measurement (as importing torch is): numba's import and
    # loading the compiled kernel from its cache. Reported apart as warmup_*.
    before, start = peak_rss_mb(), time.perf_counter()
    tiny_x, tiny_affinity, _ = inputs(8, 8)
    (random_walk if kind == "sparse" else dense_random_walk)(tiny_x, tiny_affinity, index, beta=10.0, exp_times=1)
    warmup = {"warmup_seconds": time.perf_counter() - start, "warmup_rss_mb": peak_rss_mb() - before}
    baseline = peak_rss_mb()
    start = time.perf_counter()
    if kind == "sparse":
        result = random_walk(x, affinity, index, beta=10.0, exp_times=8)
    elif kind == "dense":
        result = dense_random_walk(x, affinity, index, beta=10.0, exp_times=8)
    else:  # float64 dense: the exact answer both are held against
        result = dense_random_walk(x.double(), affinity.double(), index, beta=10.0, exp_times=8)
    seconds = time.perf_counter() - start
    np.save(out, result.double().numpy())
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline, **warmup}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dense-large", action="store_true", help="also run the dense walk at 94x125")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "H", "W", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, h, w, out = args.child
        measure(kind, int(h), int(w), args.threads, out)
        return
    import tempfile

    import numpy as np

    from ray_wsis.method.random_walk import dense_walk_cost

    def child(kind: str, h: int, w: int) -> tuple[dict, np.ndarray]:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "r.npy")
            stats = run_json([__file__, "--threads", str(args.threads), "--child", kind, str(h), str(w), out])
            return stats, np.load(out)

    report: dict = {"machine": machine(), "threads": args.threads, "classes": 3, "radius": 5, "beta": 10, "steps": 256}
    sparse_small, r_sparse = child("sparse", 48, 64)
    dense_small, r_dense = child("dense", 48, 64)
    _, r_exact = child("exact", 48, 64)
    peak = float(np.abs(r_dense).max())
    report["48x64"] = {
        "sparse_seconds": round(sparse_small["seconds"], 4),
        "dense_seconds": round(dense_small["seconds"], 3),
        "sparse_extra_rss_mb": round(sparse_small["peak_rss_mb"] - sparse_small["baseline_rss_mb"], 1),
        "sparse_warmup_seconds": round(sparse_small["warmup_seconds"], 3),
        "sparse_warmup_rss_mb": round(sparse_small["warmup_rss_mb"], 1),
        "dense_extra_rss_mb": round(dense_small["peak_rss_mb"] - dense_small["baseline_rss_mb"], 1),
        "sparse_vs_float64_rel": float(np.abs(r_sparse - r_exact).max() / np.abs(r_exact).max()),
        "dense_vs_float64_rel": float(np.abs(r_dense - r_exact).max() / np.abs(r_exact).max()),
    }
    report["speedup_vs_dense"] = round(dense_small["seconds"] / sparse_small["seconds"], 1)
    report["memory_ratio_vs_dense"] = round(
        max(report["48x64"]["dense_extra_rss_mb"], 0.1) / max(report["48x64"]["sparse_extra_rss_mb"], 0.1), 1
    )
    report["max_abs_diff_rel"] = float(np.abs(r_sparse - r_dense).max() / peak)
    sparse_large, _ = child("sparse", 94, 125)
    report["seconds_375x500"] = round(sparse_large["seconds"], 4)
    report["94x125"] = {
        "sparse_seconds": round(sparse_large["seconds"], 4),
        "sparse_extra_rss_mb": round(sparse_large["peak_rss_mb"] - sparse_large["baseline_rss_mb"], 1),
        "dense_cost": {k: float(v) for k, v in dense_walk_cost(94, 125).items()},
    }
    if args.dense_large:
        dense_large, _ = child("dense", 94, 125)
        report["94x125"]["dense_seconds"] = round(dense_large["seconds"], 1)
        report["94x125"]["dense_extra_rss_mb"] = round(dense_large["peak_rss_mb"] - dense_large["baseline_rss_mb"], 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
