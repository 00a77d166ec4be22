"""Ray job: every stage in order (finished ones are skipped), then the summary table.

    python jobs/run_pipeline.py --config configs/voc12.yaml [--set key=value ...] [--force]
    ray job submit --working-dir . -- python jobs/run_pipeline.py --config configs/cluster.yaml
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root: uninstalled imports

from jobs._entry import run_job  # noqa: E402


def _pipeline(ctx: Any) -> str:
    from ray_wsis.pipeline.run import run_all, summary_table

    results = run_all(ctx)
    metrics = results.get("evaluate")
    return summary_table(results, ctx.config.output, metrics if isinstance(metrics, dict) else None)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_job("Ray job: the whole ray_wsis pipeline, image labels to pseudo-labels", _pipeline, argv)


if __name__ == "__main__":
    sys.exit(main())
