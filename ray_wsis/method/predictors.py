"""The method's networks on a device, and the CPU work after them.

The predictors run their network on many images per forward pass (``networks``, ``many``);
the walk and the instance assembly (:func:`irnet_scores`, :func:`affinity_scores`) take
what the network gave and run on the CPU. The model actors of make-cams and make-pseudo-labels
run the first, Ray Data CPU operators after them the second; a predictor's ``__call__`` runs
one image through both and the cut (tests, benchmarks). Encoding and storage are the stages' job.
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
from ray_wsis.method.batching import ForwardStats, shape_groups
from ray_wsis.method.cam import batched_cams, to_tensor
from ray_wsis.method.instances import Instances, walk_instances
from ray_wsis.method.labels import boundary_walk
from ray_wsis.method.path_index import path_index
from ray_wsis.method.random_walk import WalkOperator, walk_many
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
from ray_wsis.models import precision
from ray_wsis.models.affinitynet import AffinityNet
from ray_wsis.models.cam_net import CAMNet
from ray_wsis.models.checkpoints import model_from_checkpoint
from ray_wsis.models.irnet import IRNet
from ray_wsis.storage import read_bytes, resolve


def device_for(config: Config) -> torch.device:
    """The actor's device: CUDA when ray.use_gpu and one is visible, else the CPU (never .cuda())."""
    return precision.device_for(config.ray.use_gpu)


def load_model(config: Config, kind: str) -> Any:
    """A stage's model from <output>/models/<kind>.pt (weights-only file)."""
    location = resolve(config.output, config.storage).child("models", f"{kind}.pt")
    model, _ = model_from_checkpoint(read_bytes(location), kind, config.model.backbone, source=location.uri)
    return model


