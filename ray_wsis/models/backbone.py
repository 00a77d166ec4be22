"""torchvision ResNet with IRN's strides and stage split.

IRN runs ResNet with strides (2, 2, 2, 1) for (conv1, layer2, layer3, layer4): layer4 keeps
stride 1 without dilation, so the last feature map has output stride 16 while the maxpool
keeps its stride 2. Both the classifier and IRNet read five stages:

    conv1 (conv1+bn1+relu+maxpool, stride 4), layer1 (4), layer2 (8), layer3 (16), layer4 (16).

With pretrained weights the BatchNorm statistics stay fixed (irn's FixedBatchNorm: running
stats always, affine still trainable); from scratch they must be learned.

``efficientnet_lite0`` (models/efficientnet_lite.py) provides the same five stages at the same
strides; docs/pretrained.md says what another backbone must provide.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal, Optional

import torch
import torchvision
from torch import nn

from ray_wsis.models import efficientnet_lite

STAGES: tuple[str, ...] = ("conv1", "layer1", "layer2", "layer3", "layer4")
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
ARCHITECTURES = RESNETS + (efficientnet_lite.ARCH,)


class FixedStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics (irn FixedBatchNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )


def _fix_batch_norm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, FixedStatsBatchNorm2d):
            fixed = FixedStatsBatchNorm2d(child.num_features, eps=child.eps)
            fixed.load_state_dict(child.state_dict())
            setattr(module, name, fixed)
        else:
            _fix_batch_norm(child)


def freeze_batch_norm(module: nn.Module) -> None:
    """Every BatchNorm of ``module`` normalises with its running statistics and stops learning its
    affine parameters (psa's frozen BN for AffinityNet)."""
    _fix_batch_norm(module)
    for child in module.modules():
        if isinstance(child, nn.BatchNorm2d):
            for p in child.parameters():
                p.requires_grad_(False)


def load_backbone_weights(model: nn.Module, weights: str, arch: str = "") -> None:
    """Load ImageNet (or any) ResNet weights from a local path or a torchvision enum name.

    A path is read with ``torch.load(weights_only=True)``; the ``fc.*`` keys of an ImageNet
    checkpoint are dropped. A name such as ``ResNet50_Weights.IMAGENET1K_V1`` (or
    ``IMAGENET1K_V1`` alone) goes through torchvision, which downloads it on first use.
    """
    if os.path.exists(weights):
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    else:
        try:
            if "." in weights or not arch:
                enum = torchvision.models.get_weight(weights)
            else:
                enum = torchvision.models.get_model_weights(arch)[weights]
        except (ValueError, KeyError, AttributeError):
            raise ValueError(
                f"model.weights: {weights!r} is neither an existing file nor a torchvision "
                f"weights name like ResNet50_Weights.IMAGENET1K_V1"
            ) from None
        state = enum.get_state_dict(progress=False)
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: weights of another architecture
        raise ValueError(
            f"model.weights {weights!r} does not fit this backbone: "
            f"{str(exc).splitlines()[1] if len(str(exc).splitlines()) > 1 else exc}"
        ) from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"model.weights {weights!r} does not fit this backbone: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )


class Backbone(nn.Module):
    """A ResNet (or EfficientNet-Lite0) split into IRN's five stages; returns every stage's features."""

    def __init__(
        self,
        arch: str = "resnet50",
        weights: str = "",
        batch_norm: Literal["auto", "frozen", "train"] = "auto",
        frozen_stages: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"model.backbone must be one of {ARCHITECTURES}, got {arch!r}")
        if batch_norm not in ("auto", "frozen", "train"):
            raise ValueError(f"batch_norm must be auto, frozen or train, got {batch_norm!r}")
        unknown = [s for s in frozen_stages if s not in STAGES]
        if unknown:
            raise ValueError(f"frozen_stages: unknown stages {unknown}; valid: {STAGES}")
        self.arch = arch
        fix_statistics = batch_norm == "frozen" or (batch_norm == "auto" and bool(weights))
        if arch == efficientnet_lite.ARCH:
            stages = efficientnet_lite.build_stages(weights)  # output stride 16, weights loaded
            if fix_statistics:
                _fix_batch_norm(stages)
            for name in STAGES:
                setattr(self, name, stages[name])
            self.channels: tuple[int, ...] = efficientnet_lite.CHANNELS
        else:
            if weights.lower() == efficientnet_lite.IMAGENET_WEIGHTS:
                raise ValueError(
                    f"model.weights {weights!r} are EfficientNet-Lite0 weights: "
                    f"set model.backbone: {efficientnet_lite.ARCH}"
                )
            resnet = getattr(torchvision.models, arch)(weights=None)
            if weights:
                load_backbone_weights(resnet, weights, arch)
            _set_layer4_stride_one(resnet)
            if fix_statistics:
                _fix_batch_norm(resnet)
            self.conv1 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
            self.layer1, self.layer2 = resnet.layer1, resnet.layer2
            self.layer3, self.layer4 = resnet.layer3, resnet.layer4
            self.channels = _stage_channels(resnet)
        self.frozen_stages = tuple(frozen_stages)
        self.freeze(self.frozen_stages)

    def freeze(self, stages: Sequence[str]) -> None:
        """Stop gradients into these stages; their BatchNorm statistics stop updating too."""
        self.frozen_stages = tuple(stages)
        for name in STAGES:
            for p in getattr(self, name).parameters():
                p.requires_grad_(name not in self.frozen_stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for name in self.frozen_stages:
            getattr(self, name).eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for name in STAGES:
            x = getattr(self, name)(x)
            features.append(x)
        return features


def _set_layer4_stride_one(resnet: nn.Module) -> None:
    block = resnet.layer4[0]
    if hasattr(block, "conv3"):  # Bottleneck (torchvision v1.5: the stride sits on conv2)
        block.conv2.stride = (1, 1)
    else:  # BasicBlock
        block.conv1.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


def _stage_channels(resnet: Any) -> tuple[int, ...]:
    def out_channels(layer: Any) -> int:
        last = layer[-1]
        return int((last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels)

    return (
        int(resnet.conv1.out_channels),
        out_channels(resnet.layer1),
        out_channels(resnet.layer2),
        out_channels(resnet.layer3),
        out_channels(resnet.layer4),
    )


def build_backbone(
    arch: str,
    weights: str = "",
    batch_norm: str = "auto",
    frozen_stages: Sequence[str] = (),
    init_state: Optional[dict] = None,
) -> Backbone:
    """Build a backbone, optionally starting from another model's backbone state dict."""
    backbone = Backbone(arch, weights, batch_norm, frozen_stages)  # type: ignore[arg-type]
    if init_state is not None:
        missing, unexpected = backbone.load_state_dict(init_state, strict=False)
        if missing or unexpected:
            raise ValueError(f"backbone state does not fit {arch}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return backbone
