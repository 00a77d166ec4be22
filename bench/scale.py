"""The driver's own cost at 10k, 100k and 1M images: listing, planning, committed ids, markers.

    python bench/scale.py [--sizes 10000 100000 1000000] [--rows-per-file 1000]

Each size runs in a fresh process: a manifest of made-up records (no image files) is listed as a
split, and a per-image stage runs through the real skeleton (stages/base.py plan and marker,
stages/images.py pending ids, commit protocol, error folding, summary) with the per-image work
stubbed by a trivial actor, so only the pipeline's own cost is timed. Then the same stage runs
again (a re-run that finds everything done: planning and listing only). Reported per size: the
driver's wall time and CPU time of both runs, its peak RSS, and per image. The last line is one
JSON object with ``sizes``, ``driver_seconds``, ``driver_peak_rss_gb`` (lists in the order of
``sizes``), ``driver_seconds_1m``, ``driver_peak_rss_gb_1m`` and ``machine``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_manifest(folder: str, n: int) -> tuple[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["cat", "dog", "boat", "bird"]
    ids = [f"img_{i:08d}" for i in range(n)]
    table = pa.table(
        {
            "image_id": ids,
            "image_uri": [f"s3://nowhere/{i}.jpg" for i in ids],
            "labels": [[names[i % 4]] if i % 50 else [] for i in range(n)],
        }
    )
    manifest = os.path.join(folder, "manifest.parquet")
    pq.write_table(table, manifest)
    classes = os.path.join(folder, "classes.txt")
    with open(classes, "w") as f:
        f.write("\n".join(names) + "\n")
    return manifest, classes


class StubActor:
    """The per-image work, stubbed: one output row per input row, nothing computed."""

    def __init__(self, config: dict[str, Any]) -> None:
        pass

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        n = batch.num_rows
        return pa.table(
            {
                "image_id": batch.column("image_id"),
                "value": pa.array([1] * n, pa.int8()),
                "error": pa.array([""] * n, pa.string()),
            }
        )


def _one_size(n: int, rows_per_file: int) -> dict[str, Any]:
    import pyarrow as pa
    import ray

    from ray_wsis.config import load_config
    from ray_wsis.pipeline.context import StageContext
    from ray_wsis.stages.base import RunOptions, Stage, run_stage
    from ray_wsis.stages.images import actor_op, blocks, run_images

    folder = tempfile.mkdtemp(prefix=f"scale{n}-")
    manifest, classes = _write_manifest(folder, n)
    config = load_config(
        None,
        [
            "dataset.format=manifest",
            f"dataset.manifest={manifest}",
            f"dataset.class_names_file={classes}",
            f"output={folder}/out",
            "ray.num_cpus=2",
            "ray.inference_actors=1",
            "ray.cpus_per_actor=1",
            f"ray.inference_batch_size={rows_per_file}",
            f"ray.rows_per_file={rows_per_file}",
            "ray.progress_bars=false",
        ],
    )
    schema = pa.schema([("image_id", pa.string()), ("value", pa.int8())])

    def body(run: Any) -> dict[str, Any]:
        records = run.ctx.split("train")
        by_id = {r.image_id: r.uri for r in records.records}

        def build(pending: list[str]) -> ray.data.Dataset:
            ds = ray.data.from_items(
                [{"image_id": i, "uri": by_id[i]} for i in pending],
                override_num_blocks=blocks(len(pending), rows_per_file),
            )
            return actor_op(run.ctx, ds, StubActor)

        return run_images(run, [(run.layout.root.child("stub"), schema)], records, build, {})

    stage = Stage(
        "scale-stub",
        "stub",
        "images",
        (),
        (),
        body,
        lambda layout, c: (layout.root.child("stub"),),
        lambda ctx: [r.image_id for r in ctx.split("train").records],
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    out: dict[str, Any] = {"size": n}
    for label in ("first", "rerun"):
        ctx = StageContext(config, log=lambda _m: None)
        wall, cpu = time.perf_counter(), time.process_time()
        summary = run_stage(ctx, stage, RunOptions())
        out[f"{label}_wall_s"] = round(time.perf_counter() - wall, 2)
        out[f"{label}_driver_cpu_s"] = round(time.process_time() - cpu, 2)
        out[f"{label}_action"] = summary["action"]
    out["processed"] = summary["kept"] + summary["processed"]
    out["failed_or_skipped"] = summary["skipped"] + summary["failed"]
    out["unaccounted"] = summary["unaccounted"]
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rows-per-file", type=int, default=1000)
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one_size(args.one, args.rows_per_file)))
        return
    runs = []
    for n in args.sizes:
        done = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--rows-per-file", str(args.rows_per_file)],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        if done.returncode:
            raise SystemExit(f"size {n} failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    seconds = [r["first_wall_s"] for r in runs]
    result = {
        "sizes": args.sizes,
        "driver_seconds": seconds,
        "driver_cpu_seconds": [r["first_driver_cpu_s"] for r in runs],
        "rerun_seconds": [r["rerun_wall_s"] for r in runs],
        "driver_peak_rss_gb": [r["peak_rss_gb"] for r in runs],
        "seconds_per_1000_images": [round(1000 * s / n, 3) for s, n in zip(seconds, args.sizes)],
        "unaccounted": [r["unaccounted"] for r in runs],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    if 1_000_000 in args.sizes:
        k = args.sizes.index(1_000_000)
        result["driver_seconds_1m"] = seconds[k]
        result["driver_peak_rss_gb_1m"] = result["driver_peak_rss_gb"][k]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
