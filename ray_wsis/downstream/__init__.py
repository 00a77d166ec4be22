"""Downstream training: fully supervised DeepLabV3 and Mask R-CNN on the pseudo-labels.

The IRNet paper ends by training ordinary segmentation models on its pseudo-labels; this
package does that on Ray. Ray Data streams the Parquet shards (no export to disk), Ray
Train trains torchvision models with per-epoch checkpoints, and the trained models are
evaluated on a split with ground truth with the project's own evaluators plus COCOeval.

    from ray_wsis.downstream.train import train_downstream
    metrics = train_downstream(config, "semantic")   # or "instance"

Modules: ``data`` (Ray Data inputs and augmentation), ``models`` (torchvision builders and
weights-only model files), ``train`` (the Ray Train stage), ``evaluate`` (metrics),
``demo`` (both models on the demo's labels, with a comparison table).
"""

TASKS = ("semantic", "instance")
MODEL_KINDS = {"semantic": "deeplab", "instance": "maskrcnn"}
"""Model file and checkpoint suffix of each task: <output>/models/<kind>.pt, checkpoints/<run>-<kind>."""

__all__ = ["MODEL_KINDS", "TASKS"]
