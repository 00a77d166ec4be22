"""The walk's stored evidence (method/scores.py): quantisation, the cut, and its round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_wsis.method.instances import instances_from_cams, walk_instances
from ray_wsis.method.labels import argmax_with_background, boundary_walk
from ray_wsis.method.scores import (
    LEVELS,
    Thresholds,
    WalkScores,
    cut_instances,
    cut_labels,
    cut_semantic,
    droppable,
    encode_scores,
    keep_confident,
    partition_instances,
    quantise,
)
from ray_wsis.method.upsample import upsample_cams
from ray_wsis.pipeline.schema import SCORES, rows_to_table, scores_row, walk_scores


def _maps(seed: int, k: int, h: int = 12, w: int = 15) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((k, h, w)).astype(np.float32) ** 3


def test_quantise_keeps_the_peak_and_zero():
    maps = _maps(0, 3)
    q = quantise(maps)
    assert q.dtype == np.uint8 and q.max() == LEVELS
    assert np.abs(q / LEVELS - maps / maps.max()).max() <= 0.5 / LEVELS + 1e-6
    assert not quantise(np.zeros((2, 4, 4))).any()
    assert quantise(np.zeros((0, 4, 4))).shape == (0, 4, 4)


@pytest.mark.parametrize("threshold", [0.1, 0.25, 0.5, 0.8])
def test_semantic_cut_is_irns_argmax_over_a_background_plane(threshold):
    maps = _maps(1, 3)
    q = quantise(maps)
    scores = WalkScores(
        45, 58, np.array([2, 5, 9], np.int16), q, np.zeros(0, np.int16), np.zeros((0, 12, 15), np.uint8)
    )
    cut = cut_semantic(scores, threshold)
    reference = argmax_with_background(torch.from_numpy(q.astype(np.float32)), 45, 58, threshold)
    keys = np.array([0, 2, 5, 9], np.uint8)
    assert np.array_equal(cut.label, keys[reference.label])


def test_per_class_thresholds_apply_to_the_winning_class():
    maps = _maps(2, 2)
    scores = WalkScores(
        45, 58, np.array([3, 4], np.int16), quantise(maps), np.zeros(0, np.int16), np.zeros((0, 12, 15), np.uint8)
    )
    low = cut_semantic(scores, 0.2).label
    mixed = cut_semantic(scores, Thresholds(0.2, {4: 0.9})).label
    assert np.array_equal(mixed == 3, low == 3)  # class 3 keeps the shared threshold
    assert (mixed == 4).sum() < (low == 4).sum()
    assert not ((mixed == 4) & (low != 4)).any()


def test_kept_relation_labels_replace_the_cut_where_they_are_confident_only():
    """walk.keep_relation_labels: pixel by pixel, a confident relation label (a class or 0) wins
    with full confidence; the unlabelled band (255) keeps the walk's cut and its confidence."""
    maps = _maps(5, 2)
    scores = WalkScores(
        45, 58, np.array([3, 4], np.int16), quantise(maps), np.zeros(0, np.int16), np.zeros((0, 12, 15), np.uint8)
    )
    rng = np.random.default_rng(7)
    relation = rng.choice(np.array([0, 3, 4, 255], np.uint8), size=(45, 58))
    walk_only, _ = cut_labels(scores, 0.3, 0.3, 0.0)
    kept, _ = cut_labels(scores, 0.3, 0.3, 0.0, relation)
    for y in range(45):
        for x in range(58):
            if relation[y, x] == 255:
                assert kept.label[y, x] == walk_only.label[y, x]
                assert kept.confidence[y, x] == walk_only.confidence[y, x]
            else:
                assert kept.label[y, x] == relation[y, x] and kept.confidence[y, x] == LEVELS
    assert np.array_equal(keep_confident(walk_only.label, relation), kept.label)
    # no relation labels (an image outside the train split), or labels of another size: the cut
    for other in (None, relation[:-1]):
        same, _ = cut_labels(scores, 0.3, 0.3, 0.0, other)
        assert np.array_equal(same.label, walk_only.label) and np.array_equal(same.confidence, walk_only.confidence)


