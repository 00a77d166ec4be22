"""make-pseudo-labels with 1 and 2 inference actors (1 thread each) on this machine.

    python bench/scaling.py [--images 24] [--backbone resnet50] [--size 375 500]

CAMs are made once (Ray make-cams), then the pseudo-label stage runs with 1 actor and again
(--force) with 2. Prints one JSON object with both times and speedup_2_actors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine  # noqa: E402
from stages import write_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500))
    args = parser.parse_args()
    from ray_wsis.config import load_config
    from ray_wsis.data.synthetic import make_synthetic_voc
    from ray_wsis.pipeline.context import StageContext, init_ray
    from ray_wsis.pipeline.inference import make_cams, make_pseudo_labels

    work = tempfile.mkdtemp(prefix="ray_wsis_scaling_")
    root, output = os.path.join(work, "voc"), os.path.join(work, "out")
    make_synthetic_voc(root, n_train=args.images, n_val=0, size=tuple(args.size), seed=5)
    write_models(output, args.backbone)
    base = [f"dataset.root={root}", f"output={output}", f"model.backbone={args.backbone}", "ray.cpus_per_actor=1",
            "ray.inference_batch_size=1", "ray.progress_bars=false",
            # one logical CPU above the cores: 2 one-thread actors plus the decode tasks (see check_cpu_room)
            f"ray.num_cpus={os.cpu_count() + 1}"]
    config = load_config(None, base + ["ray.inference_actors=2"])
    init_ray(config)
    make_cams(StageContext(config, log=lambda _m: None))
    seconds = {}
    for actors in (1, 2):
        cfg = load_config(None, base + [f"ray.inference_actors={actors}"])
        start = time.perf_counter()
        make_pseudo_labels(StageContext(cfg, force=True, log=lambda _m: None))
        seconds[actors] = time.perf_counter() - start
    print(json.dumps({"machine": machine(), "images": args.images, "size": list(args.size),
                      "backbone": args.backbone, "threads_per_actor": 1,
                      "seconds_1_actor": round(seconds[1], 2), "seconds_2_actors": round(seconds[2], 2),
                      "speedup_2_actors": round(seconds[1] / seconds[2], 3)}))


if __name__ == "__main__":
    main()
