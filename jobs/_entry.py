"""Shared body of the Ray job entry points in jobs/.

Why: every jobs/*.py must behave like the `ray-wsis` CLI (one `error:` line, exit 2) both when run
as `python jobs/x.py` from a checkout and as a `ray job submit --working-dir .` entrypoint on a
cluster where ray_wsis may not be pip-installed. It never passes a runtime_env to Ray: inside a job
that would clash with the job's own (see notes/ray-2.58.md 4.2); `init_ray` connects to RAY_ADDRESS.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent


def _export_repo_root() -> None:
    """Put the checkout on PYTHONPATH so the workers of a *local* Ray import this ray_wsis too.

    Under `ray job submit` the working dir is already on the driver's and workers' path; there this
    only changes the driver's environment, which cluster workers do not inherit.
    """
    root = str(REPO_ROOT)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if (REPO_ROOT / "ray_wsis").is_dir() and root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config file, e.g. configs/cluster.yaml")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="override a config key (dotted), e.g. --set cam.epochs=3; repeatable")
    parser.add_argument("--force", action="store_true", help="redo stages that already finished")
    return parser


def run_job(description: str, body: Callable[[Any], str], argv: Optional[Sequence[str]] = None) -> int:
    """Parse, validate (config, output, dataset) before starting Ray, run `body(ctx)`, print its text."""
    args = build_parser(description).parse_args(argv)
    _export_repo_root()
    from ray_wsis.cli import reporting_user_errors
    from ray_wsis.config import load_config

    def run() -> int:
        config = load_config(args.config, args.overrides)
        from ray_wsis.pipeline.context import StageContext, check_output, init_ray

        check_output(config)
        ctx = StageContext(config, force=args.force)
        ctx.source  # a missing dataset fails here, in seconds, not on the cluster
        init_ray(config)
        print(body(ctx), flush=True)
        return 0

    return reporting_user_errors(run)


def stage_main(stage: str, argv: Optional[Sequence[str]] = None) -> int:
    """One stage (a key of STAGE_FUNCTIONS); prints its summary as JSON, like `ray-wsis <stage>`."""
    from ray_wsis.pipeline.run import STAGE_FUNCTIONS

    def body(ctx: Any) -> str:
        return json.dumps(STAGE_FUNCTIONS[stage](ctx), indent=2, default=str)

    return run_job(f"Ray job: the {stage} stage of ray_wsis", body, argv)
