"""`ray-wsis` (also `python -m ray_wsis`): the command line.

Commands that make or change an output (run, demo, each stage) take --config FILE.yaml and
repeatable --set key=value; commands that read an output (status, export, visualize,
train-downstream, and the stages when no --config is given) take their config from the
output's config.yaml. User errors (bad config, missing data, unreachable storage, wrong
checkpoint) end with one `error: ...` line and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any, Optional

from ray_wsis.config import Config, ConfigError, load_config

STAGE_NAMES = (
    "train-cam",
    "make-cams",
    "make-ir-labels",
    "make-affinity-labels",
    "train-irn",
    "train-affinitynet",
    "make-pseudo-labels",
    "calibrate",
    "cut-labels",
    "evaluate",
)
"""The stage commands (the same names as stages/registry.py's NAMES, checked by a test; listed here
so that `--help` needs no torch import)."""


READS_AN_OUTPUT = ("status", "export", "visualize", "train-downstream", "review")
"""Commands that read an existing output (a --config for them is compared with the output's own)."""


def builtin_config(name: str) -> str:
    return str(resources.files("ray_wsis") / "configs" / f"{name}.yaml")


def _common(parser: argparse.ArgumentParser, default_config: Optional[str] = None) -> None:
    parser.add_argument(
        "--config", default=default_config, help="YAML config file (default: the output's config.yaml when it has one)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="override a config key (dotted), e.g. --set cam.epochs=3; repeatable",
    )
    parser.add_argument("--verbose", action="store_true", help="show Ray's own log lines on the console too")


def _rerun_flags(parser: argparse.ArgumentParser, stage: Optional[str]) -> None:
    if stage is None:
        parser.add_argument(
            "--force",
            nargs="*",
            metavar="STAGE",
            default=None,
            help="redo these stages and everything after them (no name: every stage)",
        )
    else:
        parser.add_argument("--force", action="store_true", help="redo it even if nothing changed")
    parser.add_argument(
        "--retrain", action="store_true", help="retrain models when their training images changed (default: keep them)"
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="re-attempt the images recorded as failed in errors/, and only those",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-wsis", description="Weakly supervised pseudo-labels on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="make the synthetic dataset and run every stage on a local Ray")
    _common(demo, builtin_config("demo"))
    _rerun_flags(demo, None)
    demo.add_argument("--downstream", action="store_true", help="also train DeepLab and Mask R-CNN on the labels")
    sets = demo.add_mutually_exclusive_group()
    sets.add_argument(
        "--scenes",
        action="store_true",
        help="the second built-in set (outdoor scenes with co-occurring context) in ./demo_data/"
        "synthetic_scenes, output ./demo_output_scenes (unless --set says otherwise)",
    )
    sets.add_argument(
        "--contexts",
        action="store_true",
        help="the third built-in set (classes that come with their context: sky, roads, branches, "
        "windows, tiled floors; some images show only context) in ./demo_data/synthetic_contexts, "
        "output ./demo_output_contexts (unless --set says otherwise)",
    )
    run = sub.add_parser(
        "run", help="every stage in order (a stage whose inputs and settings are unchanged is skipped)"
    )
    _common(run)
    _rerun_flags(run, None)
    for name in STAGE_NAMES:
        stage = sub.add_parser(name, help=f"run the {name} stage alone")
        _common(stage)
        _rerun_flags(stage, name)
    status = sub.add_parser("status", help="what is done, stale or missing in an output, with counts and metrics")
    status.add_argument("output", help="the run's output folder or URI")
    _common(status)
    status.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    config = sub.add_parser("config", help="config tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="the resolved config, with where each value came from")
    _common(show)
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
    down.add_argument("--labels", default=None, help="the run's output URI (default: the config's output)")
    down.add_argument("--task", choices=("semantic", "instance"), required=True)
    down.add_argument("--force", action="store_true")
    review = sub.add_parser("review", help="send the least certain labels to Label Studio and bring corrections back")
    review_sub = review.add_subparsers(dest="review_command", required=True)
    push = review_sub.add_parser("push", help="the K least certain images, our labels as predictions, to Label Studio")
    pull = review_sub.add_parser(
        "pull", help="the submitted masks back: few-shot calibration on them, shipped as the labels of their images"
    )
    for part in (push, pull):
        part.add_argument("output", help="the run's output folder or URI")
        part.add_argument("--url", required=True, help="the Label Studio server, e.g. http://localhost:8080")
        _common(part)
    push.add_argument("--worst", type=int, default=20, help="how many images to push, least certain first (20)")
    push.add_argument("--project", default=None, help="Label Studio project title (default: ray_wsis <run_name>)")
    push.add_argument(
        "--choose",
        choices=("least-certain", "random"),
        default="least-certain",
        help="least certain first (default), or a random sample: an unbiased audit of the labels",
    )
    push.add_argument("--seed", type=int, default=0, help="the random sample's seed (--choose random)")
    return parser


# --------------------------------------------------------------------------- configs
def _output_of(args: argparse.Namespace) -> Optional[str]:
    """The output a command names: a positional/--labels argument or `--set output=...`."""
    for name in ("output", "labels"):
        value = getattr(args, name, None)
        if value:
            return _run_root(value)
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key.strip() == "output" and value.strip():
            return value.strip()
    return None


def _run_root(uri: str) -> str:
    """A run's output folder from itself or its pseudo_labels folder."""
    stripped = uri.rstrip("/")
    return stripped[: -len("/pseudo_labels")] if stripped.endswith("/pseudo_labels") else stripped


def resolve_config(args: argparse.Namespace, warn: Callable[[str], None]) -> Config:
    """--config (+ --set), else the named output's config.yaml (+ --set), else the defaults (+ --set).

    A --config that contradicts the output's recorded config is reported field by field."""
    from ray_wsis.pipeline.output_config import differences, recorded_config
    from ray_wsis.storage import check_endpoint

    output = _output_of(args)
    overrides = list(args.overrides)
    if output and not any(o.partition("=")[0].strip() == "output" for o in overrides):
        overrides.append(f"output={output}")
    if output:  # an unreachable object store fails here, in seconds, not in the SDK's retries
        check_endpoint(load_config(args.config, overrides).storage, output)
    if args.config or args.command == "config":
        config = load_config(args.config, overrides)
        if args.command not in READS_AN_OUTPUT:
            return config
        saved = recorded_config(config.output, config.storage)
        if saved is not None:
            changed = [d for d in differences(saved, config) if not d.startswith("output:")]
            for line in changed:
                warn(f"note: --config differs from {config.output}/config.yaml: {line}")
        return config
    if output:
        saved = recorded_config(output, load_config(None, overrides).storage)
        if saved is not None:
            return load_config(None, overrides, base=saved.to_dict())
    return load_config(None, overrides)


# --------------------------------------------------------------------------- commands
def _options(args: argparse.Namespace, config: Config, names: Sequence[str]):  # type: ignore[no-untyped-def]
    from ray_wsis.stages import registry
    from ray_wsis.stages.base import RunOptions

    force: set[str] = set()
    if args.command in ("run", "demo"):
        if args.force is not None:
            asked = set(args.force) or {s.name for s in registry.pipeline(config)}
            for name in asked:
                registry.stage(config, name)  # an unknown stage is a user error
            force = registry.downstream_of(config, asked)
    elif args.force:
        force = set(names)
    return RunOptions(frozenset(force), retrain=args.retrain, retry_failed=args.retry_failed)


def _start(args: argparse.Namespace, config: Config, names: Optional[Sequence[str]]):  # type: ignore[no-untyped-def]
    """Everything that can fail on user input is checked here, before anything is written.

    The dataset is checked first (a wrong dataset.root leaves no output folder behind), then the
    output's storage. Ray is not started here: see ``_ray_starter``."""
    from ray_wsis.pipeline.context import StageContext, check_output, preflight
    from ray_wsis.stages.run import may_run, selected

    ctx = StageContext(config)
    _ = ctx.source  # validate the dataset before touching the output
    check_output(config)
    options = _options(args, config, names or [])
    preflight(ctx, may_run(ctx, selected(ctx, names), options))
    return ctx, options


def _ray_starter(args: argparse.Namespace, config: Config, where: RunPosition) -> Callable[[], None]:
    """Start Ray (and send its log lines to the log file): called before the first stage that runs,
    so a run with every stage done imports and starts no Ray."""

    def start() -> None:
        import ray.data  # noqa: F401  (Ray Data sets up its loggers when imported: route them after that)

        from ray_wsis.console import configure_console
        from ray_wsis.pipeline.context import init_ray

        configure_console(config, verbose=args.verbose)
        init_ray(config, verbose=args.verbose)
        where.ray_started = True
        _catch_sigterm()  # again: Ray's core installs its own (a stack dump, then abort) at start

    return start


# --------------------------------------------------------------------------- stopping
class Stopped(KeyboardInterrupt):
    """SIGTERM (what Kubernetes and job schedulers send), raised in the driver like Ctrl-C."""


_SIGNALS_SEEN: list[str] = []
"""Set by the handlers: a library that catches the interrupt and raises an error of its own (Ray
Train may) does not turn a stop into a failure, nor a SIGTERM into a Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    _SIGNALS_SEEN.append("SIGTERM")
    raise Stopped()


def _on_sigint(signum: int, frame: object) -> None:
    _SIGNALS_SEEN.append("Ctrl-C")
    raise KeyboardInterrupt()


def _catch_sigterm() -> None:
    """Our handlers for SIGTERM and SIGINT (main thread only, as Python allows)."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, _on_sigint)


@dataclasses.dataclass
class RunPosition:
    """Where a run is: the stage announced last, and whether Ray was started."""

    stage: Optional[Any] = None
    action: str = ""
    ray_started: bool = False


def stop_message(ctx: Any, where: RunPosition, signal_name: str) -> str:
    """One line: what the stopped run had committed, and that running it again continues."""
    from ray_wsis.stages import registry

    stage: Any = where.stage
    working = stage is not None and where.action not in ("skip", "kept")
    done = [
        s.name
        for s in registry.pipeline(ctx.config)
        if ctx.marker(s.name) is not None and not (working and s.name == stage.name)
    ]
    if not working:
        current = ""
    elif stage.kind == "images":
        location = stage.outputs(ctx.layout, ctx.config)[0]
        current = f"; {stage.name}: {len(registry.committed_ids(location))} images committed"
    elif stage.kind == "train":
        current = f"; {stage.name}: its finished epochs are checkpointed"
    else:
        current = f"; {stage.name}: not finished"
    stages = f"{len(done)} stages done" + (f" (last: {done[-1]})" if done else "")
    return (
        f"stopped ({signal_name}): {stages}{current}; what was committed is kept: "
        f"run the same command again to continue"
    )


@contextlib.contextmanager
def stopping_cleanly(ctx: Any, where: RunPosition) -> Iterator[None]:
    """SIGTERM and Ctrl-C end a run with one line and status 143 / 130, Ray shut down in order."""
    import signal

    main = threading.current_thread() is threading.main_thread()
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) if main else None
    _catch_sigterm()
    _SIGNALS_SEEN.clear()
    try:
        yield
    except (KeyboardInterrupt, Exception) as exc:
        if not (_SIGNALS_SEEN or isinstance(exc, KeyboardInterrupt)):
            raise  # a failure, not a stop (an error a library raised for our interrupt counts as the stop)
        by_sigterm = isinstance(exc, Stopped) or "SIGTERM" in _SIGNALS_SEEN
        name = "SIGTERM" if by_sigterm else "Ctrl-C"
        if main:  # a second signal must not cut the shutdown short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if where.ray_started:
            ray = sys.modules.get("ray")
            with contextlib.suppress(Exception):
                if ray is not None and ray.is_initialized():
                    ray.shutdown()
        try:
            message = stop_message(ctx, where, name)
        except Exception:  # the line must come out whatever storage says now
            message = f"stopped ({name}): what was committed is kept: run the same command again to continue"
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(143 if by_sigterm else 130) from None
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before[0] if before[0] is not None else signal.SIG_DFL)
            signal.signal(signal.SIGINT, before[1] if before[1] is not None else signal.SIG_DFL)


