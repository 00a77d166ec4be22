"""Per-stage throughput: the real Ray Data stages against the same work in a plain loop.

    python bench/stages.py [--images 24] [--backbone resnet50] [--size 375 500] [--actors 1]

Images are synthetic 375x500 VOC-layout pictures; models are ResNet-50 with random weights
(speed does not depend on training; both sides run the same models). Ray side: the
make-cams, make-ir-labels and make-pseudo-labels stage functions on a local Ray with
`--actors` actors of 1 thread; the CRF of make-ir-labels runs in CPU tasks, one per logical
CPU (`ray_cpus`). Plain side: the same predictors, encoders and shard writes in one process
with 1 thread. Stage times include model loading and actor start-up. The two short stages
then run again (--force) on the same Ray, whose worker processes are now started with their
imports done; the difference to the first pass is that one-time start-up. Prints one JSON object: images_per_second per stage for both,
ray_overhead_ratio (Ray seconds / plain seconds, worst stage, cold),
warm_stage_overhead_ratio, cold_start_seconds, and where the plain loop's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine  # noqa: E402


def settings(root: str, output: str, args: argparse.Namespace) -> list[str]:
    return [f"dataset.root={root}", f"output={output}", f"model.backbone={args.backbone}",
            f"ray.inference_actors={args.actors}", "ray.cpus_per_actor=1", "ray.inference_batch_size=2",
            "ray.progress_bars=false", f"ray.num_cpus={os.cpu_count()}", "ray.rows_per_file=1000"]


def write_models(output: str, backbone: str) -> None:
    from ray_wsis.models.checkpoints import build_model, checkpoint_bytes
    from ray_wsis.storage import resolve, write_bytes_atomic

    for kind in ("cam", "irnet"):
        model = build_model(kind, backbone, 20)
        write_bytes_atomic(resolve(os.path.join(output, "models", f"{kind}.pt")),
                           checkpoint_bytes(model, kind, backbone, 20))


def ray_side(config: Any) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per stage on a fresh local Ray (cold), then the two short stages again (--force)."""
    from ray_wsis.pipeline.context import StageContext, init_ray
    from ray_wsis.pipeline.inference import make_cams, make_ir_labels, make_pseudo_labels

    init_ray(config)
    stages = (("make-cams", make_cams), ("make-ir-labels", make_ir_labels), ("make-pseudo-labels", make_pseudo_labels))
    cold, warm = {}, {}
    for name, fn in stages:
        start = time.perf_counter()
        fn(StageContext(config, log=lambda _m: None))
        cold[name] = time.perf_counter() - start
    for name, fn in stages[1:]:
        start = time.perf_counter()
        fn(StageContext(config, force=True, log=lambda _m: None))
        warm[name] = time.perf_counter() - start
    return cold, warm


