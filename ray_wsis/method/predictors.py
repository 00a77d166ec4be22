"""One image through the method: a model on a device plus the math of method/.

The Ray Data actors of make-cams and make-pseudo-labels and the plain loops of bench/ and
local.py call these; encoding and storage are the stages' job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ray_wsis.config import AffinityConfig, Config, WalkConfig
from ray_wsis.method.cam import multiscale_cams, to_tensor
from ray_wsis.method.instances import Instances, walk_instances
from ray_wsis.method.labels import boundary_walk
from ray_wsis.method.path_index import path_index
from ray_wsis.method.random_walk import WalkOperator
from ray_wsis.method.relations import feature_affinity
from ray_wsis.method.scores import (
    WALKED_BACKGROUND,
    Thresholds,
    WalkScores,
    cut_labels,
    encode_region_scores,
    encode_scores,
)
from ray_wsis.method.upsample import upsample_cams
from ray_wsis.models.affinitynet import AffinityNet
from ray_wsis.models.cam_net import CAMNet
from ray_wsis.models.checkpoints import model_from_checkpoint
from ray_wsis.models.irnet import IRNet
from ray_wsis.storage import read_bytes, resolve


def device_for(config: Config) -> torch.device:
    """The actor's device: CUDA when ray.use_gpu and one is visible, else the CPU (never .cuda())."""
    return torch.device("cuda" if config.ray.use_gpu and torch.cuda.is_available() else "cpu")


def load_model(config: Config, kind: str) -> Any:
    """A stage's model from <output>/models/<kind>.pt (weights-only file)."""
    location = resolve(config.output, config.storage).child("models", f"{kind}.pt")
    model, _ = model_from_checkpoint(read_bytes(location), kind, config.model.backbone, source=location.uri)
    return model


