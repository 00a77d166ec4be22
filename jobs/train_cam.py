"""Ray job: the train-cam stage alone (skipped if its marker says done; --force redoes it).

    ray job submit --working-dir . -- python jobs/train_cam.py --config configs/cluster.yaml
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root: uninstalled imports

from jobs._entry import stage_main  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    return stage_main("train-cam", argv)


if __name__ == "__main__":
    sys.exit(main())
