"""Train the classifier in a plain loop (no Ray) and watch for a collapsed backbone.

    python bench/classifier_probe.py --root demo_data/synthetic_contexts \\
        --backbone efficientnet_lite0 --weights efficientnet_lite0.imagenet \\
        --optimizer adamw --lr 1e-3 --head-lr-scale 1 [--momentum 0.9] [--steps 225] [--seed 0]

The demo's classifier augmentation (configs/demo.yaml: 96-px crops, batches of 16), images drawn
at random each step, irn's poly decay, one thread. Prints a JSON line every 20 steps and a summary
JSON line last: the loss (mean of the last 20 steps) and, for the backbone's last block before the
1x1 head, the spread of its output across the images of the batch (``across_image_std``; near 0:
the features no longer depend on the image). docs/pretrained.md records the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from ray_wsis.config import load_config
from ray_wsis.data.voc import VOCSource
from ray_wsis.models.checkpoints import build_model
from ray_wsis.train.batches import ClassifierBatches, records_to_rows, rows_to_batch
from ray_wsis.train.optim import poly_optimizer, set_poly_lr

NUM_CLASSES = 20


def last_block_spread(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Across-image std of the output of the last backbone block before the classifier's input."""
    backbone = model.backbone
    h = x
    for name in ("conv1", "layer1", "layer2", "layer3"):
        h = getattr(backbone, name)(h)
    for block in list(backbone.layer4)[:-1]:
        h = block(h)
    return float(h.std(0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="demo_data/synthetic_contexts")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="efficientnet_lite0.imagenet")
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--head-lr-scale", type=float, default=1.0)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=225)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(
        "ray_wsis/configs/demo.yaml",
        [f"dataset.root={args.root}", f"model.backbone={args.backbone}", f"model.weights={args.weights}"],
    )
    records = VOCSource(config.dataset.root).records(config.dataset.train_split)
    batches = ClassifierBatches(config, NUM_CLASSES)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build_model("cam", args.backbone, NUM_CLASSES, weights=args.weights)
    backbone, head = model.parameter_groups()
    optimizer = poly_optimizer(
        args.optimizer, [(backbone, args.lr), (head, args.head_lr_scale * args.lr)], 1e-4, args.momentum
    )
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    curve = []
    for step in range(args.steps):
        picked = rng.choice(len(records), config.cam.batch_size, replace=False)
        batch = batches(rows_to_batch(records_to_rows([records[i] for i in picked])))
        x, target = torch.from_numpy(batch["image"]), torch.from_numpy(batch["target"])
        set_poly_lr(optimizer, step, args.steps)
        loss = F.multilabel_soft_margin_loss(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
        if (step + 1) % 20 == 0 or step == args.steps - 1:
            with torch.no_grad():
                point = {
                    "step": step + 1,
                    "loss": round(float(np.mean(losses[-20:])), 4),
                    "across_image_std": round(last_block_spread(model, x), 3),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            curve.append(point)
            print(json.dumps(point), flush=True)
    print(json.dumps({"bench": "classifier_probe", **vars(args), "final": curve[-1], "curve": curve}))


if __name__ == "__main__":
    main()
