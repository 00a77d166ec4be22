"""IRNet: class-boundary and displacement-field branches on the five backbone stages.

Channel sizes, GroupNorm groups, upsampling and crops follow irn net/resnet50_irn.py; the
input channels come from the backbone so ResNet-18/34 work as well. Outputs are at stride 4:
a boundary *logit* (B, 1, h, w) and a displacement (B, 2, h, w) = (dy, dx) in stride-4
pixels pointing to the pixel's instance centroid.
"""

from __future__ import annotations

import torch
from torch import nn

from ray_wsis.models.backbone import Backbone


def _unit(cin: int, cout: int, groups: int, upsample: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout)]
    if upsample > 1:  # upsample before the ReLU, as the reference
        layers.append(nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MeanShift(nn.Module):
    """Subtracts the mean displacement measured after training (eval mode only).

    The displacement loss constrains only differences D(p) - D(q), so the field carries an
    arbitrary global offset; irn measures it on the inference images and removes it here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x
        return x - self.running_mean.view(1, 2, 1, 1)


class IRNet(nn.Module):
    def __init__(self, backbone: Backbone, train_backbone: bool = False) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = backbone.channels
        self.backbone = backbone
        self.train_backbone = train_backbone
        self.edge1 = _unit(c1, 32, 4)
        self.edge2 = _unit(c2, 32, 4)
        self.edge3 = _unit(c3, 32, 4, upsample=2)
        self.edge4 = _unit(c4, 32, 4, upsample=4)
        self.edge5 = _unit(c5, 32, 4, upsample=4)
        self.edge6 = nn.Conv2d(160, 1, 1, bias=True)
        self.dp1 = _unit(c1, 64, 8)
        self.dp2 = _unit(c2, 128, 16)
        self.dp3 = _unit(c3, 256, 16)
        self.dp4 = _unit(c4, 256, 16, upsample=2)
        self.dp5 = _unit(c5, 256, 16, upsample=2)
        self.dp6 = _unit(768, 256, 16, upsample=2)
        self.dp7 = nn.Sequential(
            nn.Conv2d(448, 256, 1, bias=False),
            nn.GroupNorm(16, 256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 2, 1, bias=False),
        )
        self.mean_shift = MeanShift()
        if not train_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> IRNet:
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()  # irn: frozen backbone, statistics included
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train_backbone:
            x1, x2, x3, x4, x5 = self.backbone(x)
        else:
            with torch.no_grad():
                x1, x2, x3, x4, x5 = self.backbone(x)
        h, w = x2.shape[-2:]
        edges = [
            self.edge1(x1),
            self.edge2(x2),
            self.edge3(x3)[..., :h, :w],
            self.edge4(x4)[..., :h, :w],
            self.edge5(x5)[..., :h, :w],
        ]
        edge = self.edge6(torch.cat(edges, dim=1))
        d3 = self.dp3(x3)
        h3, w3 = d3.shape[-2:]
        d6 = self.dp6(torch.cat([d3, self.dp4(x4)[..., :h3, :w3], self.dp5(x5)[..., :h3, :w3]], dim=1))
        dp = self.dp7(torch.cat([self.dp1(x1), self.dp2(x2), d6[..., :h, :w]], dim=1))
        return edge, self.mean_shift(dp)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
        """(boundary branch, displacement branch, trainable backbone): irn gives dp 10x the lr."""
        edge = [p for n, p in self.named_parameters() if n.startswith("edge")]
        dp = [p for n, p in self.named_parameters() if n.startswith("dp")]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return edge, dp, backbone
