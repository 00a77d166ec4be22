"""Ray job: the train-downstream-instance stage, Mask R-CNN trained on a run's pseudo-labels.

    ray job submit --working-dir . -- python jobs/train_maskrcnn.py --config configs/cluster.yaml \\
        --set downstream.epochs=24 --set ray.num_workers=4 --set ray.use_gpu=true

Skipped when its marker says done with the same downstream settings; re-submitting with the same
run_name and more epochs resumes from the last epoch's checkpoint; --force starts over.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root: uninstalled imports

from jobs._entry import run_job  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body(ctx: Any) -> str:
        from ray_wsis.downstream.train import train_downstream

        return json.dumps(train_downstream(ctx.config, "instance", force=ctx.force, log=ctx.log), indent=2, default=str)

    return run_job("Ray job: train Mask R-CNN on the pseudo-labels", body, argv)


if __name__ == "__main__":
    sys.exit(main())
