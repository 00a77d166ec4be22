"""`ray-wsis`: the command line. Every command takes --config FILE.yaml and --set key=value.

User errors (bad config, missing data, unreachable storage, wrong checkpoint) end with one
`error: ...` line and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from typing import Callable, Optional, Sequence

from ray_wsis.config import Config, ConfigError, load_config
from ray_wsis.data.records import DatasetError
from ray_wsis.models.checkpoints import CheckpointError
from ray_wsis.storage import StorageError

USER_ERRORS = (ConfigError, DatasetError, StorageError, CheckpointError, FileNotFoundError)
STAGE_COMMANDS = ("train-cam", "make-cams", "make-ir-labels", "train-irn", "make-pseudo-labels", "evaluate")


def builtin_config(name: str) -> str:
    return str(resources.files("ray_wsis") / "configs" / f"{name}.yaml")


def _common(parser: argparse.ArgumentParser, default_config: Optional[str] = None) -> None:
    parser.add_argument("--config", default=default_config, help="YAML config file")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="override a config key (dotted), e.g. --set cam.epochs=3; repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-wsis", description="Weakly supervised pseudo-labels on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="make the synthetic dataset and run every stage on a local Ray")
    _common(demo, builtin_config("demo"))
    demo.add_argument("--force", action="store_true", help="redo finished stages")
    demo.add_argument("--downstream", action="store_true", help="also train DeepLab and Mask R-CNN on the labels")
    run = sub.add_parser("run", help="every stage in order (finished stages are skipped)")
    _common(run)
    run.add_argument("--force", action="store_true")
    for name in STAGE_COMMANDS:
        stage = sub.add_parser(name, help=f"run the {name} stage alone")
        _common(stage)
        stage.add_argument("--force", action="store_true", help="redo it even if it finished")
    export = sub.add_parser("export", help="write COCO JSON or VOC PNGs from pseudo-label shards")
    _common(export)
    export.add_argument("--labels", required=True, help="the run's output URI or its pseudo_labels folder")
    export.add_argument("--format", choices=("coco", "voc"), required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--min-score", type=float, default=0.0)
    vis = sub.add_parser("visualize", help="PNG panels, a contact sheet and index.html for a run")
    _common(vis)
    vis.add_argument("--labels", required=True, help="the run's output URI")
    vis.add_argument("--out", required=True)
    vis.add_argument("--n", type=int, default=32)
    down = sub.add_parser("train-downstream", help="train DeepLabV3 or Mask R-CNN on the pseudo-labels")
    _common(down)
    down.add_argument("--task", choices=("semantic", "instance"), required=True)
    down.add_argument("--force", action="store_true")
    return parser


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def _stage_context(args: argparse.Namespace, config: Config, stages: Sequence[str]):
    """Everything that can fail on user input is checked here, before Ray starts."""
    from ray_wsis.pipeline.context import StageContext, check_output, init_ray, preflight

    check_output(config)
    ctx = StageContext(config, force=getattr(args, "force", False))
    ctx.source  # validate the dataset before starting Ray
    preflight(ctx, list(stages))
    init_ray(config)
    return ctx


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from ray_wsis.pipeline.run import run_all, summary_table

    from ray_wsis.pipeline.run import STAGE_FUNCTIONS

    ctx = _stage_context(args, config, list(STAGE_FUNCTIONS))
    results = run_all(ctx)
    metrics = results.get("evaluate")
    print(summary_table(results, config.output, metrics if isinstance(metrics, dict) else None))
    return 0


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from ray_wsis.data.synthetic import make_synthetic_voc

    root = config.dataset.root
    if not os.path.isdir(os.path.join(root, "JPEGImages")):
        print(f"making the synthetic VOC-layout dataset in {root} ...", flush=True)
        make_synthetic_voc(root)
    code = cmd_run(args, config)
    if args.downstream:
        from ray_wsis.downstream.demo import run_downstream_demo

        run_downstream_demo(config, force=args.force)
    return code


def cmd_stage(args: argparse.Namespace, config: Config) -> int:
    from ray_wsis.pipeline.run import STAGE_FUNCTIONS

    ctx = _stage_context(args, config, [args.command])
    result = STAGE_FUNCTIONS[args.command](ctx)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from ray_wsis.export import export_coco, export_voc

    if args.format == "coco":
        from ray_wsis.data.sources import build_source

        names = build_source(config.dataset, config.storage).class_names if config.dataset.root \
            or config.dataset.manifest else None
        result = export_coco(args.labels, args.out, names or _voc(), config.storage, args.min_score)
    else:
        result = export_voc(args.labels, args.out, config.storage, args.min_score)
    print(json.dumps(result))
    return 0


def _voc() -> Sequence[str]:
    from ray_wsis.classes import VOC_CLASSES

    return VOC_CLASSES


def cmd_visualize(args: argparse.Namespace, config: Config) -> int:
    from ray_wsis.visualize.report import write_report

    print(json.dumps(write_report(args.labels, args.out, config, n=args.n)))
    return 0


def cmd_downstream(args: argparse.Namespace, config: Config) -> int:
    from ray_wsis.downstream.train import train_downstream
    from ray_wsis.pipeline.context import check_output, init_ray

    check_output(config)
    init_ray(config)
    print(json.dumps(train_downstream(config, args.task, force=args.force), indent=2, default=str))
    return 0


COMMANDS = {"run": cmd_run, "demo": cmd_demo, "export": cmd_export, "visualize": cmd_visualize,
            "train-downstream": cmd_downstream, **{name: cmd_stage for name in STAGE_COMMANDS}}


def reporting_user_errors(body: Callable[[], int]) -> int:
    """Run a command: user errors become one `error:` line and status 2, Ctrl-C status 130."""
    try:
        return body()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return reporting_user_errors(lambda: COMMANDS[args.command](args, _config(args)))


if __name__ == "__main__":
    sys.exit(main())
