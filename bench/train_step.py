"""Training throughput through Ray Train (1 worker) against the same loop without Ray.

    python bench/train_step.py [--backbone resnet50] [--crop 128] [--batch 8] [--steps 12]

Both sides train the same models with the same step functions (ray_wsis.train.loops) on the
same pre-augmented tensors: Ray Train + Ray Data ingest (iter_torch_batches) against a plain
Python loop over in-memory tensors. Steady state only: the first epoch (warm-up, worker
start) is excluded, and each side's rate is the median over the other epochs (on the shared
2-core box single epochs of one side varied by +-10% and one took 10x as long: a mean of
the two epochs after warm-up could not resolve a 5% target). Prints one JSON object with samples/s and
train_overhead_ratio (plain samples/s / Ray samples/s; 1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine  # noqa: E402


def make_arrays(kind: str, n: int, crop: int, seed: int = 0) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, 3, crop, crop), dtype=np.float32)
    if kind == "cam":
        return {"image": images, "target": (rng.random((n, 20)) < 0.2).astype(np.float32)}
    labels = rng.integers(0, 3, (n, crop // 4, crop // 4)).astype(np.uint8)
    labels[:, : crop // 16] = 255
    return {"image": images, "label": labels}


def config_for(kind: str, backbone: str, crop: int, batch: int) -> Any:
    from ray_wsis.config import load_config

    return load_config(
        None,
        [
            f"model.backbone={backbone}",
            f"cam.crop_size={crop}",
            f"irn.crop_size={crop}",
            f"cam.batch_size={batch}",
            f"irn.batch_size={batch}",
            "cam.frozen_stages=[]",
            "irn.train_backbone=true",
            "model.amp=true",
        ],
    )


def timed_epochs(model, optimizer, step_fn, epochs_of_batches, device) -> tuple[float, float]:
    """Median samples/s and mean seconds waiting for input, over every epoch after the first."""
    from statistics import median

    from ray_wsis.train.loops import run_epoch

    rates, waits, step = [], [], 0
    for epoch, batches in enumerate(epochs_of_batches):
        start = time.perf_counter()
        step, metrics = run_epoch(model, optimizer, step_fn, batches, step, 10_000, device)
        if epoch:
            rates.append(int(metrics["samples"]) / (time.perf_counter() - start))
            waits.append(metrics["data_wait_seconds"])
    return median(rates), sum(waits) / len(waits)


def build(kind: str, config: Any):
    from ray_wsis.train.loops import build_classifier, build_relation_net, step_function

    model, optimizer = build_classifier(config, 20) if kind == "cam" else build_relation_net(config, 20)
    return model, optimizer, step_function("cam" if kind == "cam" else "irnet", config)


def plain(kind: str, args: argparse.Namespace) -> tuple[float, float]:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = config_for(kind, args.backbone, args.crop, args.batch)
    model, optimizer, step_fn = build(kind, config)
    model.to(device)
    arrays = make_arrays(kind, args.steps * args.batch, args.crop)
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}

    def epoch():
        for i in range(0, len(tensors["image"]), args.batch):
            yield {k: v[i : i + args.batch] for k, v in tensors.items()}

    return timed_epochs(model, optimizer, step_fn, (epoch() for _ in range(args.epochs)), device)


def with_ray(kind: str, args: argparse.Namespace) -> tuple[float, float]:
    import ray
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    arrays = make_arrays(kind, args.steps * args.batch, args.crop)
    ds = ray.data.from_numpy(arrays["image"]).rename_columns({"data": "image"})
    other = "target" if kind == "cam" else "label"
    ds = ds.zip(ray.data.from_numpy(arrays[other]).rename_columns({"data": other})).materialize()

    def loop(cfg: dict) -> None:
        import torch

        torch.manual_seed(0)
        config = config_for(kind, args.backbone, args.crop, args.batch)
        model, optimizer, step_fn = build(kind, config)
        model = ray.train.torch.prepare_model(model)
        device = ray.train.torch.get_device()
        shard = ray.train.get_dataset_shard("train")
        epochs = (shard.iter_torch_batches(batch_size=args.batch, drop_last=True) for _ in range(args.epochs))
        rate, wait = timed_epochs(model, optimizer, step_fn, epochs, device)
        # Train V2 keeps Result.metrics only alongside a checkpoint: the number goes through a file
        # (one node: the worker and this driver share the disk).
        with open(result_file, "w") as f:
            json.dump({"samples_per_second": rate, "wait": wait}, f)

    use_gpu = bool(args.gpu)
    name = f"bench-{kind}-{time.time_ns()}"
    os.makedirs(args.storage, exist_ok=True)
    result_file = os.path.join(os.path.abspath(args.storage), name + ".json")
    trainer = TorchTrainer(
        loop,
        scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu, resources_per_worker={"CPU": args.threads}),
        run_config=RunConfig(name=name, storage_path=os.path.abspath(args.storage)),
        datasets={"train": ds},
    )
    trainer.fit()
    with open(result_file) as f:
        result = json.load(f)
    return result["samples_per_second"], result["wait"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=6, help="the first is warm-up")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--storage", default="/tmp/ray_wsis_bench")
    args = parser.parse_args()
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    report: dict[str, Any] = {
        "machine": machine(),
        "backbone": args.backbone,
        "crop": args.crop,
        "batch": args.batch,
        "threads": args.threads,
        "epochs": args.epochs,
        "rate": "median over epochs 2..",
    }
    ratios = []
    for kind in ("cam", "irnet"):
        base, base_wait = plain(kind, args)
        ray_rate, ray_wait = with_ray(kind, args)
        report[kind] = {
            "plain_samples_per_second": round(base, 3),
            "ray_samples_per_second": round(ray_rate, 3),
            "overhead_ratio": round(base / ray_rate, 3),
            "plain_input_wait_seconds_per_epoch": round(base_wait, 3),
            "ray_input_wait_seconds_per_epoch": round(ray_wait, 3),
        }
        ratios.append(base / ray_rate)
    report["train_overhead_ratio"] = round(max(ratios), 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