def pad_to_multiple(x: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """Zero-pad (B, 3, H, W) on the right and bottom (irn pads to 512; any multiple of 16 works)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple))


class CamPredictor:
    def __init__(self, model: CAMNet, scales: Sequence[float], device: torch.device | str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.scales = tuple(scales)
        self.device = torch.device(device)

    def __call__(self, image: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
        """(K, ceil(H/4), ceil(W/4)) float32 CAMs of the image's classes."""
        cams = multiscale_cams(self.model, to_tensor(image, self.device), class_ids, self.scales)
        return cams.float().cpu().numpy()


@dataclass
class PseudoLabel:
    """One image's outputs at inference resolution, with the stride-4 maps that made them."""

    semantic: np.ndarray
    instances: Instances
    boundary: np.ndarray
    displacement: np.ndarray = field(default_factory=lambda: np.zeros((2, 0, 0), np.float32))
    seconds: dict[str, float] = field(default_factory=dict)
    scores: Optional[WalkScores] = None
    """The walked maps the labels were cut from (stored for calibration)."""
    confidence: Optional[np.ndarray] = None


class IRNetPredictor:
    """irn EdgeDisplacement + random walk + instance assembly; labels cut from stored-form scores.

    ``lowest_threshold``: the lowest background threshold the stored scores must serve (the
    calibration candidates); instance channels that cannot win at it are neither walked nor kept.
    """

    def __init__(
        self,
        model: IRNet,
        walk: WalkConfig,
        device: torch.device | str = "cpu",
        lowest_threshold: Optional[float] = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.walk = walk
        self.device = torch.device(device)
        lowest = min(walk.sem_bg_threshold, walk.ins_bg_threshold)
        self.lowest_threshold = lowest if lowest_threshold is None else min(lowest, lowest_threshold)

    @torch.no_grad()
    def boundary_displacement(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, w) boundary probability and (2, h, w) displacement at stride 4 (irn EdgeDisplacement)."""
        h, w = math.ceil(image.shape[0] / 4), math.ceil(image.shape[1] / 4)
        x = to_tensor(image, self.device)[None]
        batch = pad_to_multiple(torch.cat([x, x.flip(-1)]) if self.walk.flip else x)
        edge, dp = self.model(batch)
        edge, dp = edge[:, 0, :h, :w], dp[:, :, :h, :w]  # crop first: the flipped copy's image is top-left too
        edge_logit = edge[0] / 2 + edge[1].flip(-1) / 2 if self.walk.flip else edge[0]
        return torch.sigmoid(edge_logit), dp[0]

    @torch.no_grad()
    def __call__(self, image: np.ndarray, cams: np.ndarray, class_ids: Sequence[int]) -> PseudoLabel:
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        boundary, displacement = self.boundary_displacement(image)
        seconds["model"] = time.perf_counter() - start
        cam = torch.from_numpy(np.asarray(cams, np.float32)).to(self.device)
        if cam.shape[1:] != boundary.shape:
            raise ValueError(f"cams {tuple(cam.shape)} do not match the image's stride-4 size {tuple(boundary.shape)}")
        height, width = image.shape[:2]
        c = self.walk
        start = time.perf_counter()
        walk = boundary_walk(boundary, c.radius, c.beta)
        walked = walk(cam * (1.0 - boundary), 2**c.exp_times)
        seconds["walk"] = time.perf_counter() - start
        start = time.perf_counter()
        instance = walk_instances(
            cam,
            boundary,
            displacement,
            class_ids,
            walk=walk,
            exp_times=c.exp_times,
            lowest_threshold=self.lowest_threshold,
            centroid_iterations=c.centroid_iterations,
            cluster_threshold=c.cluster_threshold,
        )
        seconds["instance_walk"] = time.perf_counter() - start
        start = time.perf_counter()
        scores = encode_scores(
            height,
            width,
            class_ids,
            walked.cpu().numpy(),
            instance.channel_class.tolist(),
            instance.walked.cpu().numpy(),
            self.lowest_threshold,
        )
        semantic, found = cut_labels(scores, c.sem_bg_threshold, c.ins_bg_threshold, c.min_fragment_fraction)
        seconds["cut"] = time.perf_counter() - start
        return PseudoLabel(
            semantic.label,
            Instances(found.masks, found.class_ids, found.scores, instance.clusters),
            boundary.cpu().numpy(),
            displacement.cpu().numpy(),
            seconds,
            scores,
            semantic.confidence,
        )


class AffinityPredictor:
    """psa infer_aff.py on our walk: (1 + K)-channel walk at stride 8 with a (1 - max)^alpha background.

    The labels are psa's argmax over the walked background and classes; the walked maps are
    kept as scores, so calibrate can cut them at a constant background threshold too. psa has
    no instance branch: each connected region of a class is one instance."""

    def __init__(
        self,
        model: AffinityNet,
        config: AffinityConfig,
        min_fragment_fraction: float = 0.01,
        device: torch.device | str = "cpu",
        thresholds: Thresholds = WALKED_BACKGROUND,
    ) -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.min_fragment_fraction = min_fragment_fraction
        self.device = torch.device(device)
        self.thresholds = thresholds

    @torch.no_grad()
    def __call__(self, image: np.ndarray, cams: np.ndarray, class_ids: Sequence[int]) -> PseudoLabel:
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        height, width = image.shape[:2]
        h8, w8 = math.ceil(height / 8), math.ceil(width / 8)
        features = self.model(pad_to_multiple(to_tensor(image, self.device)[None]))[:, :, :h8, :w8]
        index = path_index(self.config.radius)
        affinity = feature_affinity(features, index, layout="same")[0]
        seconds["model"] = time.perf_counter() - start
        start = time.perf_counter()
        seeds = psa_seeds(np.asarray(cams, np.float32), height, width, self.config.bg_alpha)
        walked = (
            WalkOperator(affinity, index, self.config.beta)(
                torch.from_numpy(seeds).to(self.device), 2**self.config.exp_times
            )
            .cpu()
            .numpy()
        )
        seconds["walk"] = time.perf_counter() - start
        start = time.perf_counter()
        scores = encode_region_scores(height, width, class_ids, walked[1:], walked[:1], scale=8)
        semantic, found = cut_labels(scores, self.thresholds, self.thresholds, self.min_fragment_fraction)
        seconds["cut"] = time.perf_counter() - start
        boundary = 1.0 - affinity.amin(dim=0)
        return PseudoLabel(
            semantic.label,
            Instances(found.masks, found.class_ids, found.scores),
            boundary.cpu().numpy(),
            seconds=seconds,
            scores=scores,
            confidence=semantic.confidence,
        )


def psa_seeds(cams: np.ndarray, height: int, width: int, alpha: float) -> np.ndarray:
    """(1 + K, ceil(H/8), ceil(W/8)) psa walk input: at full resolution the background
    (1 - max CAM)^alpha and the CAMs, zero-padded to a multiple of 8, then averaged over 8x8
    blocks (psa infer_aff.py; the power before the pooling, as psa)."""
    full = upsample_cams(cams, height, width) if len(cams) else np.zeros((0, height, width), np.float32)
    peak = full.max(axis=0) if len(full) else np.zeros((height, width), np.float32)
    stack = np.concatenate([np.power(np.clip(1.0 - peak, 0, 1), alpha, dtype=np.float32)[None], full])
    h8, w8 = math.ceil(height / 8), math.ceil(width / 8)
    padded = np.zeros((len(stack), h8 * 8, w8 * 8), np.float32)
    padded[:, :height, :width] = stack
    return padded.reshape(len(stack), h8, 8, w8, 8).mean(axis=(2, 4))