def cmd_run(args: argparse.Namespace, config: Config, names: Optional[Sequence[str]] = None) -> int:
    from ray_wsis.stages.base import Plan, Stage
    from ray_wsis.stages.run import banner, run_pipeline, summary_table
    from ray_wsis.storage import exists, read_bytes

    ctx, options = _start(args, config, names)
    where = RunPosition()

    def announce(stage: Stage, plan: Plan, position: tuple[int, int]) -> None:
        where.stage, where.action = stage, plan.action
        ctx.log(banner(stage, plan, position))

    with stopping_cleanly(ctx, where):
        results = run_pipeline(ctx, names, options, announce, _ray_starter(args, config, where))
    metrics = json.loads(read_bytes(ctx.layout.metrics)) if exists(ctx.layout.metrics) else None
    print(summary_table(results, config.output, metrics), flush=True)
    return 0


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from ray_wsis.data.synthetic import make_synthetic_voc

    kind = "scenes" if args.scenes else "contexts" if args.contexts else "parts"
    if kind != "parts":
        given = {o.partition("=")[0].strip() for o in args.overrides}
        config = load_config(
            args.config,
            [
                *([f"dataset.root=./demo_data/synthetic_{kind}"] if "dataset.root" not in given else []),
                *([f"output=./demo_output_{kind}"] if "output" not in given else []),
                *args.overrides,
            ],
        )
    root = config.dataset.root
    if not os.path.isdir(os.path.join(root, "JPEGImages")):
        print(f"making the synthetic VOC-layout dataset ({kind}) in {root} ...", flush=True)
        make_synthetic_voc(root, kind=kind)
    code = cmd_run(args, config)
    if args.downstream:
        from ray_wsis.downstream.demo import run_downstream_demo

        run_downstream_demo(config, force=bool(args.force is not None))
    return code


