"""Peak memory of one inference actor's work for a 500x500 and a 1024x2048 image.

    python bench/memory.py [--backbone resnet50]

Each size runs in a fresh process: the CAM predictor (4 scales + flip) and the IRNet
predictor (boundary, displacement, sparse walk, instances) on one synthetic image with 3
classes, the same code the actors run. Reports peak RSS (MB) per size and step timings.
No (hw)^2 structure exists anywhere, so 1024x2048 fits in a few GB.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine, peak_rss_mb, run_json  # noqa: E402


def child(height: int, width: int, backbone: str) -> None:
    import numpy as np
    import torch

    from ray_wsis.config import WalkConfig
    from ray_wsis.data.synthetic import synthesize
    from ray_wsis.method.predictors import CamPredictor, IRNetPredictor
    from ray_wsis.models.checkpoints import build_model

    torch.set_num_threads(1)
    sample = synthesize(np.random.default_rng(0), size=(height, width), class_ids=(1, 2, 3))
    image = sample.image
    class_ids = sorted(set(int(c) for c in np.unique(sample.semantic)) - {0, 255}) or [1]
    baseline = peak_rss_mb()
    start = time.perf_counter()
    cams = CamPredictor(build_model("cam", backbone, 20).eval(), (1.0, 0.5, 1.5, 2.0))(image, class_ids)
    cam_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = IRNetPredictor(build_model("irnet", backbone, 20).eval(), WalkConfig())(image, cams, class_ids)
    print(
        json.dumps(
            {
                "height": height,
                "width": width,
                "classes": len(class_ids),
                "baseline_rss_mb": baseline,
                "peak_rss_mb": peak_rss_mb(),
                "cam_seconds": cam_seconds,
                "pseudo_label_seconds": time.perf_counter() - start,
                "steps": result.seconds,
                "instances": len(result.instances),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.backbone)
        return
    report = {"machine": machine(), "backbone": args.backbone, "weights": "random", "threads": 1}
    for h, w in ((500, 500), (1024, 2048)):
        stats = run_json([__file__, "--backbone", args.backbone, "--child", str(h), str(w)])
        report[f"{h}x{w}"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in stats.items()}
    report["peak_rss_mb_500x500"] = report["500x500"]["peak_rss_mb"]
    report["peak_rss_mb_1024x2048"] = report["1024x2048"]["peak_rss_mb"]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
