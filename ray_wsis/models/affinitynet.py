"""AffinityNet (psa resnet38_aff) on the ResNet family, at stride 8.

Features from layer2 (stride 8), layer3 and layer4 (stride 16, upsampled x2) are reduced to
64/128/256 channels (1x1 conv, no bias, ELU), concatenated (448) and mixed by a 1x1 conv
(448, ELU). The affinity of two pixels is exp(-mean_c |f_i - f_j|) (psa). Unlike IRN the
backbone is fine-tuned, as psa does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ray_wsis.models.backbone import Backbone


class AffinityNet(nn.Module):
    stride = 8

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        _, _, c3, c4, c5 = backbone.channels
        self.backbone = backbone
        self.f8_3 = nn.Conv2d(c3, 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(c4, 128, 1, bias=False)
        self.f8_5 = nn.Conv2d(c5, 256, 1, bias=False)
        self.f9 = nn.Conv2d(448, 448, 1, bias=False)
        for conv in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 448, ceil(H/8), ceil(W/8)) embedding whose L1 distances give affinities."""
        _, _, x3, x4, x5 = self.backbone(x)
        h, w = x3.shape[-2:]
        up = lambda t: F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)  # noqa: E731
        f = torch.cat([F.elu(self.f8_3(x3)), F.elu(up(self.f8_4(x4))), F.elu(up(self.f8_5(x5)))], dim=1)
        return F.elu(self.f9(f))

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(trainable backbone, new layers): psa gives the new layers 10x the lr."""
        head = [p for n, p in self.named_parameters() if n.startswith("f8") or n.startswith("f9")]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return backbone, head