def cmd_stage(args: argparse.Namespace, config: Config) -> int:
    return cmd_run(args, config, [args.command])


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from ray_wsis.pipeline.output_config import CONFIG_FILE, recorded_config
    from ray_wsis.status import output_status, status_text

    if not args.config and recorded_config(config.output, config.storage) is None:
        raise ConfigError(
            f"{args.output} holds no {CONFIG_FILE}: not a ray_wsis output (or one made before "
            f"outputs recorded their config); pass --config to describe it"
        )

    report = output_status(config)
    print(json.dumps(report, indent=2, default=str) if args.json else status_text(report))
    return 0


def cmd_config(args: argparse.Namespace, config: Config) -> int:
    from ray_wsis.config import show_config

    sources: dict[str, str] = {}
    load_config(args.config, args.overrides, sources=sources)
    print(show_config(config, sources))
    return 0


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from ray_wsis.data.sources import build_source
    from ray_wsis.export import export_coco, export_voc
    from ray_wsis.labels import shard_location

    shard_location(args.labels, config.storage)  # no labels there: say so, before anything else
    if args.format == "coco":
        names = build_source(config.dataset, config.storage).class_names
        result = export_coco(args.labels, args.out, names, config.storage, args.min_score)
    else:
        result = export_voc(args.labels, args.out, config.storage, args.min_score)
    print(json.dumps(result))
    return 0


