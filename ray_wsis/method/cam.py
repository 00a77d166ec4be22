"""Multi-scale class activation maps (irn step/make_cam.py).

Per scale s in (1.0, 0.5, 1.5, 2.0) the image is resized (bicubic) and run together with its
mirror; the two maps are summed after un-flipping, resized bilinearly to the stride-4 size
ceil(H/4) x ceil(W/4), and summed over scales. Only the image's classes are computed
(a 1x1 conv with their weight rows), and each is divided by its spatial max + 1e-5. A classifier
trained with cam.context_rectify also zeroes each class's map where a stride-16 feature is nearer
its context prototype than its object one (method/negatives.py), at every scale and mirror.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ray_wsis.method.batching import ForwardStats, shape_groups
from ray_wsis.method.negatives import context_gate
from ray_wsis.models.cam_net import CAMNet
from ray_wsis.models.precision import autocast

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float normalised with torchvision's ImageNet statistics."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    array = np.ascontiguousarray(image)
    if not array.flags.writeable:
        array = array.copy()
    x = torch.from_numpy(array).to(device).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def strided_size(height: int, width: int, stride: int = 4) -> tuple[int, int]:
    return math.ceil(height / stride), math.ceil(width / stride)


def check_class_ids(class_ids: Sequence[int], num_classes: int, name: str = "class_ids") -> torch.Tensor:
    ids = torch.as_tensor(list(class_ids), dtype=torch.long)
    if ids.numel() and (ids.min() < 1 or ids.max() > num_classes):
        raise ValueError(f"{name} must lie in 1..{num_classes}, got {ids.tolist()}")
    if ids.unique().numel() != ids.numel():
        raise ValueError(f"{name} must not repeat, got {ids.tolist()}")
    return ids


def _prototypes(model: CAMNet, ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's (context, object) prototypes of the 1-based classes ``ids`` (all: None);
    zero rows, which gate nothing, unless it was trained with cam.context_rectify."""
    negative, positive = torch.as_tensor(model.context_negative), torch.as_tensor(model.context_positive)
    if ids is None:
        return negative, positive
    return negative[ids - 1], positive[ids - 1]


@torch.no_grad()
def multiscale_cams(
    model: CAMNet,
    image: torch.Tensor,
    class_ids: Sequence[int],
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
) -> torch.Tensor:
    """(K, ceil(H/4), ceil(W/4)) CAMs of the given 1-based classes, each max-normalised.

    image: (3, H, W) normalised float on the model's device.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    ids = check_class_ids(class_ids, model.num_classes).to(image.device)
    h, w = image.shape[-2:]
    out_size = strided_size(h, w)
    if ids.numel() == 0:
        return image.new_zeros(0, *out_size)
    weight = model.classifier.weight[ids - 1]
    total = image.new_zeros(len(ids), *out_size)
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = (
            image
            if size == (h, w)
            else F.interpolate(image[None], size=size, mode="bicubic", align_corners=False, antialias=scale < 1)[0]
        )
        batch = torch.stack([scaled, scaled.flip(-1)]) if flip else scaled[None]
        features = model.backbone(batch)[-1]
        cams = F.relu(F.conv2d(features, weight)) * context_gate(features, *_prototypes(model, ids))
        cam = cams[0] + cams[1].flip(-1) if flip else cams[0]
        total += F.interpolate(cam[None], size=out_size, mode="bilinear", align_corners=False)[0]
    return total / (total.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-5)


@torch.inference_mode()
def batched_cams(
    model: CAMNet,
    images: Sequence[torch.Tensor],
    class_ids: Sequence[Sequence[int]],
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    *,
    images_per_forward: int = 8,
    dtype: torch.dtype = torch.float32,
    stats: ForwardStats | None = None,
) -> list[torch.Tensor]:
    """:func:`multiscale_cams` of many images, with many images and their mirrors per forward pass.

    Images of one shape share each scale's pass (at most ``images_per_forward`` of them, so
    2x as many samples); the backbone runs under autocast to ``dtype`` in channels-last layout
    and the CAM head in float32. Returns one (K_i, ceil(H_i/4), ceil(W_i/4)) float32 tensor per
    image, in input order.
    """
    if len(images) != len(class_ids):
        raise ValueError(f"{len(images)} images for {len(class_ids)} class-id lists")
    ids = [check_class_ids(c, model.num_classes) for c in class_ids]
    for image in images:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    out: list[torch.Tensor | None] = [None] * len(images)
    for i, image in enumerate(images):
        if ids[i].numel() == 0:  # no class: nothing to run
            out[i] = image.new_zeros(0, *strided_size(*image.shape[-2:]))
    wanted = [i for i in range(len(images)) if out[i] is None]
    stats = stats if stats is not None else ForwardStats()
    weight = model.classifier.weight.float()
    prototypes = _prototypes(model)
    for group in shape_groups([(images[i].shape[-2], images[i].shape[-1]) for i in wanted], images_per_forward):
        members = [wanted[g] for g in group]
        batch = torch.stack([images[i] for i in members])
        h, w = batch.shape[-2:]
        out_size = strided_size(h, w)
        total = batch.new_zeros(len(members), weight.shape[0], *out_size, dtype=torch.float32)
        for scale in scales:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            scaled = (
                batch
                if size == (h, w)
                else F.interpolate(batch, size=size, mode="bicubic", align_corners=False, antialias=scale < 1)
            )
            both = torch.cat([scaled, scaled.flip(-1)]).contiguous(memory_format=torch.channels_last)
            with stats.timed(both.device, len(members)), autocast(both.device, dtype):
                features = model.backbone(both)[-1]
            cams = F.relu(F.conv2d(features.float(), weight)) * context_gate(features, *prototypes)
            cam = cams[: len(members)] + cams[len(members) :].flip(-1)
            total += F.interpolate(cam, size=out_size, mode="bilinear", align_corners=False)
        for j, i in enumerate(members):
            chosen = total[j, ids[i].to(total.device) - 1]
            out[i] = chosen / (chosen.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-5)
    return [o for o in out if o is not None]