def pad_to_multiple(x: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """Zero-pad (B, 3, H, W) on the right and bottom (irn pads to 512; any multiple of 16 works)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple))


@dataclass(frozen=True)
class Inference:
    """How a predictor runs its network: device, compute dtype, images per forward pass."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    images_per_forward: int = 1

    @classmethod
    def of(cls, config: Config) -> Inference:
        device = device_for(config)
        return cls(device, precision.resolve_precision(config.model.precision, device), config.ray.inference_batch_size)


class CamPredictor:
    def __init__(self, model: CAMNet, scales: Sequence[float], inference: Inference = Inference()) -> None:
        self.model = precision.for_inference(model, inference.device)
        self.scales = tuple(scales)
        self.inference = inference
        self.stats = ForwardStats()

    def many(self, images: Sequence[np.ndarray], class_ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """(K, ceil(H/4), ceil(W/4)) float32 CAMs of each image's classes, many images per forward pass."""
        tensors = [to_tensor(image, self.inference.device) for image in images]
        cams = batched_cams(
            self.model,
            tensors,
            class_ids,
            self.scales,
            images_per_forward=self.inference.images_per_forward,
            dtype=self.inference.dtype,
            stats=self.stats,
        )
        return [c.cpu().numpy() for c in cams]

    def __call__(self, image: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
        """One image's CAMs (:meth:`many` of one)."""
        return self.many([image], [class_ids])[0]


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
    """irn EdgeDisplacement (batched, on the model's device), then the walk and instance assembly
    (:func:`irnet_scores`, CPU operators in the pipeline) and the cut of method/scores.py.

    ``lowest_threshold``: the lowest background threshold the stored scores must serve (the
    calibration candidates); instance channels that cannot win at it are neither walked nor kept.
    """

    def __init__(
        self,
        model: IRNet,
        walk: WalkConfig,
        inference: Inference = Inference(),
        lowest_threshold: Optional[float] = None,
    ) -> None:
        self.model = precision.for_inference(model, inference.device)
        self.walk = walk
        self.inference = inference
        lowest = min(walk.sem_bg_threshold, walk.ins_bg_threshold)
        self.lowest_threshold = lowest if lowest_threshold is None else min(lowest, lowest_threshold)
        self.stats = ForwardStats()

    def networks(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per image a (3, ceil(H/4), ceil(W/4)) float32 stack: boundary probability, then the
        displacement (dy, dx) (irn EdgeDisplacement), many same-shape images per forward pass."""
        return [m.cpu().numpy() for m in self.maps_on_device(images)]

    @torch.inference_mode()
    def maps_on_device(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """:meth:`networks`' maps left on the predictor's device (for :meth:`walked` there)."""
        out: list[Optional[torch.Tensor]] = [None] * len(images)
        device, dtype = self.inference.device, self.inference.dtype
        for group in shape_groups([image.shape[:2] for image in images], self.inference.images_per_forward):
            h, w = math.ceil(images[group[0]].shape[0] / 4), math.ceil(images[group[0]].shape[1] / 4)
            x = torch.stack([to_tensor(images[i], device) for i in group])
            n = len(group)
            batch = pad_to_multiple(torch.cat([x, x.flip(-1)]) if self.walk.flip else x)
            with self.stats.timed(device, n), precision.autocast(device, dtype):
                edge, dp = self.model(batch.contiguous(memory_format=torch.channels_last))
            edge, dp = edge[:, 0, :h, :w].float(), dp[:, :, :h, :w].float()  # crop first: the mirror is top-left too
            edge_logit = edge[:n] / 2 + edge[n:].flip(-1) / 2 if self.walk.flip else edge
            stacked = torch.cat([torch.sigmoid(edge_logit)[:, None], dp[:n]], dim=1)
            for j, i in enumerate(group):
                out[i] = stacked[j]
        return [o for o in out if o is not None]

    @torch.inference_mode()
    def walked(self, maps: Sequence[np.ndarray | torch.Tensor], cams: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each image's semantic walk, the one :func:`irnet_scores` runs (its CAMs times one minus
        the boundary, walked on the boundary affinities), on the predictor's device: the images of
        one map size in one :func:`walk_many` call, their class counts zero-padded to the group's
        largest (a zero channel walks to zero). ``maps`` as :meth:`networks` gives them (or
        :meth:`maps_on_device`, with no copy), ``cams`` (K, h, w); per image (K, h, w) float32 on
        the host."""
        device, steps = self.inference.device, 2**self.walk.exp_times
        sizes = [(int(m.shape[1]), int(m.shape[2])) for m in maps]
        out = [np.zeros((cam.shape[0], *size), np.float32) for cam, size in zip(cams, sizes)]
        for group in shape_groups(sizes, self.inference.images_per_forward):
            channels = max(cams[i].shape[0] for i in group)
            if channels == 0:
                continue
            boundaries = [torch.as_tensor(maps[i][0], dtype=torch.float32, device=device) for i in group]
            x = torch.zeros(len(group), channels, *boundaries[0].shape, device=device)
            for j, i in enumerate(group):
                x[j, : cams[i].shape[0]] = torch.from_numpy(np.asarray(cams[i], np.float32)).to(device) * (
                    1.0 - boundaries[j]
                )
            operators = [boundary_walk(b, self.walk.radius, self.walk.beta) for b in boundaries]
            walked = walk_many(operators, x, steps).cpu().numpy()
            for j, i in enumerate(group):
                out[i] = walked[j, : cams[i].shape[0]]
        return out

    def boundary_displacement(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, w) boundary probability and (2, h, w) displacement at stride 4 of one image."""
        maps = torch.from_numpy(self.networks([image])[0])
        return maps[0], maps[1:]

    def __call__(self, image: np.ndarray, cams: np.ndarray, class_ids: Sequence[int]) -> PseudoLabel:
        """One image through the whole method, cut at walk.*_bg_threshold (tests, benchmarks)."""
        start = time.perf_counter()
        maps = self.networks([image])[0]
        model_seconds = time.perf_counter() - start
        height, width = image.shape[:2]
        found = irnet_scores(maps, cams, class_ids, height, width, self.walk, self.lowest_threshold)
        start = time.perf_counter()
        c = self.walk
        semantic, detections = cut_labels(found.scores, c.sem_bg_threshold, c.ins_bg_threshold, c.min_fragment_fraction)
        seconds = {"model": model_seconds, **found.seconds, "cut": time.perf_counter() - start}
        return PseudoLabel(
            semantic.label,
            Instances(detections.masks, detections.class_ids, detections.scores, found.clusters),
            maps[0],
            maps[1:],
            seconds,
            found.scores,
            semantic.confidence,
        )


@dataclass
class Walked:
    """The walk's result for one image: stored-form scores, the clusters and where the time went."""

    scores: WalkScores
    clusters: np.ndarray
    seconds: dict[str, float]


@torch.inference_mode()
def irnet_scores(
    maps: np.ndarray,
    cams: np.ndarray,
    class_ids: Sequence[int],
    height: int,
    width: int,
    walk: WalkConfig,
    lowest_threshold: float,
    walked_cams: Optional[np.ndarray] = None,
) -> Walked:
    """The walk of the CAMs on the boundary affinities and the instance assembly of one image,
    from IRNet's (3, h, w) maps (:meth:`IRNetPredictor.networks`); CPU work (numba walk).
    ``walked_cams``: the semantic walk already run (:meth:`IRNetPredictor.walked`, in the model
    actor); the instance walk still runs here."""
    boundary = torch.from_numpy(np.asarray(maps[0], np.float32))
    displacement = torch.from_numpy(np.asarray(maps[1:], np.float32))
    cam = torch.from_numpy(np.asarray(cams, np.float32))
    if cam.shape[1:] != boundary.shape:
        raise ValueError(f"cams {tuple(cam.shape)} do not match the image's stride-4 size {tuple(boundary.shape)}")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    operator = boundary_walk(boundary, walk.radius, walk.beta)
    if walked_cams is None:
        walked = operator(cam * (1.0 - boundary), 2**walk.exp_times)
    elif walked_cams.shape != cam.shape:
        raise ValueError(f"walked CAMs {walked_cams.shape} do not match the CAMs {tuple(cam.shape)}")
    else:
        walked = torch.from_numpy(np.asarray(walked_cams, np.float32))
    seconds["walk"] = time.perf_counter() - start
    start = time.perf_counter()
    instance = walk_instances(
        cam,
        boundary,
        displacement,
        class_ids,
        walk=operator,
        exp_times=walk.exp_times,
        lowest_threshold=lowest_threshold,
        centroid_iterations=walk.centroid_iterations,
        cluster_threshold=walk.cluster_threshold,
    )
    seconds["instance_walk"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = encode_scores(
        height,
        width,
        class_ids,
        walked.numpy(),
        instance.channel_class.tolist(),
        instance.walked.numpy(),
        lowest_threshold,
    )
    seconds["encode"] = time.perf_counter() - start
    return Walked(scores, instance.clusters, seconds)


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
        inference: Inference = Inference(),
        thresholds: Thresholds = WALKED_BACKGROUND,
    ) -> None:
        self.model = precision.for_inference(model, inference.device)
        self.config = config
        self.min_fragment_fraction = min_fragment_fraction
        self.inference = inference
        self.thresholds = thresholds
        self.stats = ForwardStats()

    @torch.inference_mode()
    def networks(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per image the (D, ceil(H/8), ceil(W/8)) float32 feature affinities of its pixel pairs."""
        out: list[Optional[np.ndarray]] = [None] * len(images)
        device, dtype = self.inference.device, self.inference.dtype
        index = path_index(self.config.radius)
        for group in shape_groups([image.shape[:2] for image in images], self.inference.images_per_forward):
            h8, w8 = math.ceil(images[group[0]].shape[0] / 8), math.ceil(images[group[0]].shape[1] / 8)
            batch = pad_to_multiple(torch.stack([to_tensor(images[i], device) for i in group]))
            with self.stats.timed(device, len(group)), precision.autocast(device, dtype):
                features = self.model(batch.contiguous(memory_format=torch.channels_last))
            affinity = feature_affinity(features[:, :, :h8, :w8].float(), index, layout="same").cpu().numpy()
            for j, i in enumerate(group):
                out[i] = affinity[j]
        return [o for o in out if o is not None]

    def __call__(self, image: np.ndarray, cams: np.ndarray, class_ids: Sequence[int]) -> PseudoLabel:
        start = time.perf_counter()
        affinity = self.networks([image])[0]
        model_seconds = time.perf_counter() - start
        height, width = image.shape[:2]
        found = affinity_scores(affinity, cams, class_ids, height, width, self.config)
        start = time.perf_counter()
        semantic, detections = cut_labels(found.scores, self.thresholds, self.thresholds, self.min_fragment_fraction)
        seconds = {"model": model_seconds, **found.seconds, "cut": time.perf_counter() - start}
        return PseudoLabel(
            semantic.label,
            Instances(detections.masks, detections.class_ids, detections.scores),
            1.0 - affinity.min(axis=0),
            seconds=seconds,
            scores=found.scores,
            confidence=semantic.confidence,
        )


@torch.inference_mode()
def affinity_scores(
    affinity: np.ndarray, cams: np.ndarray, class_ids: Sequence[int], height: int, width: int, config: AffinityConfig
) -> Walked:
    """psa's walk of one image from its (D, h8, w8) feature affinities; CPU work (numba walk)."""
    start = time.perf_counter()
    index = path_index(config.radius)
    seeds = psa_seeds(np.asarray(cams, np.float32), height, width, config.bg_alpha)
    operator = WalkOperator(torch.from_numpy(np.asarray(affinity, np.float32)), index, config.beta)
    walked = operator(torch.from_numpy(seeds), 2**config.exp_times).numpy()
    seconds = {"walk": time.perf_counter() - start}
    start = time.perf_counter()
    scores = encode_region_scores(height, width, class_ids, walked[1:], walked[:1], scale=8)
    seconds["encode"] = time.perf_counter() - start
    return Walked(scores, np.zeros((0, 0), np.int64), seconds)


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
