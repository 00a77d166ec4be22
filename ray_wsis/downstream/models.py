"""torchvision DeepLabV3 and Mask R-CNN, built the same way for training, export and inference.

Model files are ``torch.save`` of a plain dict (header + CPU tensors), loadable with
``weights_only=True``, written and read by ``ray_wsis.models.checkpoints`` (format
``ray_wsis/downstream-1``). The header records what the
architecture depends on (backbone, classes, frozen BatchNorm, detector sizes), so a file
rebuilds its model without the config or the backbone weights it started from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.ops.misc import FrozenBatchNorm2d

from ray_wsis.config import Config, ConfigError
from ray_wsis.downstream.batches import detector_sizes
from ray_wsis.models.backbone import load_backbone_weights
from ray_wsis.models.checkpoints import check_header, load_state, load_weights_file, weights_file_bytes

FORMAT = "ray_wsis/downstream-1"
KINDS = ("deeplab", "maskrcnn")


@dataclass(frozen=True)
class ModelSpec:
    """Everything the architecture depends on; stored in the model file's header."""

    kind: str
    arch: str
    num_classes: int
    """Including background: len(class_names) + 1."""
    crop_size: int
    frozen_bn: bool = False
    """Mask R-CNN from pretrained weights uses frozen BatchNorm and trains layer2..4 (torchvision)."""

    def header(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "crop_size": self.crop_size,
            "frozen_bn": self.frozen_bn,
        }


def check_weights(weights: str) -> None:
    """Fail in the driver, not in every Train worker, on a weights setting that names nothing.

    A path must exist on every worker's node (a shared or baked-in file); an enum name is
    fetched by torchvision on first use.
    """
    if not weights or os.path.exists(weights):
        return
    try:
        torchvision.models.get_weight(weights)
    except (ValueError, KeyError, AttributeError):
        raise ConfigError(
            f"downstream.weights: {weights!r} is neither an existing file nor a torchvision "
            f"weights name like ResNet50_Weights.IMAGENET1K_V1"
        ) from None


def _load_weights(module: nn.Module, weights: str) -> None:
    try:
        load_backbone_weights(module, weights)
    except ValueError as exc:
        raise ValueError(str(exc).replace("model.weights", "downstream.weights")) from None


def _small_deeplab(arch: str, num_classes: int) -> nn.Module:
    """DeepLabV3 head on ResNet-18/34 (output stride 32: BasicBlocks cannot dilate), for CPU smoke runs."""
    resnet = getattr(torchvision.models, arch)(weights=None)
    backbone = IntermediateLayerGetter(resnet, return_layers={"layer4": "out"})
    return DeepLabV3(backbone, DeepLabHead(resnet.fc.in_features, num_classes), None)


def build_deeplab(spec: ModelSpec, weights: str = "") -> nn.Module:
    """torchvision DeepLabV3 (ResNet-50/101 at output stride 8, no aux head); backbone weights
    from a path or torchvision enum name, else from scratch."""
    if spec.arch in ("resnet50", "resnet101"):
        builder = deeplabv3_resnet101 if spec.arch == "resnet101" else deeplabv3_resnet50
        model = builder(weights=None, weights_backbone=None, num_classes=spec.num_classes, aux_loss=False)
    else:
        model = _small_deeplab(spec.arch, spec.num_classes)
    if weights:
        _load_weights(model.backbone, weights)
    return model


def build_maskrcnn(spec: ModelSpec, weights: str = "") -> nn.Module:
    """Mask R-CNN with a ResNet-FPN backbone, as ``maskrcnn_resnet50_fpn`` builds it.

    From scratch every stage trains with ordinary BatchNorm; from pretrained weights
    BatchNorm is frozen and conv1/layer1 stay fixed (torchvision's defaults for both).
    """
    norm = FrozenBatchNorm2d if spec.frozen_bn else nn.BatchNorm2d
    backbone = resnet_fpn_backbone(
        backbone_name=spec.arch, weights=None, norm_layer=norm, trainable_layers=3 if spec.frozen_bn else 5
    )
    if weights:
        _load_weights(backbone.body, weights)
    min_size, max_size = detector_sizes(spec.crop_size)
    return MaskRCNN(backbone, num_classes=spec.num_classes, min_size=min_size, max_size=max_size)


def build(spec: ModelSpec, weights: str = "") -> nn.Module:
    if spec.kind == "deeplab":
        return build_deeplab(spec, weights)
    if spec.kind == "maskrcnn":
        return build_maskrcnn(spec, weights)
    raise ValueError(f"model kind must be one of {KINDS}, got {spec.kind!r}")


def spec_for(kind: str, config: Config, num_classes: int) -> ModelSpec:
    """The spec of a config's downstream model (num_classes includes background)."""
    d = config.downstream
    return ModelSpec(kind, d.backbone, num_classes, d.crop_size, frozen_bn=kind == "maskrcnn" and bool(d.weights))


def model_bytes(model: nn.Module, spec: ModelSpec, meta: Optional[dict[str, Any]] = None) -> bytes:
    return weights_file_bytes(model, FORMAT, spec.header(), meta)


def load_model(data: bytes, expect_kind: str, source: str = "model file") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from its file (weights-only load); CheckpointError when it does not fit."""
    payload = load_weights_file(data, FORMAT, source, "a ray_wsis downstream model file")
    check_header(payload, expect_kind, source=source)
    spec = ModelSpec(
        payload["kind"],
        payload["arch"],
        int(payload["num_classes"]),
        int(payload["crop_size"]),
        bool(payload["frozen_bn"]),
    )
    model = build(spec)
    load_state(model, payload["state_dict"], f"{source} ({spec.kind}/{spec.arch})")
    return model, payload
