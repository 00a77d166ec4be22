"""Centroids, clusters, instances and semantic labels (irn make_ins_seg / make_sem_seg)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from ray_wsis.method import instances as instances_module
from ray_wsis.method.instances import (
    cluster_centroids,
    detections_from_label,
    find_centroids,
    instances_from_cams,
)
from ray_wsis.method.labels import argmax_with_background, boundary_walk, semantic_from_walk, semantic_labels


def grid(h, w):
    return torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")


def field_to(centres, regions, h, w, gain=1.0):
    """Displacement gain * (c - p) inside each region, 0 elsewhere."""
    yy, xx = grid(h, w)
    dp = torch.zeros(2, h, w)
    for (cy, cx), region in zip(centres, regions):
        dp[0][region] = gain * (cy - yy[region])
        dp[1][region] = gain * (cx - xx[region])
    return dp


# ----------------------------------------------------------------------------------------
# centroids and clusters


def test_find_centroids_converges_to_two_centres():
    h, w = 16, 24
    left = torch.zeros(h, w, dtype=torch.bool)
    left[:, :12] = True
    c1, c2 = (8.0, 5.0), (7.0, 18.0)
    dp = field_to([c1, c2], [left, ~left], h, w, gain=0.1)  # slow: 300 small steps are needed
    centroids = find_centroids(dp, iterations=300)
    assert centroids.shape == (2, h, w) and centroids.dtype == torch.long
    assert (centroids[0][left] == 8).all() and (centroids[1][left] == 5).all()
    assert (centroids[0][~left] == 7).all() and (centroids[1][~left] == 18).all()
    # too few steps leave the far pixels short of their centre
    early = find_centroids(dp, iterations=5)
    assert (early[1][:, 0] < 5).all()


def test_find_centroids_zero_field_and_clipping():
    zero = find_centroids(torch.zeros(2, 5, 7), iterations=10)
    yy, xx = grid(5, 7)
    assert torch.equal(zero[0], yy.long()) and torch.equal(zero[1], xx.long())
    outward = torch.full((2, 5, 7), 100.0)  # points off the map: clipped to the last row/column
    clipped = find_centroids(outward, iterations=3)
    assert (clipped[0] == 4).all() and (clipped[1] == 6).all()
    with pytest.raises(ValueError, match="displacement"):
        find_centroids(torch.zeros(3, 5, 7))


def test_find_centroids_interpolates_bilinearly():
    # one step from a pixel lands at a fractional point; the next step must interpolate there
    dp = torch.zeros(2, 1, 6)
    dp[1, 0, 0] = 2.5  # pixel 0 jumps to x = 2.5
    dp[1, 0, 2] = 1.0
    dp[1, 0, 3] = 3.0  # at 2.5 the step is (1 + 3) / 2 = 2 -> x = 4.5, rounded to 4 (half to even)
    out = find_centroids(dp, iterations=2)
    assert out[1, 0, 0].item() == 4


def test_cluster_centroids_two_clusters_and_background():
    h, w = 16, 24
    left = torch.zeros(h, w, dtype=torch.bool)
    left[:, :12] = True
    dp = field_to([(8.0, 5.0), (7.0, 18.0)], [left, ~left], h, w, gain=0.5)
    centroids = find_centroids(dp, 300).numpy()
    clusters = cluster_centroids(centroids, dp.numpy(), threshold=2.5)
    assert clusters.shape == (h, w)
    assert len(np.unique(clusters[left.numpy()])) == 1 and len(np.unique(clusters[~left.numpy()])) == 1
    assert clusters[0, 0] != clusters[0, -1]
    assert sorted(np.unique(clusters)) == [0, 1]  # consecutive ids from 0


# ----------------------------------------------------------------------------------------
# touching objects

H4 = W4 = 24  # stride-4 maps of a 96x96 image
ROWS = slice(6, 18)
A_COLS, B_COLS = slice(2, 12), slice(12, 22)
LINE = 12  # the first column of B carries the boundary between the two objects


def touching_scene(line=True, common_centre=False):
    objects = torch.zeros(H4, W4, dtype=torch.bool)
    objects[ROWS, 2:22] = True
    a = torch.zeros_like(objects)
    a[ROWS, A_COLS] = True
    b = objects & ~a
    cam = torch.zeros(1, H4, W4)
    cam[0][objects] = 1.0  # one CAM covers both objects
    if common_centre:
        dp = field_to([(11.0, 12.0)], [objects], H4, W4)
    else:
        dp = field_to([(11.0, 6.0), (11.0, 16.0)], [a, b], H4, W4)
    boundary = torch.zeros(H4, W4)
    ring = ndimage.binary_dilation(objects.numpy()) & ~objects.numpy()  # the class boundary around both
    boundary[torch.from_numpy(ring)] = 1.0
    if line:
        boundary[ROWS, LINE] = 1.0
    return cam, boundary, dp


def test_two_touching_objects_of_one_class_are_two_instances():
    cam, boundary, dp = touching_scene()
    result = instances_from_cams(cam, boundary, dp, [5], 96, 96)
    assert len(result) == 2
    assert result.masks.shape == (2, 96, 96) and result.masks.dtype == bool
    assert result.class_ids.tolist() == [5, 5]
    assert (result.scores > 0.9).all()
    assert not (result.masks[0] & result.masks[1]).any()
    # one mask per object: compare with the objects at full resolution
    expected_a = np.zeros((96, 96), bool)
    expected_a[24:72, 8:48] = True
    expected_b = np.zeros((96, 96), bool)
    expected_b[24:72, 52:88] = True  # B without its boundary column
    masks = sorted(result.masks, key=lambda m: np.nonzero(m)[1].mean())
    for mask, expected in zip(masks, (expected_a, expected_b)):
        iou = (mask & expected).sum() / (mask | expected).sum()
        assert iou > 0.85
    # three clusters: background, A and B
    assert len(np.unique(result.cluster_map)) == 3
    assert result.cluster_map[11, 6] != result.cluster_map[11, 16]


def test_one_object_without_the_line_and_with_one_centre():
    cam, boundary, dp = touching_scene(line=False, common_centre=True)
    result = instances_from_cams(cam, boundary, dp, [5], 96, 96)
    assert len(result) == 1 and result.class_ids.tolist() == [5]


def test_instance_shape_errors():
    cam, boundary, dp = touching_scene()
    with pytest.raises(ValueError, match="share"):
        instances_from_cams(cam[:, :-1], boundary, dp, [5], 96, 96)
    with pytest.raises(ValueError, match="share"):
        instances_from_cams(cam, boundary, dp[:, :, :-1], [5], 96, 96)
    with pytest.raises(ValueError, match="class_ids"):
        instances_from_cams(cam, boundary, dp, [5, 6], 96, 96)


# ----------------------------------------------------------------------------------------
# fragments


def test_small_fragments_score_zero_but_are_kept():
    label = np.zeros((50, 50), np.int64)  # 1% of the image = 25 pixels
    label[0:10, 0:10] = 1  # 100 px
    label[20:25, 20:25] = 1  # 25 px: exactly 1%, kept with its score
    label[40:44, 40:46] = 1  # 24 px: under 1%
    label[30:33, 0:3] = 2  # 9 px of another channel
    value = np.full((50, 50), 0.5, np.float32)
    value[5, 5], value[22, 22], value[41, 41] = 0.9, 0.7, 0.8
    found = detections_from_label(label, value, np.array([3, 8]), 0.01)
    masks, classes, scores = found.masks, found.class_ids, found.scores
    assert masks.shape == (4, 50, 50)
    areas = masks.sum(axis=(1, 2)).tolist()
    by_area = dict(zip(areas, zip(classes.tolist(), scores.tolist())))
    assert by_area[100] == (3, pytest.approx(0.9))
    assert by_area[25] == (3, pytest.approx(0.7))
    assert by_area[24] == (3, 0.0)
    assert by_area[9] == (8, 0.0)


def test_no_detections():
    found = detections_from_label(np.zeros((4, 5), np.int64), np.zeros((4, 5), np.float32), np.array([1]), 0.01)
    masks, classes, scores = found.masks, found.class_ids, found.scores
    assert masks.shape == (0, 4, 5) and classes.shape == (0,) and scores.shape == (0,)


def test_components_are_four_connected():
    label = np.zeros((6, 6), np.int64)
    label[1, 1] = label[2, 2] = 1  # diagonal neighbours: two detections
    masks = detections_from_label(label, np.ones((6, 6), np.float32), np.array([1]), 0.0).masks
    assert len(masks) == 2


# ----------------------------------------------------------------------------------------
# pruning in instances_from_cams is exact


def many_channel_scene():
    h = w = 20
    regions = []
    for r0, c0 in ((2, 2), (2, 11), (11, 6)):
        region = torch.zeros(h, w, dtype=torch.bool)
        region[r0 : r0 + 7, c0 : c0 + 7] = True
        regions.append(region)
    centres = [(5.0, 5.0), (5.0, 14.0), (14.0, 9.0)]
    dp = field_to(centres, regions, h, w)
    objects = regions[0] | regions[1] | regions[2]
    boundary = torch.from_numpy((ndimage.binary_dilation(objects.numpy()) & ~objects.numpy()).astype(np.float32))
    boundary += 0.1 * torch.rand(h, w, generator=torch.Generator().manual_seed(0))
    boundary = boundary.clamp(max=1.0)
    rng = torch.Generator().manual_seed(1)
    cams = torch.zeros(5, h, w)
    cams[0][regions[0]] = 1.0
    cams[1][regions[1]] = 0.8
    cams[2][regions[2]] = 0.7
    cams[1][regions[2]] = 0.3  # a weaker class over object 3 too
    cams[3] = 0.02 * torch.rand(h, w, generator=rng)  # weak classes everywhere
    cams[4] = 0.01 * torch.rand(h, w, generator=rng)
    cams[0] += 0.05 * torch.rand(h, w, generator=rng)  # every (class, cluster) channel is non-zero
    cams[2] += 0.05 * torch.rand(h, w, generator=rng)
    return cams, boundary, dp


def unpruned_instances(cams, boundary, dp, class_ids, height, width):
    """instances_from_cams without the pruning: every (class, cluster) channel is walked."""
    centroids = find_centroids(dp, 300).numpy()
    clusters = cluster_centroids(centroids, dp.numpy(), 2.5)
    n = int(clusters.max()) + 1
    onehot = torch.from_numpy(np.eye(n, dtype=np.float32)[clusters]).permute(2, 0, 1)
    seeds = (cams[:, None] * onehot[None]).flatten(0, 1) * (1.0 - boundary)
    walked = boundary_walk(boundary, 5, 10.0)(seeds, 256)
    result = argmax_with_background(walked, height, width, 0.25)
    return detections_from_label(result.label, result.value, np.repeat(np.asarray(class_ids), n), 0.01), n


def test_pruning_does_not_change_the_result():
    cams, boundary, dp = many_channel_scene()
    class_ids = [1, 2, 3, 4, 5]
    walk = boundary_walk(boundary, 5, 10.0)
    walked_channels = []

    def counting_walk(x, steps):
        walked_channels.append(x.shape[0])
        return walk(x, steps)

    got = instances_from_cams(cams, boundary, dp, class_ids, 78, 80, walk=counting_walk)
    found, n_clusters = unpruned_instances(cams, boundary, dp, class_ids, 78, 80)
    masks, classes, scores = found.masks, found.class_ids, found.scores
    assert n_clusters == 4 and 5 * n_clusters > 16  # more than one chunk of 16 channels
    assert sum(walked_channels) < 5 * n_clusters  # the pruning did skip channels
    assert len(got) == len(masks) >= 3
    np.testing.assert_array_equal(got.masks, masks)
    np.testing.assert_array_equal(got.class_ids, classes)
    np.testing.assert_array_equal(got.scores, scores)
    assert set(got.class_ids.tolist()) >= {1, 2, 3}


def test_pruning_matches_pruning_switched_off(monkeypatch):
    cams, boundary, dp = many_channel_scene()
    monkeypatch.setattr(instances_module, "_UPSAMPLE_PEAK_KEPT", 0.0)  # prune nothing
    reference = instances_from_cams(cams, boundary, dp, [1, 2, 3, 4, 5], 78, 80)
    monkeypatch.undo()
    pruned = instances_from_cams(cams, boundary, dp, [1, 2, 3, 4, 5], 78, 80)
    np.testing.assert_array_equal(pruned.masks, reference.masks)
    np.testing.assert_array_equal(pruned.scores, reference.scores)


# ----------------------------------------------------------------------------------------
# semantic labels


def enclosed_scene():
    h, w = 16, 16
    boundary = torch.zeros(h, w)
    boundary[2, 2:10] = boundary[9, 2:10] = 1.0  # a closed square ring, rows/cols 2..9
    boundary[2:10, 2] = boundary[2:10, 9] = 1.0
    cams = torch.zeros(1, h, w)
    cams[0, 5, 5] = 1.0  # a point seed inside the ring
    return cams, boundary


def test_semantic_seed_spreads_inside_the_enclosed_region_only():
    cams, boundary = enclosed_scene()
    label = semantic_labels(cams, boundary, [7], 62, 61)
    assert label.shape == (62, 61) and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 7}
    # the interior (stride-4 rows/cols 3..8 -> full-res 12..35) is filled, away from the ring
    assert (label[16:32, 16:32] == 7).all()
    # nothing outside the ring (full-res 40.. and the top-left margin)
    assert (label[44:, :] == 0).all() and (label[:, 44:] == 0).all() and (label[:6, :] == 0).all()
    # without the ring the seed spreads over the whole map
    free = semantic_labels(cams, torch.zeros(16, 16), [7], 62, 61)
    assert (free == 7).sum() > 2 * (label == 7).sum()


def test_semantic_two_regions_two_classes():
    cams, boundary = enclosed_scene()
    cams = torch.cat([cams, torch.zeros(1, 16, 16)])
    boundary[11, :] = 1.0  # a wall: rows 12.. are a second region
    cams[1, 14, 12] = 1.0
    label = semantic_labels(cams, boundary, [3, 12], 64, 64)
    assert (label[16:32, 16:32] == 3).all()
    assert (label[52:, :] == 12).all()
    assert set(np.unique(label)) == {0, 3, 12}


def test_semantic_shape_errors():
    cams, boundary = enclosed_scene()
    with pytest.raises(ValueError, match="cams"):
        semantic_labels(cams[:, :-1], boundary, [7], 64, 64)
    with pytest.raises(ValueError, match="class_ids"):
        semantic_from_walk(torch.zeros(2, 4, 4), [1], 16, 16, 0.25)


def test_argmax_with_background_matches_a_plain_argmax():
    gen = torch.Generator().manual_seed(3)
    maps = torch.rand(19, 6, 7, generator=gen) ** 4  # more than two chunks of 8
    result = argmax_with_background(maps, 23, 26, 0.25)
    up = torch.nn.functional.interpolate(maps[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    up = up[:, :23, :26] / up[:, :23, :26].max()
    plane = torch.full((1, 23, 26), 0.25)
    expected = torch.cat([plane, up]).argmax(0)
    np.testing.assert_array_equal(result.label, expected.numpy())
    np.testing.assert_allclose(result.value, up.max(0).values.numpy(), rtol=1e-6)
    empty = argmax_with_background(torch.zeros(2, 6, 7), 23, 26, 0.25)
    assert (empty.label == 0).all()


# ----------------------------------------------------------------------------------------
# predictors: the per-image wiring of the pieces above


@pytest.fixture(scope="module")
def small_image():
    rng = np.random.default_rng(4)
    return rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)


def test_irnet_predictor_flip_average_is_flip_equivariant(small_image):
    from ray_wsis.config import WalkConfig
    from ray_wsis.method.predictors import IRNetPredictor
    from ray_wsis.models.backbone import Backbone
    from ray_wsis.models.irnet import IRNet

    torch.manual_seed(5)
    predictor = IRNetPredictor(IRNet(Backbone("resnet18")), WalkConfig())
    boundary, dp = predictor.boundary_displacement(small_image)
    assert boundary.shape == (10, 13) and dp.shape == (2, 10, 13)
    assert ((boundary > 0) & (boundary < 1)).all()
    mirrored, _ = predictor.boundary_displacement(np.ascontiguousarray(small_image[:, ::-1]))
    torch.testing.assert_close(mirrored, boundary.flip(-1), rtol=1e-4, atol=1e-5)
    # without the flip average the boundary of the mirrored image is not the mirrored boundary
    plain = IRNetPredictor(predictor.model, WalkConfig(flip=False))
    b0, _ = plain.boundary_displacement(small_image)
    b1, _ = plain.boundary_displacement(np.ascontiguousarray(small_image[:, ::-1]))
    assert (b1 - b0.flip(-1)).abs().max() > 1e-4


def test_irnet_predictor_outputs(small_image):
    from ray_wsis.config import WalkConfig
    from ray_wsis.method.predictors import IRNetPredictor
    from ray_wsis.models.backbone import Backbone
    from ray_wsis.models.irnet import IRNet

    torch.manual_seed(6)
    predictor = IRNetPredictor(IRNet(Backbone("resnet18")), WalkConfig(centroid_iterations=20))
    cams = np.zeros((2, 10, 13), np.float32)
    cams[0, 2:6, 2:6] = 1.0
    cams[1, 5:9, 8:12] = 0.8
    out = predictor(small_image, cams, [4, 11])
    assert out.semantic.shape == (37, 50) and out.semantic.dtype == np.uint8
    assert set(np.unique(out.semantic)) <= {0, 4, 11} and (out.semantic == 4).any()
    assert out.boundary.shape == (10, 13) and out.displacement.shape == (2, 10, 13)
    assert out.instances.masks.shape[1:] == (37, 50)
    assert set(out.instances.class_ids.tolist()) <= {4, 11}
    assert {"model", "walk", "instance_walk", "cut"} <= set(out.seconds)
    with pytest.raises(ValueError, match="stride-4"):
        predictor(small_image, np.zeros((1, 9, 13), np.float32), [4])


def test_affinity_predictor_outputs(small_image):
    from ray_wsis.config import AffinityConfig
    from ray_wsis.method.predictors import AffinityPredictor
    from ray_wsis.models.affinitynet import AffinityNet
    from ray_wsis.models.backbone import Backbone

    torch.manual_seed(7)
    predictor = AffinityPredictor(AffinityNet(Backbone("resnet18")), AffinityConfig())
    cams = np.zeros((1, 10, 13), np.float32)
    cams[0, 2:8, 3:10] = 1.0
    out = predictor(small_image, cams, [6])
    assert out.semantic.shape == (37, 50) and set(np.unique(out.semantic)) <= {0, 6}
    assert (out.semantic == 6).any() and (out.semantic == 0).any()
    assert out.boundary.shape == (5, 7)
    assert out.instances.masks.shape[1:] == (37, 50)
