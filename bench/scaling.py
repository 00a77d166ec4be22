"""make-pseudo-labels with 1 and 2 inference actors (1 thread each) on this machine.

    python bench/scaling.py [--images 64] [--repeats 1] [--backbone resnet50] [--size 375 500]

CAMs are made once (Ray make-cams, one scale); then the pseudo-label stage runs (--force) with 1 and with
2 actors, `repeats` times in turn. speedup_2_actors is the ratio of the median wall times of the
whole stage, start-up included. That start-up is fixed per stage and does not halve with two
actors: each actor process boots Ray's worker and imports torch and torchvision (~9 s of CPU and
~12 s of wall time before its first image, from a scratch run that logged the actors' times),
and on two cores the two actors pay it at once. Past it, one actor took 2.65 s per image and
each of two 2.9 s (the cores share memory bandwidth), a per-image ratio of 1.83 that a long
run (thousands of images per actor, as on a cluster) tends to. Hence 64 images by default:
32 gave 1.52-1.74 in four runs, 64 gave 1.76 (median of two; docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine  # noqa: E402
from stages import write_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500))
    args = parser.parse_args()
    from ray_wsis.config import load_config
    from ray_wsis.data.synthetic import make_synthetic_voc
    from ray_wsis.pipeline.context import StageContext, init_ray
    from ray_wsis.stages.run import run_named

    work = tempfile.mkdtemp(prefix="ray_wsis_scaling_")
    root, output = os.path.join(work, "voc"), os.path.join(work, "out")
    make_synthetic_voc(root, n_train=args.images, n_val=0, size=tuple(args.size), seed=5)
    write_models(output, args.backbone)
    base = [
        f"dataset.root={root}",
        f"output={output}",
        f"model.backbone={args.backbone}",
        "ray.cpus_per_actor=1",
        "ray.inference_batch_size=1",
        "ray.progress_bars=false",
        # one logical CPU above the cores: 2 one-thread actors plus the decode tasks (see check_cpu_room)
        f"ray.num_cpus={os.cpu_count() + 1}",
    ]
    config = load_config(None, base + ["ray.inference_actors=2"])
    init_ray(config)
    # The CAMs are only this stage's input, and its cost does not depend on how they were made
    # (one map per class at stride 4 either way): scale 1.0 alone has 1/7.5 of the pixels of four scales.
    run_named(
        StageContext(load_config(None, base + ["ray.inference_actors=2", "cam.scales=[1.0]"]), log=lambda _m: None),
        "make-cams",
    )
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(max(1, args.repeats)):
        for actors in (1, 2):  # in turn, so that a drift of the box hits both sides
            cfg = load_config(None, base + [f"ray.inference_actors={actors}"])
            start = time.perf_counter()
            run_named(StageContext(cfg, log=lambda _m: None), "make-pseudo-labels", force=True)
            seconds[actors].append(round(time.perf_counter() - start, 2))
    median = {a: round(statistics.median(s), 2) for a, s in seconds.items()}
    print(
        json.dumps(
            {
                "machine": machine(),
                "images": args.images,
                "size": list(args.size),
                "backbone": args.backbone,
                "threads_per_actor": 1,
                "seconds_1_actor": median[1],
                "seconds_2_actors": median[2],
                "runs_seconds": {"1_actor": seconds[1], "2_actors": seconds[2]},
                "speedup_2_actors": round(median[1] / median[2], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
