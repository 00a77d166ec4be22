"""The multi-label classifier whose class activation maps seed everything (irn resnet50_cam)."""

from __future__ import annotations

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)[-1]
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
