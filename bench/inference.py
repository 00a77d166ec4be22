"""Inference, the per-image path against the batched one, on the same images and models, per core.

The old path is what the model actors did one image at a time: one image and its mirror per
forward pass, float32, and for make-pseudo-labels the walk, the instance assembly, the cut and
the encoding inside the actor. The new path is the pipeline's: many images per forward pass at
``model.precision`` (auto) in channels-last layout (CamPredictor.many / IRNetPredictor.networks),
then the walk (irnet_scores) and the cut (cut_labels + encoding) as CPU work of their own.
On one core every part runs one after the other, so images per second per core compares the
work each path does. ResNet-50 with random weights on VOC-sized images (375x500 and 500x375).

    python bench/inference.py [--images 8] [--batch 8] [--threads 1]

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine  # noqa: E402
from ray_wsis.config import WalkConfig  # noqa: E402
from ray_wsis.method.cam import multiscale_cams, to_tensor  # noqa: E402
from ray_wsis.method.predictors import (  # noqa: E402
    CamPredictor,
    Inference,
    IRNetPredictor,
    irnet_scores,
    pad_to_multiple,
)
from ray_wsis.method.scores import cut_labels  # noqa: E402
from ray_wsis.models.backbone import Backbone  # noqa: E402
from ray_wsis.models.cam_net import CAMNet  # noqa: E402
from ray_wsis.models.irnet import IRNet  # noqa: E402
from ray_wsis.models.precision import resolve_precision  # noqa: E402
from ray_wsis.pipeline.schema import at_original_size, pseudo_label_row  # noqa: E402

SCALES = (1.0, 0.5, 1.5, 2.0)
LOWEST = 0.05


def images_of(n: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random images (blurred noise with blobs): 3 of 4 landscape 375x500, the rest portrait."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (375, 500) if i % 4 != 3 else (500, 375)
        small = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3)).astype(np.float32)
        big = torch.nn.functional.interpolate(
            torch.from_numpy(small).permute(2, 0, 1)[None], size=(h, w), mode="bicubic", align_corners=False
        )[0]
        out.append(big.clamp(0, 255).permute(1, 2, 0).numpy().astype(np.uint8))
    return out


def encode(semantic_cut, found, height: int, width: int, labels) -> dict:  # type: ignore[no-untyped-def]
    """The label row's PNGs and RLEs, as the cut writes them."""
    return pseudo_label_row(
        "x",
        height,
        width,
        labels,
        *at_original_size(semantic_cut.label, semantic_cut.confidence, found.masks, height, width),
        found.class_ids,
        found.scores,
    )