def plain_side(config: Any) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The same per-image work in one process, instrumented per step."""
    import numpy as np
    import pyarrow as pa
    import torch

    from ray_wsis.data.sources import build_source
    from ray_wsis.infer.predictors import CamPredictor, IRNetPredictor
    from ray_wsis.masks import encode_label_png
    from ray_wsis.method.upsample import upsample_cams
    from ray_wsis.method.ir_labels import relation_labels
    from ray_wsis.models.checkpoints import model_from_checkpoint
    from ray_wsis.pipeline.schema import CAMS, IR_LABELS, PSEUDO_LABELS, pseudo_label_row, rows_to_table
    from ray_wsis.pipeline.sink import commit, split_rows
    from ray_wsis.storage import read_bytes, resolve

    torch.set_num_threads(1)
    source = build_source(config.dataset, config.storage)
    records = source.records(config.dataset.train_split)
    out = resolve(os.path.join(config.output, "plain"))
    parts: dict[str, dict[str, float]] = {s: {} for s in ("make-cams", "make-ir-labels", "make-pseudo-labels")}

    def add(stage: str, key: str, value: float) -> None:
        parts[stage][key] = parts[stage].get(key, 0.0) + value

    def decode(stage: str) -> dict[str, np.ndarray]:
        from ray_wsis.data.sources import load_image

        start = time.perf_counter()
        images = {r.image_id: load_image(r, config.storage) for r in records}
        add(stage, "decode", time.perf_counter() - start)
        return images

    def write(stage: str, rows: list[dict], schema: pa.Schema, folder: str) -> None:
        start = time.perf_counter()
        good, _ = split_rows(rows_to_table(rows, schema), stage, schema)
        commit(out.child(folder), good, retries=0)
        add(stage, "write", time.perf_counter() - start)

    seconds = {}
    models = resolve(os.path.join(config.output, "models"))
    # make-cams
    start = time.perf_counter()
    cam_model, _ = model_from_checkpoint(read_bytes(models.child("cam.pt")), "cam")
    predictor = CamPredictor(cam_model, config.cam.scales)
    images = decode("make-cams")
    cams, rows = {}, []
    for r in records:
        t = time.perf_counter()
        cams[r.image_id] = predictor(images[r.image_id], r.class_ids).astype(np.float16)
        add("make-cams", "model", time.perf_counter() - t)
        c = cams[r.image_id]
        rows.append({"image_id": r.image_id, "uri": r.uri, "height": images[r.image_id].shape[0],
                     "width": images[r.image_id].shape[1], "labels": list(r.class_ids), "cam_height": c.shape[1],
                     "cam_width": c.shape[2], "cam": c.tobytes(), "error": ""})
    write("make-cams", rows, CAMS, "cams")
    seconds["make-cams"] = time.perf_counter() - start
    # make-ir-labels
    start = time.perf_counter()
    images = decode("make-ir-labels")
    rows = []
    for r in records:
        t = time.perf_counter()
        image = images[r.image_id]
        full = upsample_cams(cams[r.image_id], *image.shape[:2])
        label = relation_labels(image, full, r.class_ids, config.ir_label)
        add("make-ir-labels", "crf", time.perf_counter() - t)
        t = time.perf_counter()
        rows.append({"image_id": r.image_id, "uri": r.uri, "height": image.shape[0], "width": image.shape[1],
                     "labels": list(r.class_ids), "ir_label": encode_label_png(label), "error": ""})
        add("make-ir-labels", "encode", time.perf_counter() - t)
    write("make-ir-labels", rows, IR_LABELS, "ir_labels")
    seconds["make-ir-labels"] = time.perf_counter() - start
    # make-pseudo-labels
    start = time.perf_counter()
    irn, _ = model_from_checkpoint(read_bytes(models.child("irnet.pt")), "irnet")
    labeler = IRNetPredictor(irn, config.walk)
    images = decode("make-pseudo-labels")
    rows = []
    for r in records:
        image = images[r.image_id]
        result = labeler(image, cams[r.image_id].astype(np.float32), r.class_ids)
        for key, value in result.seconds.items():
            add("make-pseudo-labels", key, value)
        t = time.perf_counter()
        inst = result.instances
        rows.append(pseudo_label_row(r.image_id, image.shape[0], image.shape[1], r.class_ids, result.semantic,
                                     inst.masks, inst.class_ids, inst.scores))
        add("make-pseudo-labels", "encode", time.perf_counter() - t)
    write("make-pseudo-labels", rows, PSEUDO_LABELS, "pseudo_labels")
    seconds["make-pseudo-labels"] = time.perf_counter() - start
    return seconds, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500))
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    from ray_wsis.config import load_config
    from ray_wsis.data.synthetic import make_synthetic_voc

    work = args.workdir or tempfile.mkdtemp(prefix="ray_wsis_stages_")
    root, output = os.path.join(work, "voc"), os.path.join(work, "out")
    if not os.path.isdir(os.path.join(root, "JPEGImages")):
        make_synthetic_voc(root, n_train=args.images, n_val=0, size=tuple(args.size), seed=11)
    write_models(output, args.backbone)
    config = load_config(None, settings(root, output, args))
    plain_seconds, parts = plain_side(config)
    ray_seconds, warm_seconds = ray_side(config)
    n = args.images
    report: dict[str, Any] = {"machine": machine(), "images": n, "size": list(args.size), "backbone": args.backbone,
                              "threads_per_worker": 1, "ray_actors": args.actors, "ray_cpus": os.cpu_count(),
                              "weights": "random"}
    report["images_per_second"] = {s: round(n / t, 3) for s, t in ray_seconds.items()}
    report["plain_images_per_second"] = {s: round(n / t, 3) for s, t in plain_seconds.items()}
    report["seconds_per_image"] = {s: round(t / n, 3) for s, t in ray_seconds.items()}
    report["plain_seconds_per_image"] = {s: round(t / n, 3) for s, t in plain_seconds.items()}
    report["stage_overhead_ratio"] = {s: round(ray_seconds[s] / plain_seconds[s], 3) for s in ray_seconds}
    report["ray_overhead_ratio"] = max(report["stage_overhead_ratio"].values())
    # the same short stages again on the same Ray: its worker processes are started and warm
    report["warm_images_per_second"] = {s: round(n / t, 3) for s, t in warm_seconds.items()}
    report["warm_stage_overhead_ratio"] = {s: round(t / plain_seconds[s], 3) for s, t in warm_seconds.items()}
    report["cold_start_seconds"] = {s: round(ray_seconds[s] - warm_seconds[s], 2) for s in warm_seconds}
    report["plain_time_breakdown_seconds_per_image"] = {
        s: {k: round(v / n, 3) for k, v in p.items()} for s, p in parts.items()}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
