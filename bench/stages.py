"""Per-stage throughput: the real Ray Data stages against the same work in a plain loop.

    python bench/stages.py [--cam-images 16] [--images 64] [--repeats 2] [--backbone resnet50] [--size 375 500]

Images are synthetic 375x500 VOC-layout pictures; models are ResNet-50 with random weights
(speed does not depend on training; both sides run the same models). Ray side: the
make-cams, make-ir-labels and make-pseudo-labels stage functions on a local Ray with
`--actors` actors of 1 thread; the CRF of make-ir-labels runs in CPU tasks, one per logical
CPU (`ray_cpus`). Plain side: the same predictors, encoders and shard writes in one process
with 1 thread. Stage times include model loading and actor start-up (its process, torch
import and model load), which the plain loop, already running, does not pay.

Each stage runs on both sides in ABBA order (plain, Ray, Ray, plain for --repeats 2), so
that a drift of this box during the run hits both sides of a ratio alike: it drifts by
+-10% (one actor's per-batch times rose from 5.4 to 6.5-8 s over one 64-image stage), and one
pair of runs could not resolve a 10% limit. make-cams (4 scales + flip, ~15 s an image on one
CPU thread) runs on `--cam-images` images; the two short stages on `--images` images, whose
CAMs the Ray make-cams makes first at one scale (untimed: those stages' work does not depend
on how their CAMs were made), and both sides read those CAM shards. An actor stage's fixed
start-up (~10-12 s: worker process, torch import, model load) is 28% of a 16-image
make-pseudo-labels and 7% of a 64-image one. Ray's session start-up (ray.init and Ray Data's
own actors, which the first Dataset execution of a driver starts) is timed and reported
apart, once. A stage's first Ray run is its cold run (its task workers not yet started).

Prints one JSON object: images_per_second per stage for both sides (means of the runs),
stage_overhead_ratio (Ray seconds / plain seconds), ray_overhead_ratio (the worst stage),
cold_stage_overhead_ratio (first runs only), every run's seconds, ray_session_start_seconds
and where the plain loop's time goes (its first run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine  # noqa: E402


def settings(root: str, output: str, args: argparse.Namespace) -> list[str]:
    return [
        f"dataset.root={root}",
        f"output={output}",
        f"model.backbone={args.backbone}",
        f"ray.inference_actors={args.actors}",
        "ray.cpus_per_actor=1",
        "ray.inference_batch_size=2",
        "ray.progress_bars=false",
        f"ray.num_cpus={os.cpu_count()}",
        "ray.rows_per_file=1000",
    ]


def write_models(output: str, backbone: str) -> None:
    from ray_wsis.models.checkpoints import build_model, checkpoint_bytes
    from ray_wsis.storage import resolve, write_bytes_atomic

    for kind in ("cam", "irnet"):
        model = build_model(kind, backbone, 20)
        write_bytes_atomic(
            resolve(os.path.join(output, "models", f"{kind}.pt")), checkpoint_bytes(model, kind, backbone, 20)
        )


@dataclass
class PlainTimer:
    """Seconds of the plain loop, summed per step of a stage."""

    parts: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, start: float) -> None:
        self.parts[key] = self.parts.get(key, 0.0) + time.perf_counter() - start


class PlainLoop:
    """The work of each stage in this process, 1 thread, instrumented per step."""

    def __init__(self, config: Any) -> None:
        import torch

        from ray_wsis.data.sources import build_source
        from ray_wsis.storage import resolve

        torch.set_num_threads(1)
        self.config = config
        self.records = build_source(config.dataset, config.storage).records(config.dataset.train_split)
        self.out = resolve(os.path.join(config.output, "plain"))
        self.models = resolve(os.path.join(config.output, "models"))

    def decode(self, timer: PlainTimer) -> dict[str, Any]:
        from ray_wsis.data.sources import load_image

        start = time.perf_counter()
        images = {r.image_id: load_image(r, self.config.storage) for r in self.records}
        timer.add("decode", start)
        return images

    def read_cams(self, timer: PlainTimer) -> dict[str, Any]:
        """The CAMs of every image from the CAM shards, as the Ray stages read them."""
        from ray_wsis.pipeline.layout import Layout
        from ray_wsis.pipeline.schema import cam_array
        from ray_wsis.pipeline.sink import read_table

        start = time.perf_counter()
        table = read_table(Layout.of(self.config).cams)
        cams = {row["image_id"]: cam_array(row) for row in table.to_pylist()} if table is not None else {}
        timer.add("read_cams", start)
        return cams

    def write(self, timer: PlainTimer, stage: str, rows: list[dict], schema: Any, folder: str) -> None:
        from ray_wsis.pipeline.schema import rows_to_table
        from ray_wsis.pipeline.sink import commit, split_rows

        start = time.perf_counter()
        good, _ = split_rows(rows_to_table(rows, schema), stage, schema)
        commit(self.out.child(folder), good, retries=0)
        timer.add("write", start)

    def make_cams(self, timer: PlainTimer) -> None:
        from ray_wsis.method.predictors import CamPredictor
        from ray_wsis.models.checkpoints import model_from_checkpoint
        from ray_wsis.pipeline.schema import CAMS, cam_row
        from ray_wsis.storage import read_bytes

        start = time.perf_counter()
        model, _ = model_from_checkpoint(read_bytes(self.models.child("cam.pt")), "cam")
        predictor = CamPredictor(model, self.config.cam.scales)
        timer.add("load_model", start)
        images, rows = self.decode(timer), []
        for r in self.records:
            start = time.perf_counter()
            cam = predictor(images[r.image_id], r.class_ids)
            timer.add("model", start)
            h, w = images[r.image_id].shape[:2]
            rows.append(cam_row(r.image_id, r.uri, h, w, list(r.class_ids), cam))
        self.write(timer, "make-cams", rows, CAMS, "cams")

    def make_ir_labels(self, timer: PlainTimer) -> None:
        from ray_wsis.masks import encode_label_png
        from ray_wsis.method.ir_labels import relation_labels
        from ray_wsis.method.upsample import upsample_cams
        from ray_wsis.pipeline.schema import IR_LABELS

        cams, images, rows = self.read_cams(timer), self.decode(timer), []
        for r in self.records:
            start = time.perf_counter()
            image = images[r.image_id]
            label = relation_labels(
                image, upsample_cams(cams[r.image_id], *image.shape[:2]), r.class_ids, self.config.ir_label
            )
            timer.add("crf", start)
            start = time.perf_counter()
            rows.append(
                {
                    "image_id": r.image_id,
                    "uri": r.uri,
                    "height": image.shape[0],
                    "width": image.shape[1],
                    "labels": list(r.class_ids),
                    "ir_label": encode_label_png(label),
                    "error": "",
                }
            )
            timer.add("encode", start)
        self.write(timer, "make-ir-labels", rows, IR_LABELS, "ir_labels")

    def make_pseudo_labels(self, timer: PlainTimer) -> None:
        from ray_wsis.method.predictors import IRNetPredictor, irnet_scores
        from ray_wsis.models.checkpoints import model_from_checkpoint
        from ray_wsis.pipeline.schema import SCORES, scores_row
        from ray_wsis.storage import read_bytes

        start = time.perf_counter()
        model, _ = model_from_checkpoint(read_bytes(self.models.child("irnet.pt")), "irnet")
        lowest = min(self.config.calibration.candidates)
        labeler = IRNetPredictor(model, self.config.walk, lowest_threshold=lowest)
        timer.add("load_model", start)
        cams, images, rows = self.read_cams(timer), self.decode(timer), []
        for r in self.records:
            image = images[r.image_id]
            start = time.perf_counter()
            maps = labeler.networks([image])[0]
            timer.add("model", start)
            walked = irnet_scores(maps, cams[r.image_id], r.class_ids, *image.shape[:2], self.config.walk, lowest)
            for key, value in walked.seconds.items():
                timer.parts[key] = timer.parts.get(key, 0.0) + value
            rows.append(scores_row(r.image_id, image.shape[0], image.shape[1], walked.scores))
        self.write(timer, "make-pseudo-labels", rows, SCORES, "scores")  # as the stage: the walked maps


def timed(run: Callable[..., Any], *args: Any) -> float:
    start = time.perf_counter()
    run(*args)
    return time.perf_counter() - start


def start_ray_session(config: Any) -> float:
    """ray.init plus one trivial Dataset execution: Ray Data starts its own actors (stats,
    autoscaling coordinator, actor location tracker; ~11 s of CPU on this box) at the first
    execution of a driver, once per job, not per stage."""
    import ray

    from ray_wsis.pipeline.context import init_ray

    start = time.perf_counter()
    init_ray(config)
    ray.data.range(2, override_num_blocks=1).map_batches(lambda b: b).materialize()
    return time.perf_counter() - start


def ray_stage(name: str, config: Any, force: bool) -> float:
    from ray_wsis.pipeline.context import StageContext
    from ray_wsis.stages.run import run_named

    return timed(lambda: run_named(StageContext(config, log=lambda _m: None), name, force))


def measure(config_cams: Any, config_short: Any, repeats: int) -> dict[str, Any]:
    """Each stage plain and on Ray in ABBA order (plain, Ray, Ray, plain, ...), `repeats` runs a side.

    The order cancels a linear drift of the box between the two sides of a ratio; every run is
    reported. The first Ray run of a stage is its cold run (task workers not yet started).
    """
    session = start_ray_session(config_cams)
    loops = {"cams": PlainLoop(config_cams), "short": PlainLoop(config_short)}
    stages = (
        ("make-cams", "make-cams", loops["cams"].make_cams, config_cams),
        ("make-ir-labels", "make-ir-labels", loops["short"].make_ir_labels, config_short),
        ("make-pseudo-labels", "make-pseudo-labels", loops["short"].make_pseudo_labels, config_short),
    )
    timers = {s[0]: PlainTimer() for s in stages}
    plain: dict[str, list[float]] = {s[0]: [] for s in stages}
    ray_runs: dict[str, list[float]] = {s[0]: [] for s in stages}
    prep = 0.0
    for name, fn, method, config in stages:
        if name == "make-ir-labels":
            prep = ray_stage("make-cams", config_short, force=False)  # the short stages' input, one scale
        for i in range(repeats):
            for side in ("plain", "ray") if i % 2 == 0 else ("ray", "plain"):
                if side == "plain":
                    plain[name].append(timed(method, timers[name] if i == 0 else PlainTimer()))
                else:
                    ray_runs[name].append(ray_stage(fn, config, force=bool(ray_runs[name])))
    return {
        "session": session,
        "prep": prep,
        "plain": plain,
        "ray": ray_runs,
        "parts": {s: t.parts for s, t in timers.items()},
    }


def report(args: argparse.Namespace, m: dict[str, Any]) -> dict[str, Any]:
    images = {"make-cams": args.cam_images, "make-ir-labels": args.images, "make-pseudo-labels": args.images}
    plain = {s: statistics.mean(v) for s, v in m["plain"].items()}
    ray_s = {s: statistics.mean(v) for s, v in m["ray"].items()}
    out: dict[str, Any] = {
        "machine": machine(),
        "images": images,
        "size": list(args.size),
        "backbone": args.backbone,
        "threads_per_worker": 1,
        "ray_actors": args.actors,
        "ray_cpus": os.cpu_count(),
        "weights": "random",
        "repeats": args.repeats,
        "order": "per stage ABBA: plain, Ray, Ray, plain, ...; figures are means of the runs",
    }
    out["images_per_second"] = {s: round(images[s] / t, 3) for s, t in ray_s.items()}
    out["plain_images_per_second"] = {s: round(images[s] / t, 3) for s, t in plain.items()}
    out["seconds_per_image"] = {s: round(t / images[s], 3) for s, t in ray_s.items()}
    out["plain_seconds_per_image"] = {s: round(t / images[s], 3) for s, t in plain.items()}
    out["ray_runs_seconds"] = {s: [round(t, 2) for t in v] for s, v in m["ray"].items()}
    out["plain_runs_seconds"] = {s: [round(t, 2) for t in v] for s, v in m["plain"].items()}
    out["stage_overhead_ratio"] = {s: round(ray_s[s] / plain[s], 3) for s in ray_s}
    out["ray_overhead_ratio"] = max(out["stage_overhead_ratio"].values())
    out["cold_stage_overhead_ratio"] = {s: round(v[0] / m["plain"][s][0], 3) for s, v in m["ray"].items()}
    out["ray_session_start_seconds"] = round(m["session"], 2)
    out["first_stage_ratio_with_session_start"] = round(
        (m["ray"]["make-cams"][0] + m["session"]) / m["plain"]["make-cams"][0], 3
    )
    out["short_stage_cams_prep_seconds"] = round(m["prep"], 2)
    out["plain_time_breakdown_seconds_per_image"] = {
        s: {k: round(v / images[s], 3) for k, v in p.items()} for s, p in m["parts"].items()
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cam-images", type=int, default=16, help="images of make-cams")
    parser.add_argument("--images", type=int, default=64, help="images of make-ir-labels and make-pseudo-labels")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500))
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side per stage, in ABBA order")
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    from ray_wsis.config import load_config
    from ray_wsis.data.synthetic import make_synthetic_voc

    work = args.workdir or tempfile.mkdtemp(prefix="ray_wsis_stages_")
    configs = []
    for name, n, extra in (("cams", args.cam_images, []), ("short", args.images, ["cam.scales=[1.0]"])):
        root, output = os.path.join(work, f"voc_{name}"), os.path.join(work, f"out_{name}")
        if not os.path.isdir(os.path.join(root, "JPEGImages")):
            make_synthetic_voc(root, n_train=n, n_val=0, size=tuple(args.size), seed=11)
        write_models(output, args.backbone)
        configs.append(load_config(None, settings(root, output, args) + extra))
    print(json.dumps(report(args, measure(*configs, max(1, args.repeats)))))


if __name__ == "__main__":
    main()
