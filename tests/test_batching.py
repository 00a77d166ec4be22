"""Many images per forward pass give what one image per pass gives; precision resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_wsis.config import AffinityConfig, WalkConfig
from ray_wsis.method.batching import ForwardStats, shape_groups
from ray_wsis.method.cam import batched_cams, multiscale_cams, to_tensor
from ray_wsis.method.predictors import AffinityPredictor, Inference, IRNetPredictor
from ray_wsis.models.affinitynet import AffinityNet
from ray_wsis.models.backbone import Backbone
from ray_wsis.models.cam_net import CAMNet
from ray_wsis.models.irnet import IRNet
from ray_wsis.models.precision import resolve_precision

# mixed sizes, two of one shape, a one-pixel-wide and a one-pixel-high image
SHAPES = [(37, 50), (24, 31), (37, 50), (40, 1), (1, 33), (24, 31), (37, 50)]
CLASSES = [[3, 1], [], [7], [2], [5, 6], [1], [4]]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in SHAPES]


def test_shape_groups_keep_shapes_apart_and_cap_the_pass():
    groups = shape_groups(SHAPES, 2)
    assert groups == [[0, 2], [6], [1, 5], [3], [4]]
    assert sorted(i for g in shape_groups(SHAPES, 8) for i in g) == list(range(len(SHAPES)))
    with pytest.raises(ValueError, match="positive"):
        shape_groups(SHAPES, 0)


def test_batched_cams_equal_one_image_per_pass(images):
    torch.manual_seed(0)
    model = CAMNet(Backbone("resnet18"), num_classes=20).eval()
    tensors = [to_tensor(image) for image in images]
    stats = ForwardStats()
    batched = batched_cams(model, tensors, CLASSES, scales=(1.0, 0.5, 1.5), images_per_forward=4, stats=stats)
    for image, ids, got in zip(tensors, CLASSES, batched):
        expected = multiscale_cams(model, image, ids, scales=(1.0, 0.5, 1.5))
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # every image with a class ran once per scale, the three of one shape together (image 1 has no class)
    assert stats.images == 3 * sum(1 for ids in CLASSES if ids)
    assert stats.passes == 3 * 4 and stats.images_per_forward == pytest.approx(18 / 12)


def test_irnet_maps_batched_equal_one_image_per_pass(images):
    torch.manual_seed(1)
    model = IRNet(Backbone("resnet18"))
    many = IRNetPredictor(model, WalkConfig(), Inference(images_per_forward=8))
    one = IRNetPredictor(model, WalkConfig(), Inference(images_per_forward=1))
    batched = many.networks(images)
    for image, got in zip(images, batched):
        expected = one.networks([image])[0]
        assert got.shape == (3, -(-image.shape[0] // 4), -(-image.shape[1] // 4))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert many.stats.passes == 4 and one.stats.passes == len(images)


def test_the_walk_of_many_images_in_the_actor_equals_each_cpu_walk(images):
    """IRNetPredictor.walked (walk.runs_in: actor; the stencil of walk_many, float32, the images of
    one size in one call with their class counts padded) against irnet_scores' own walk (the
    compiled float64 kernel), image by image: mixed sizes, no class, one-pixel-wide images."""
    from ray_wsis.method.labels import boundary_walk

    torch.manual_seed(2)
    walk = WalkConfig(radius=3, exp_times=6)
    predictor = IRNetPredictor(IRNet(Backbone("resnet18")), walk, Inference(images_per_forward=8))
    maps = predictor.networks(images)
    rng = np.random.default_rng(3)
    cams = [rng.random((len(ids), *m.shape[1:])).astype(np.float32) for ids, m in zip(CLASSES, maps)]
    walked = predictor.walked(maps, cams)
    for m, cam, got in zip(maps, cams, walked):
        boundary = torch.from_numpy(m[0])
        expected = boundary_walk(boundary, walk.radius, walk.beta)(torch.from_numpy(cam) * (1 - boundary), 2**6)
        assert got.shape == cam.shape and got.dtype == np.float32
        if cam.size:
            assert np.abs(got - expected.numpy()).max() <= 1e-4 * float(expected.abs().max())


def test_scores_from_the_actors_walk_equal_the_tasks_own(images):
    """walk_task with the walked CAMs handed on (float16, as the actor sends them) stores the scores
    it stores when it walks itself, up to that rounding."""
    from ray_wsis.method.predictors import irnet_scores

    torch.manual_seed(4)
    walk = WalkConfig(radius=3, exp_times=6)
    predictor = IRNetPredictor(IRNet(Backbone("resnet18")), walk, Inference(images_per_forward=8))
    index = 0  # a 37x50 image with two classes
    maps = predictor.networks([images[index]])
    cams = [np.random.default_rng(5).random((2, *maps[0].shape[1:])).astype(np.float32)]
    handed_on = predictor.walked(maps, cams)[0].astype(np.float16).astype(np.float32)
    args = (maps[0], cams[0], CLASSES[index], *SHAPES[index], walk, 0.05)
    own, from_actor = irnet_scores(*args), irnet_scores(*args, handed_on)
    a, b = own.scores, from_actor.scores
    assert (a.height, a.width, a.class_ids.tolist()) == (b.height, b.width, b.class_ids.tolist())
    assert a.instance_classes.tolist() == b.instance_classes.tolist() and a.instance.shape == b.instance.shape
    for mine, theirs in ((a.semantic, b.semantic), (a.instance, b.instance)):  # uint8 of the peak
        assert mine.shape == theirs.shape
        assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="do not match"):
        irnet_scores(*args, handed_on[:1])


def test_affinity_maps_batched_equal_one_image_per_pass(images):
    torch.manual_seed(2)
    model = AffinityNet(Backbone("resnet18"))
    config = AffinityConfig()
    many = AffinityPredictor(model, config, inference=Inference(images_per_forward=8))
    one = AffinityPredictor(model, config, inference=Inference(images_per_forward=1))
    for image, got in zip(images, many.networks(images)):
        np.testing.assert_allclose(got, one.networks([image])[0], rtol=1e-4, atol=1e-5)


def test_bfloat16_cams_stay_close_to_float32(images):
    torch.manual_seed(3)
    model = CAMNet(Backbone("resnet18"), num_classes=20).eval()
    tensors = [to_tensor(image) for image in images[:3]]
    full = batched_cams(model, tensors, CLASSES[:3], scales=(1.0,))
    low = batched_cams(model, tensors, CLASSES[:3], scales=(1.0,), dtype=torch.bfloat16)
    # CAMs are max-normalised, so this bounds the error relative to the peak: a sanity bound for an
    # untrained network (the labels of trained ones are compared in docs/performance.md)
    for a, b in zip(full, low):
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
        assert a.numel() == 0 or 0 < (a - b).abs().max() < 0.15


def test_precision_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cuda) == torch.bfloat16
    assert resolve_precision("auto", cpu) in (torch.bfloat16, torch.float32)
    assert resolve_precision("float16", cpu) == torch.float16
    assert resolve_precision("float32", cuda) == torch.float32
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", cpu)
