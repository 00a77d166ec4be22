"""The multi-label classifier whose class activation maps seed everything (irn resnet50_cam)."""

from __future__ import annotations

from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import nn

from ray_wsis.models.backbone import Backbone


class CAMNet(nn.Module):
    """ResNet -> global average pooling -> 1x1 conv without bias -> one logit per class.

    The CAM of class c is ``ReLU(conv(features, W_c))`` on the stride-16 feature map, the
    same weights that score the pooled features (irn CAM.forward).
    """

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(backbone.channels[-1], num_classes, 1, bias=False)
        # Per class, unit feature vectors of its context (where its CAM fires on images without
        # it) and of its object (its CAM peaks), mined in training with cam.context_rectify
        # (method/negatives.py); a zero row: none mined. CAMs are gated by them at inference.
        channels = backbone.channels[-1]
        self.register_buffer("context_negative", torch.zeros(num_classes, channels))
        self.register_buffer("context_positive", torch.zeros(num_classes, channels))
        self.register_load_state_dict_pre_hook(_without_prototypes)

    @overload
    def forward(self, x: torch.Tensor, maps: Literal[False] = False) -> torch.Tensor: ...

    @overload
    def forward(self, x: torch.Tensor, maps: Literal[True]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def forward(self, x: torch.Tensor, maps: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits (B, num_classes); with ``maps`` also the stride-16 features and the raw class maps
        before the ReLU, for negative mining (method/negatives.py). The logits are the same either
        way: the 1x1 head is linear, so pooling the maps is pooling the features first."""
        features = self.backbone(x)[-1]
        if maps:
            raw = F.conv2d(features, self.classifier.weight)
            return raw.mean(dim=(2, 3)), features, raw
        pooled = features.mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """(B, num_classes, ceil(H/16), ceil(W/16)) non-negative activation maps."""
        features = self.backbone(x)[-1]
        return F.relu(F.conv2d(features, self.classifier.weight))

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(trainable backbone params, head params): irn trains the head at 10x the lr."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return backbone, list(self.classifier.parameters())


def _without_prototypes(module: nn.Module, state: dict, prefix: str, *_: object) -> None:
    """Model files written before the context prototypes existed load with none mined."""
    for name in ("context_negative", "context_positive"):
        if prefix + name not in state:
            state[prefix + name] = torch.zeros_like(getattr(module, name))