def test_instances_that_follow_the_semantic_label_tile_it_pixel_by_pixel():
    """walk.instances_follow_semantic, against a brute-force version: every pixel of class c goes to
    the class-c instance channel highest there (class 5 has two channels, class 3 one); class 9 has
    none and is one region valued by its walked semantic map; background pixels are in no instance;
    each 4-connected region of a channel is a detection scored by its peak."""
    from scipy import ndimage

    scores = WalkScores(
        45,
        58,
        np.array([3, 5, 9], np.int16),
        quantise(_maps(8, 3)),
        np.array([5, 3, 5], np.int16),
        quantise(_maps(9, 3)),
    )
    label = np.zeros((45, 58), np.uint8)
    label[5:20, 4:30], label[25:40, 10:50], label[2:12, 40:55], label[30:44, 0:8] = 5, 3, 9, 5
    found = partition_instances(scores, label, 0.0)

    instance = upsample_cams(scores.instance.astype(np.float32), 45, 58, 4)
    semantic = upsample_cams(scores.semantic.astype(np.float32), 45, 58, 4)
    channel = np.zeros((45, 58), np.int64)  # 1-based, 4 = class 9's own region
    value = np.zeros((45, 58), np.float64)
    for y in range(45):
        for x in range(58):
            c = int(label[y, x])
            if c == 9:
                channel[y, x], value[y, x] = 4, semantic[2, y, x] / semantic.max()
            elif c:
                own = [i for i in range(3) if scores.instance_classes[i] == c]
                best = max(own, key=lambda i: instance[i, y, x])
                channel[y, x], value[y, x] = best + 1, instance[best, y, x] / instance.max()
    expected = []
    for ch, cls in zip((1, 2, 3, 4), (5, 3, 5, 9)):
        regions, count = ndimage.label(channel == ch)
        for r in range(1, count + 1):
            expected.append(
                (cls, round(float(value[regions == r].max()), 5), frozenset(zip(*np.nonzero(regions == r))))
            )
    got = [
        (int(c), round(float(v), 5), frozenset(zip(*np.nonzero(m))))
        for c, v, m in zip(found.class_ids, found.scores, found.masks)
    ]
    assert sorted(got, key=str) == sorted(expected, key=str)
    assert len({cls for cls, _, _ in got}) == 3 and len(got) > 4  # class 5's pixels are split between its channels


def test_cut_labels_with_instances_following_the_semantic_label():
    scores = WalkScores(
        45,
        58,
        np.array([3, 5], np.int16),
        quantise(_maps(11, 2)),
        np.array([3, 5, 5], np.int16),
        quantise(_maps(12, 3)),
    )
    relation = np.random.default_rng(13).choice(np.array([0, 3, 5, 255], np.uint8), size=(45, 58))
    semantic, found = cut_labels(scores, 0.3, 0.3, 0.0, relation, follow_semantic=True)
    expected = partition_instances(scores, semantic.label, 0.0)
    assert len(found) == len(expected) and np.array_equal(found.masks, expected.masks)
    for c in (3, 5):  # a class's instances are exactly its shipped pixels, kept relation labels included
        assert np.array_equal(found.masks[found.class_ids == c].any(axis=0), semantic.label == c)
    _, walk_only = cut_labels(scores, 0.3, 0.3, 0.0, relation)
    assert not np.array_equal(walk_only.masks.any(axis=0), semantic.label > 0)
    # another instance threshold: the instances tile the semantic label cut there, the shipped one stays
    shipped, other = cut_labels(scores, 0.3, 0.6, 0.0, relation, follow_semantic=True)
    at_instance, _ = cut_labels(scores, 0.6, 0.6, 0.0, relation)
    assert np.array_equal(shipped.label, semantic.label) and not np.array_equal(at_instance.label, semantic.label)
    expected = partition_instances(scores, at_instance.label, 0.0)
    assert len(other) == len(expected) and np.array_equal(other.masks, expected.masks)
    for c in (3, 5):
        assert np.array_equal(other.masks[other.class_ids == c].any(axis=0), at_instance.label == c)


def test_confidence_is_low_near_the_threshold_and_high_far_from_it():
    maps = np.zeros((1, 8, 8), np.float32)
    maps[0] = np.linspace(0, 1, 64).reshape(8, 8)
    scores = WalkScores(
        32, 32, np.array([1], np.int16), quantise(maps), np.zeros(0, np.int16), np.zeros((0, 8, 8), np.uint8)
    )
    cut = cut_semantic(scores, 0.5)
    value = np.linspace(0, 1, 64).reshape(8, 8).repeat(4, 0).repeat(4, 1)
    near = np.abs(value - 0.5) < 0.03
    far = np.abs(value - 0.5) > 0.4
    assert cut.confidence[near].max() <= 60 and cut.confidence[far].min() > 150


def test_droppable_channels_never_win_at_the_lowest_threshold_or_above():
    rng = np.random.default_rng(3)
    maps = rng.random((6, 10, 12)).astype(np.float32)
    maps[3:] *= 0.01  # three channels far below the others
    q = quantise(maps)
    drop = droppable(q, 0.1)
    assert drop[3:].all() and not drop[:3].any()
    full = WalkScores(
        40, 48, np.zeros(0, np.int16), np.zeros((0, 10, 12), np.uint8), np.arange(1, 7, dtype=np.int16), q
    )
    kept = WalkScores(
        40, 48, np.zeros(0, np.int16), np.zeros((0, 10, 12), np.uint8), np.arange(1, 7, dtype=np.int16)[~drop], q[~drop]
    )
    for t in (0.1, 0.3, 0.6):
        a, b = cut_instances(full, t, 0.0), cut_instances(kept, t, 0.0)
        assert np.array_equal(a.masks, b.masks) and np.array_equal(a.class_ids, b.class_ids)
        assert np.allclose(a.scores, b.scores)