@torch.inference_mode()
def old_networks(model: IRNet, image: np.ndarray) -> np.ndarray:
    """The actor's network step before batching: the image and its mirror, float32, NCHW."""
    h, w = -(-image.shape[0] // 4), -(-image.shape[1] // 4)
    x = to_tensor(image)[None]
    batch = pad_to_multiple(torch.cat([x, x.flip(-1)]))
    edge, dp = model(batch)
    edge, dp = edge[:, 0, :h, :w], dp[:, :, :h, :w]
    boundary = torch.sigmoid(edge[0] / 2 + edge[1].flip(-1) / 2)
    return torch.cat([boundary[None], dp[0]]).numpy()


def gemm_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def forward_flops(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(shape))
    return float(counter.get_total_flops())


def torch_ops(fn) -> int:  # type: ignore[no-untyped-def]
    """Torch operator calls made by fn() (torch.profiler, CPU)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return len(prof.events())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass of the new path")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = images_of(args.images)
    rng = np.random.default_rng(1)
    labels = [sorted(rng.choice(np.arange(1, 21), size=1 + i % 2, replace=False).tolist()) for i in range(len(images))]
    cam_net = CAMNet(Backbone("resnet50"), num_classes=20).eval()
    irnet = IRNet(Backbone("resnet50")).eval()
    walk = WalkConfig()
    device = torch.device("cpu")
    dtype = resolve_precision("auto", device)
    thresholds = (walk.sem_bg_threshold, walk.ins_bg_threshold, walk.min_fragment_fraction)

    # ---- make-cams, old: one image and its mirror per pass, float32, contiguous layout
    start = time.perf_counter()
    old_cams = [multiscale_cams(cam_net, to_tensor(im), ids, SCALES).numpy() for im, ids in zip(images, labels)]
    old_cam_s = time.perf_counter() - start
    # ---- make-cams, new
    cam_predictor = CamPredictor(cam_net, SCALES, Inference(device, dtype, args.batch))
    start = time.perf_counter()
    new_cams = cam_predictor.many(images, labels)
    new_cam_s = time.perf_counter() - start
    cam_flops = sum(
        2 * forward_flops(cam_predictor.model.backbone, (1, 3, round(im.shape[0] * s), round(im.shape[1] * s)))
        for im in images
        for s in SCALES
    )

    # ---- make-pseudo-labels, old: everything in the actor, one image (and mirror) per pass, float32
    old_labels = []
    start = time.perf_counter()
    for im, cams, ids in zip(images, old_cams, labels):
        scores = irnet_scores(old_networks(irnet, im), cams, ids, *im.shape[:2], walk, LOWEST).scores
        semantic, found = cut_labels(scores, *thresholds)
        encode(semantic, found, *im.shape[:2], ids)
        old_labels.append(semantic.label)
    old_label_s = time.perf_counter() - start

    # ---- make-pseudo-labels, new: batched network (actor), walk (CPU operator), cut + encode (cut-labels)
    new_irnet = IRNetPredictor(irnet, walk, Inference(device, dtype, args.batch), LOWEST)  # now channels-last
    start = time.perf_counter()
    maps = new_irnet.networks(images)
    actor_s = time.perf_counter() - start
    start = time.perf_counter()
    walked = [
        irnet_scores(m, c, ids, *im.shape[:2], walk, LOWEST) for m, c, ids, im in zip(maps, new_cams, labels, images)
    ]
    walk_s = time.perf_counter() - start
    new_labels = []
    start = time.perf_counter()
    for w_, im, ids in zip(walked, images, labels):
        semantic, found = cut_labels(
            w_.scores, walk.sem_bg_threshold, walk.ins_bg_threshold, walk.min_fragment_fraction
        )
        encode(semantic, found, *im.shape[:2], ids)
        new_labels.append(semantic.label)
    cut_s = time.perf_counter() - start
    new_label_s = actor_s + walk_s + cut_s
    padded = [(1, 3, -(-im.shape[0] // 16) * 16, -(-im.shape[1] // 16) * 16) for im in images]
    irn_flops = sum(2 * forward_flops(new_irnet.model, shape) for shape in padded)

    equal = sum(int((a == b).sum()) for a, b in zip(old_labels, new_labels))
    total = sum(a.size for a in old_labels)
    boundary = torch.from_numpy(maps[0][0])
    from ray_wsis.method.labels import boundary_walk

    operator = boundary_walk(boundary, walk.radius, walk.beta)
    seeds = torch.from_numpy(new_cams[0]) * (1 - boundary)
    network_s = cam_predictor.stats.seconds + new_irnet.stats.seconds
    network_gflops = (cam_flops + irn_flops) / network_s / 1e9
    gemm = gemm_gflops(dtype)
    n = len(images)
    cams, irn = cam_predictor.stats, new_irnet.stats
    result = {
        "images": n,
        "threads": args.threads,
        "dtype": str(dtype).replace("torch.", ""),
        "cams_old_images_per_s": round(n / old_cam_s, 3),
        "cams_new_images_per_s": round(n / new_cam_s, 3),
        "cams_speedup": round(old_cam_s / new_cam_s, 2),
        "labels_old_images_per_s": round(n / old_label_s, 3),
        "labels_new_images_per_s": round(n / new_label_s, 3),
        "labels_speedup": round(old_label_s / new_label_s, 2),
        "labels_new_seconds": {"network": round(actor_s, 2), "walk": round(walk_s, 2), "cut_encode": round(cut_s, 2)},
        "network_gflops": round(network_gflops, 1),
        "gemm_gflops": round(gemm, 1),
        "network_share_of_gemm": round(network_gflops / gemm, 3),
        "images_per_forward": round((cams.images + irn.images) / (cams.passes + irn.passes), 2),
        "forward_share": {
            "cams": round(cam_predictor.stats.seconds / new_cam_s, 3),
            "pseudo_labels": round(new_irnet.stats.seconds / actor_s, 3),
        },
        "walk_ops_per_image": {
            "cpu_compiled": torch_ops(lambda: operator(seeds, 2**walk.exp_times)),
            "eager": torch_ops(lambda: operator.eager(seeds, 2**walk.exp_times)),
        },
        "label_pixel_agreement": round(equal / total, 4),
        "device": str(device),
        "machine": machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
