"""Multi-scale CAMs (irn step/make_cam.py) and the image tensor conversion."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ray_wsis.method.cam import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_class_ids,
    multiscale_cams,
    strided_size,
    to_tensor,
)
from ray_wsis.method.predictors import CamPredictor
from ray_wsis.method.upsample import upsample_cams
from ray_wsis.models.backbone import Backbone
from ray_wsis.models.cam_net import CAMNet

NUM_CLASSES = 6


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = CAMNet(Backbone("resnet18"), NUM_CLASSES).eval()
    with torch.no_grad():  # non-negative features x positive weights: every CAM is non-trivial
        net.classifier.weight.abs_()
    return net


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(1)
    return torch.randn(3, 37, 50)


def test_output_shape_for_odd_sizes(model, image):
    cams = multiscale_cams(model, image, [4, 2])
    assert cams.shape == (2, 10, 13)  # ceil(37/4), ceil(50/4)
    assert strided_size(37, 50) == (10, 13)


def test_each_map_is_max_normalised(model, image):
    cams = multiscale_cams(model, image, [1, 3, 6])
    peaks = cams.flatten(1).amax(1)
    assert (peaks <= 1).all()
    assert (peaks > 0.999).all()
    assert (cams >= 0).all()


def test_only_requested_classes_in_requested_order(model, image):
    everything = multiscale_cams(model, image, list(range(1, NUM_CLASSES + 1)))
    some = multiscale_cams(model, image, [5, 2])
    torch.testing.assert_close(some, everything[[4, 1]])
    # classes really differ, so a wrong row would show
    assert not torch.allclose(everything[4], everything[1], atol=1e-3)


def test_single_scale_matches_camnet_cams(model, image):
    ids = [3, 6]
    with torch.no_grad():
        plain = model.cams(image[None])[0, [2, 5]]
        flipped = model.cams(image.flip(-1)[None])[0, [2, 5]].flip(-1)
    for flip, raw in ((False, plain), (True, plain + flipped)):
        expected = F.interpolate(raw[None], size=(10, 13), mode="bilinear", align_corners=False)[0]
        expected = expected / (expected.flatten(1).amax(1).view(-1, 1, 1) + 1e-5)
        got = multiscale_cams(model, image, ids, scales=(1.0,), flip=flip)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_flip_augmentation_makes_maps_flip_equivariant(model, image):
    # with the mirrored pass summed after un-flipping, flipping the input flips the output
    ids = [1, 4]
    cams = multiscale_cams(model, image, ids, scales=(1.0, 0.5, 1.5))
    mirrored = multiscale_cams(model, image.flip(-1), ids, scales=(1.0, 0.5, 1.5))
    torch.testing.assert_close(mirrored, cams.flip(-1), rtol=1e-4, atol=1e-5)
    # without it the network alone is not equivariant at this odd width
    single = multiscale_cams(model, image, ids, scales=(1.0,), flip=False)
    single_mirrored = multiscale_cams(model, image.flip(-1), ids, scales=(1.0,), flip=False)
    assert (single_mirrored - single.flip(-1)).abs().max() > 1e-3


def test_scales_contribute(model, image):
    one = multiscale_cams(model, image, [2], scales=(1.0,))
    four = multiscale_cams(model, image, [2])
    assert four.shape == one.shape
    assert (four - one).abs().max() > 1e-3


def test_empty_class_list(model, image):
    cams = multiscale_cams(model, image, [])
    assert cams.shape == (0, 10, 13)


@pytest.mark.parametrize("ids", [[0], [NUM_CLASSES + 1], [2, -1]])
def test_class_ids_out_of_range(model, image, ids):
    with pytest.raises(ValueError, match="class_ids"):
        multiscale_cams(model, image, ids)


def test_duplicate_class_ids(model, image):
    with pytest.raises(ValueError, match="class_ids"):
        multiscale_cams(model, image, [2, 2])
    with pytest.raises(ValueError, match="repeat"):
        check_class_ids([1, 3, 1], NUM_CLASSES)
    assert check_class_ids([3, 1], NUM_CLASSES).tolist() == [3, 1]


def test_image_shape_error(model):
    with pytest.raises(ValueError, match="image"):
        multiscale_cams(model, torch.zeros(1, 3, 16, 16), [1])


def test_upsample_cams():
    cams = np.random.default_rng(0).random((2, 10, 13), dtype=np.float32)
    up = upsample_cams(cams, 37, 50)
    assert up.shape == (2, 37, 50) and up.dtype == np.float32
    np.testing.assert_allclose(upsample_cams(np.full((1, 10, 13), 0.3), 37, 50), np.full((1, 37, 50), 0.3), rtol=1e-6)
    # bilinear x4 (align_corners=False): full-res pixels 0 and 1 sample cell 0 exactly
    np.testing.assert_allclose(up[:, :2, :2], np.broadcast_to(cams[:, :1, :1], (2, 2, 2)), rtol=1e-6)
    np.testing.assert_allclose(
        up[:, 2, 2],
        0.875**2 * cams[:, 0, 0] + 0.875 * 0.125 * (cams[:, 0, 1] + cams[:, 1, 0]) + 0.125**2 * cams[:, 1, 1],
        rtol=1e-6,
    )
    assert upsample_cams(np.zeros((0, 10, 13)), 37, 50).shape == (0, 37, 50)
    with pytest.raises(ValueError, match="crop"):
        upsample_cams(cams, 41, 50)


@pytest.mark.parametrize(
    "shape, size", [((10, 13), (37, 50)), ((1, 1), (4, 4)), ((24, 32), (94, 125)), ((2, 2), (5, 3))]
)
def test_upsample_cams_matches_torch_bilinear(shape, size):
    """The numpy upsample (torch-free CPU tasks) equals F.interpolate(scale 4, align_corners=False)."""
    cams = torch.rand(3, *shape)
    ref = F.interpolate(cams[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, : size[0], : size[1]]
    np.testing.assert_allclose(upsample_cams(cams.numpy(), *size), ref.numpy(), rtol=0, atol=1e-6)


def test_to_tensor_normalises():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = to_tensor(img)
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    for c in range(3):
        expected = (img[..., c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        np.testing.assert_allclose(x[c].numpy(), expected, rtol=1e-5, atol=1e-5)
    readonly = img.copy()
    readonly.flags.writeable = False
    torch.testing.assert_close(to_tensor(readonly), x)
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(img.astype(np.float32))
    with pytest.raises(ValueError, match="H, W, 3"):
        to_tensor(img[..., :2])


@pytest.mark.parametrize("view", ["crop", "flip", "bgr"])
def test_to_tensor_accepts_non_contiguous_views(view):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    sliced = {"crop": img[2:9, 3:11], "flip": img[:, ::-1], "bgr": img[..., ::-1]}[view]
    torch.testing.assert_close(to_tensor(sliced), to_tensor(np.ascontiguousarray(sliced)))


def test_cam_predictor(model):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    predictor = CamPredictor(model, scales=(1.0, 0.5))
    out = predictor(img, [6, 1])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 10, 13)
    expected = multiscale_cams(model, to_tensor(img), [6, 1], scales=(1.0, 0.5)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6)