def _toy_image(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two objects of class 1 and 2, a boundary ring around each, displacement to their centres."""
    h, w = 20, 24
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    centres = [(6.0, 7.0), (13.0, 17.0)]
    cams = torch.zeros(2, h, w)
    boundary = torch.zeros(h, w)
    dp = torch.zeros(2, h, w)
    for k, (cy, cx) in enumerate(centres):
        r = torch.hypot(yy - cy, xx - cx)
        inside = r < 4.5
        cams[k] = torch.clamp(1.0 - r / 6.0, min=0) * (1.0 + 0.1 * k)
        boundary = torch.maximum(boundary, ((r > 4.0) & (r < 5.5)).float() * 0.9)
        dp[0] = torch.where(inside, cy - yy, dp[0])
        dp[1] = torch.where(inside, cx - xx, dp[1])
    return cams, boundary, dp


def test_stored_scores_cut_like_the_float_walk():
    cams, boundary, dp = _toy_image()
    class_ids = [1, 2]
    height, width = 78, 94
    walk = boundary_walk(boundary, 3, 10.0)
    walked = walk(cams * (1.0 - boundary), 2**6)
    instance = walk_instances(
        cams, boundary, dp, class_ids, walk=walk, exp_times=6, lowest_threshold=0.05, centroid_iterations=50
    )
    scores = encode_scores(
        height, width, class_ids, walked.numpy(), instance.channel_class, instance.walked.numpy(), 0.05
    )
    for threshold in (0.15, 0.25, 0.5):
        semantic, found = cut_labels(scores, threshold, threshold, 0.01)
        reference = argmax_with_background(walked, height, width, threshold)
        agree = (semantic.label == np.array([0, 1, 2], np.uint8)[reference.label]).mean()
        assert agree > 0.995, (threshold, agree)
        floating = instances_from_cams(
            cams,
            boundary,
            dp,
            class_ids,
            height,
            width,
            radius=3,
            exp_times=6,
            bg_threshold=threshold,
            centroid_iterations=50,
            walk=walk,
        )
        assert len(found) == len(floating) and sorted(found.class_ids) == sorted(floating.class_ids)


def test_scores_round_trip_through_the_table():
    cams, boundary, dp = _toy_image()
    walk = boundary_walk(boundary, 3, 10.0)
    instance = walk_instances(
        cams, boundary, dp, [1, 2], walk=walk, exp_times=5, lowest_threshold=0.05, centroid_iterations=30
    )
    scores = encode_scores(
        78, 94, [1, 2], walk(cams, 32).numpy(), instance.channel_class, instance.walked.numpy(), 0.05
    )
    table = rows_to_table([scores_row("img", 80, 96, scores)], SCORES)
    back = walk_scores(table.to_pylist()[0])
    assert (back.height, back.width, back.scale) == (78, 94, 4)
    assert np.array_equal(back.semantic, scores.semantic) and np.array_equal(back.instance, scores.instance)
    assert back.class_ids.tolist() == [1, 2] and back.instance_classes.tolist() == scores.instance_classes.tolist()
    a, b = cut_labels(scores, 0.3, 0.3, 0.01), cut_labels(back, 0.3, 0.3, 0.01)
    assert np.array_equal(a[0].label, b[0].label) and np.array_equal(a[1].masks, b[1].masks)


def test_an_image_without_classes_cuts_to_background():
    scores = WalkScores(
        10,
        12,
        np.zeros(0, np.int16),
        np.zeros((0, 3, 3), np.uint8),
        np.zeros(0, np.int16),
        np.zeros((0, 3, 3), np.uint8),
    )
    semantic, found = cut_labels(scores, 0.25, 0.25, 0.01)
    assert not semantic.label.any() and semantic.label.shape == (10, 12) and len(found) == 0


def test_the_walks_own_labels_are_the_cut_of_its_stored_scores():
    """What make-pseudo-labels writes is cut_labels of the scores row it writes beside it."""
    from ray_wsis.config import WalkConfig
    from ray_wsis.method.predictors import IRNetPredictor
    from ray_wsis.models.backbone import Backbone
    from ray_wsis.models.irnet import IRNet

    torch.manual_seed(1)
    walk = WalkConfig(centroid_iterations=20, exp_times=5)
    predictor = IRNetPredictor(IRNet(Backbone("resnet18")), walk, lowest_threshold=0.05)
    image = np.random.default_rng(2).integers(0, 255, (45, 58, 3), dtype=np.uint8)
    cams = np.zeros((2, 12, 15), np.float32)
    cams[0, 2:7, 2:7], cams[1, 6:11, 8:13] = 1.0, 0.7
    out = predictor(image, cams, [3, 9])
    stored = walk_scores(scores_row("img", 45, 58, out.scores))
    semantic, found = cut_labels(stored, walk.sem_bg_threshold, walk.ins_bg_threshold, walk.min_fragment_fraction)
    assert np.array_equal(semantic.label, out.semantic) and np.array_equal(semantic.confidence, out.confidence)
    assert np.array_equal(found.masks, out.instances.masks) and np.allclose(found.scores, out.instances.scores)
