"""Ablations of the method in the from-scratch regime, single process, on the synthetic set.

    python bench/ablation.py --config configs/demo.yaml --set irn.train_backbone=false ...

Prints one JSON object: the settings changed, CAM / relation-label / semantic / instance
quality on the inference split, and seconds per stage. Runs without Ray (ray_wsis.local).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from ray_wsis import local
from ray_wsis.config import load_config
from ray_wsis.data.sources import build_source
from ray_wsis.data.synthetic import make_synthetic_voc
from ray_wsis.method.predictors import AffinityPredictor, CamPredictor, Inference, IRNetPredictor
from ray_wsis.models.checkpoints import build_model


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--panels", default="", help="write a contact sheet of the first images here (PNG)")
    parser.add_argument("--cam-cache", default="", help="reuse (or save) the trained classifier state here")
    parser.add_argument("--label-cache", default="", help="reuse (or save) CAMs and relation labels here (.npz)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(args.config, args.overrides)
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    root = config.dataset.root
    if not os.path.isdir(os.path.join(root, "JPEGImages")):
        make_synthetic_voc(root)
    source = build_source(config.dataset, config.storage)
    train = source.records(config.dataset.train_split)
    infer = [r for r in source.records(config.dataset.infer_split) if r.class_ids]
    if config.dataset.limit:
        infer = infer[: config.dataset.limit]
    n_classes = len(source.class_names)
    device = torch.device("cpu")
    seconds = {}
    if args.cam_cache and os.path.exists(args.cam_cache):
        cam_state = torch.load(args.cam_cache, weights_only=True)
    else:
        cam_state, seconds["train_cam"] = local.timed(
            lambda: local.train_classifier(config, train, n_classes, device, log)
        )
        if args.cam_cache:
            torch.save(cam_state, args.cam_cache)
    cam_model = build_model("cam", config.model.backbone, n_classes)
    cam_model.load_state_dict(cam_state)
    images = local.load_inputs(infer, config)
    if args.label_cache and os.path.exists(args.label_cache):
        cached = np.load(args.label_cache)
        cams = {r.image_id: cached[f"cam/{r.image_id}"] for r in infer}
        ir_labels = {r.image_id: cached[f"ir/{r.image_id}"] for r in infer}
    else:
        cams, seconds["make_cams"] = local.timed(
            lambda: local.make_cams(
                config, infer, images, CamPredictor(cam_model, config.cam.scales, Inference(device))
            )
        )
        ir_labels, seconds["make_ir_labels"] = local.timed(lambda: local.make_ir_labels(config, infer, images, cams))
        if args.label_cache:
            np.savez(
                args.label_cache,
                **{f"cam/{k}": v for k, v in cams.items()},
                **{f"ir/{k}": v for k, v in ir_labels.items()},
            )
    relation_state, seconds["train_irn"] = local.timed(
        lambda: local.train_relation_net(config, infer, ir_labels, n_classes, cam_state, device, log)
    )
    kind = config.method
    net = build_model(kind, config.model.backbone, n_classes)
    net.load_state_dict(relation_state)
    predictor = (
        IRNetPredictor(net, config.walk, Inference(device))
        if kind == "irnet"
        else AffinityPredictor(net, config.affinity, config.walk.min_fragment_fraction, Inference(device))
    )
    labels, seconds["make_pseudo_labels"] = local.timed(
        lambda: local.make_pseudo_labels(infer, images, cams, predictor)
    )
    metrics = local.evaluate(config, source, infer, images, cams, ir_labels, labels)
    if kind == "irnet":
        metrics["sem_miou_by_threshold"] = local.semantic_threshold_sweep(
            config, source, infer, images, cams, predictor
        )
    if args.panels:
        from PIL import Image

        from ray_wsis.visualize.panels import colorize_label, contact_sheet, panel

        rows = []
        for r in infer[:8]:
            gt = source.ground_truth(r.image_id)
            lab = labels[r.image_id]
            rows.append(
                panel(
                    images[r.image_id],
                    cams[r.image_id].astype("float32"),
                    lab.boundary,
                    lab.displacement,
                    lab.semantic,
                    (lab.instances.masks, lab.instances.class_ids, lab.instances.scores),
                    gt.semantic if gt else None,
                    source.class_names,
                    r.class_ids,
                    extra=[("relation label", colorize_label(ir_labels[r.image_id]))],
                )
            )
        Image.fromarray(contact_sheet(rows)).save(args.panels)
    result = {
        "overrides": args.overrides,
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in metrics.items() if v is not None},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "images": len(infer),
        "threads": args.threads,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