def cmd_visualize(args: argparse.Namespace, config: Config) -> int:
    from ray_wsis.visualize.report import write_report

    print(json.dumps(write_report(args.labels, args.out, config, n=args.n)))
    return 0


def cmd_downstream(args: argparse.Namespace, config: Config) -> int:
    from ray_wsis.console import configure_console
    from ray_wsis.downstream.train import train_downstream
    from ray_wsis.pipeline.context import check_output, init_ray

    check_output(config)
    configure_console(config, verbose=args.verbose)
    init_ray(config, verbose=args.verbose)
    print(json.dumps(train_downstream(config, args.task, force=args.force), indent=2, default=str))
    return 0


def cmd_review(args: argparse.Namespace, config: Config) -> int:
    from ray_wsis.pipeline.context import StageContext
    from ray_wsis.review.client import KEY_VARIABLE, LabelStudio

    client = LabelStudio(args.url, os.environ.get(KEY_VARIABLE, ""))
    ctx = StageContext(config)
    if args.review_command == "push":
        from ray_wsis.review.push import push

        push(ctx, client, args.worst, args.project or f"ray_wsis {config.run_name}", args.choose, args.seed)
        return 0
    from ray_wsis.data.reviewed import REVIEW_SPLIT
    from ray_wsis.review.pull import pull

    counts = pull(ctx, client)
    if not counts["images"]:
        print("no submitted annotations yet: nothing to calibrate or cut", flush=True)
        return 0
    split = config.dataset.calibration_split
    if split not in ("", REVIEW_SPLIT):
        print(f"note: dataset.calibration_split {split!r} -> {REVIEW_SPLIT!r} (the reviewed images)", flush=True)
    if not config.calibration.enabled:
        print("note: calibration is off: the reviewed images are shipped, the thresholds stay the configured ones")
    reviewed = dataclasses.replace(config, dataset=dataclasses.replace(config.dataset, calibration_split=REVIEW_SPLIT))
    as_run = {"command": "run", "force": None, "retrain": False, "retry_failed": False}
    return cmd_run(argparse.Namespace(**{**vars(args), **as_run}), reviewed)


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "review": cmd_review,
    "run": cmd_run,
    "demo": cmd_demo,
    "status": cmd_status,
    "config": cmd_config,
    "export": cmd_export,
    "visualize": cmd_visualize,
    "train-downstream": cmd_downstream,
    **{name: cmd_stage for name in STAGE_NAMES},
}


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that are the user's to fix. CheckpointError only where its module (and torch) is
    already imported: otherwise none can have been raised, and an error line needs no torch."""
    from ray_wsis.data.records import DatasetError
    from ray_wsis.storage import StorageError

    errors: tuple[type[BaseException], ...] = (ConfigError, DatasetError, StorageError, FileNotFoundError)
    checkpoints = sys.modules.get("ray_wsis.models.checkpoints")
    review = sys.modules.get("ray_wsis.review.client")
    return (
        errors
        + ((checkpoints.CheckpointError,) if checkpoints is not None else ())
        + ((review.ReviewError,) if review is not None else ())
    )


def reporting_user_errors(body: Callable[[], int]) -> int:
    """Run a command: user errors become one `error:` line and status 2, Ctrl-C status 130."""
    try:
        return body()
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not _is_ray_failure(exc):
            raise
        _log_traceback(exc)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        where = os.environ.get("RAY_WSIS_LOG_FILE", "Ray's log")
        print(
            f"error: the cluster failed under the stage ({type(exc).__name__}: {first}); what was committed is "
            f"kept: run the same command again to continue (traceback in {where})",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _is_ray_failure(exc: BaseException) -> bool:
    """Ray's own failures (a node or actor lost beyond its retries), not bugs of ours."""
    names = {t.__module__.split(".")[0] for t in type(exc).__mro__}
    cause = exc.__cause__
    return (
        "ray" in names
        and type(exc).__name__
        in (
            "SystemException",
            "RayActorError",
            "RayTaskError",
            "ActorDiedError",
            "NodeDiedError",
            "WorkerGroupError",
            "ControllerError",
            "TrainingFailedError",
            "ObjectLostError",
            "OwnerDiedError",
        )
        or (cause is not None and _is_ray_failure(cause))
    )


def _log_traceback(exc: BaseException) -> None:
    import traceback

    path = os.environ.get("RAY_WSIS_LOG_FILE")
    if path:
        with open(path, "a") as f:
            f.write("".join(traceback.format_exception(exc)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        config = resolve_config(args, lambda line: print(line, file=sys.stderr))
        return COMMANDS[args.command](args, config)

    return reporting_user_errors(body)


if __name__ == "__main__":
    sys.exit(main())
