"""Threshold calibration (method/calibration.py) on small synthetic walk scores, no Ray.

Each image is a bright object of class 1 on a background whose walked score decays away from
it; the right cut is at the object's edge, and the criteria must find it without masks
(label-free) or with a few masks (few-shot).
"""

from __future__ import annotations

import numpy as np
import pytest

from ray_wsis.data.records import GroundTruth
from ray_wsis.method.calibration import (
    FewShotStats,
    ImageCut,
    LabelFreeStats,
    RelationStats,
    agreement_confusions,
    choose_by_expected_iou,
    choose_by_majority,
    choose_by_steepness,
    choose_few_shot,
    choose_instance,
    choose_semantic,
    contour_steepness,
    expected_ious,
    isotonic,
    otsu_ratio,
)
from ray_wsis.method.scores import Thresholds, WalkScores, cut_labels, cut_semantic, quantise

CANDIDATES = [round(0.05 * i, 2) for i in range(1, 19)]


def _image(seed: int, edge: float) -> tuple[WalkScores, GroundTruth]:
    """A 48x64 image: object where the stride-4 score is above `edge`, score 1 inside, decaying outside."""
    rng = np.random.default_rng(seed)
    h, w = 12, 16
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx, r = rng.uniform(4, 8), rng.uniform(5, 11), rng.uniform(2.5, 4.0)
    distance = np.hypot(yy - cy, xx - cx)
    inside = distance <= r
    walked = np.where(inside, 1.0, edge * 0.6 * np.exp(-(distance - r) / 2.0)) + rng.uniform(0, 0.03, (h, w))
    semantic = quantise(walked[None].astype(np.float32))
    instance = semantic.copy()
    scores = WalkScores(48, 64, np.array([1], np.int16), semantic, np.array([1], np.int16), instance)
    truth_small = (walked > edge).astype(np.uint8)
    truth = truth_small.repeat(4, 0).repeat(4, 1)
    return scores, GroundTruth(truth, truth[None].astype(bool), np.array([1]))


@pytest.fixture(scope="module")
def images() -> list[tuple[WalkScores, GroundTruth]]:
    return [_image(seed, edge=0.7) for seed in range(12)]


def test_otsu_ratio_peaks_between_two_modes():
    values = np.concatenate([np.full(300, 0.1), np.full(100, 0.8)])
    eta = otsu_ratio(values, CANDIDATES)
    best = CANDIDATES[int(np.argmax(eta))]
    assert 0.1 <= best < 0.8 and eta.max() == pytest.approx(1.0)
    assert otsu_ratio(np.full(10, 0.5), CANDIDATES).max() == 0.0  # no variance, no split


def test_label_free_semantic_finds_the_gap(images):
    stats = LabelFreeStats.empty(CANDIDATES)
    for scores, _ in images:
        stats.add(ImageCut.of(scores), CANDIDATES)
    assert stats.images == len(images)
    chosen = choose_semantic(stats.criterion(), CANDIDATES)
    assert 0.45 <= chosen <= 0.95  # between the decayed background (<= 0.42) and the object (1.0)
    merged = LabelFreeStats.empty(CANDIDATES).merge(stats)
    assert np.allclose(merged.criterion(), stats.criterion())


def test_contour_steepness_finds_the_edge_step(images):
    stats = LabelFreeStats.empty(CANDIDATES)
    for scores, _ in images:
        stats.add(ImageCut.of(scores), CANDIDATES)
    assert (stats.steepness_images > 0).all()
    chosen = choose_by_steepness(stats.steepness(), CANDIDATES)
    assert chosen is not None
    truth = FewShotStats.empty(CANDIDATES, num_classes=1)
    for scores, ground_truth in images:
        truth.add(ImageCut.of(scores), ground_truth, CANDIDATES, 0.0, num_classes=1)
    # the cut lies on the step from 1.0 down to <= 0.42 (at its foot): every object found
    assert truth.instance_map50()[CANDIDATES.index(chosen)] == pytest.approx(100.0)
    assert truth.semantic_miou()[CANDIDATES.index(chosen)] > 85.0
    assert truth.semantic_miou()[CANDIDATES.index(0.15)] < 70.0  # where the contours are not steep
    merged = LabelFreeStats.empty(CANDIDATES).merge(stats)
    assert np.allclose(merged.steepness(), stats.steepness())


def test_contour_steepness_without_an_edge_step_chooses_nothing():
    yy, xx = np.mgrid[0:48, 0:64].astype(np.float64)
    blob = np.exp(-((yy - 24) ** 2 + (xx - 30) ** 2) / (2 * 12.0**2))  # log falls ever faster outwards
    steepness = contour_steepness(blob, CANDIDATES)
    assert np.isfinite(steepness).all() and int(np.argmax(steepness)) == 0
    assert choose_by_steepness(steepness, CANDIDATES) is None
    assert choose_by_steepness(np.full(len(CANDIDATES), np.nan), CANDIDATES) is None
    # a contour of a few pixels is no evidence
    assert np.isnan(contour_steepness(np.pad(np.ones((1, 1)), 5), [0.5])).all()


def test_few_shot_fits_the_masks(images):
    stats = FewShotStats.empty(CANDIDATES, num_classes=1)
    for scores, truth in images[:5]:
        stats.add(ImageCut.of(scores), truth, CANDIDATES, 0.0, num_classes=1)
    miou = stats.semantic_miou()
    chosen = choose_semantic(np.nan_to_num(miou, nan=-1.0), CANDIDATES)
    assert miou.max() > 95.0 and 0.45 <= chosen <= 0.95
    assert np.nanmax(stats.instance_map50()) == pytest.approx(100.0)
    low = CANDIDATES.index(0.1)
    assert miou[low] < miou.max() - 10  # too low a threshold floods the background


def test_the_sweep_cuts_kept_relation_labels_as_cut_labels_ships_them(images):
    """With relation labels (walk.keep_relation_labels) the sweep's semantic labels are the shipped
    ones: the walk's cut, overwritten where the relation labels are confident."""
    scores, truth = images[0]
    relation = np.full((48, 64), 255, np.uint8)
    relation[:, :20] = 0  # confident background over the left third
    relation[:8, 40:] = 1
    cut = ImageCut.of(scores, relation)
    for t in (0.2, 0.5, 0.9):
        walk_only = cut_semantic(scores, t).label
        expected = np.where(relation == 255, walk_only, relation)
        assert np.array_equal(cut.semantic_label(t), expected)
    assert np.array_equal(ImageCut.of(scores).semantic_label(0.5), cut_semantic(scores, 0.5).label)
    stats = FewShotStats.empty(CANDIDATES, num_classes=1)
    stats.add(cut, truth, CANDIDATES, 0.0, num_classes=1)
    walk_stats = FewShotStats.empty(CANDIDATES, num_classes=1)
    walk_stats.add(ImageCut.of(scores), truth, CANDIDATES, 0.0, num_classes=1)
    assert not np.array_equal(stats.confusions, walk_stats.confusions)


def test_the_sweep_cuts_instances_that_follow_the_semantic_label_as_cut_labels_ships_them(images):
    """walk.instances_follow_semantic: the sweep's instances at a candidate are cut-labels' at that
    instance threshold (they tile the semantic label cut there, kept relation labels included),
    whatever the semantic threshold."""
    scores, _ = images[0]
    relation = np.full((48, 64), 255, np.uint8)
    relation[:, :20] = 0
    cut = ImageCut.of(scores, relation, follow_semantic=True)
    for t in (0.2, 0.5, 0.9):
        found = cut.detections(Thresholds(t), 0.0)
        _, shipped = cut_labels(scores, 0.05, t, 0.0, relation, follow_semantic=True)
        assert np.array_equal(found.masks, shipped.masks) and np.array_equal(found.scores, shipped.scores)
        assert not found.masks[:, :, :20].any()  # the kept background holds no instance


def test_instance_agreement_with_the_semantic_cut(images):
    confusions = sum(agreement_confusions(ImageCut.of(s), 0.6, CANDIDATES, 2) for s, _ in images)
    shared = choose_instance(confusions, CANDIDATES, per_class=False)
    per_class = choose_instance(confusions, CANDIDATES, per_class=True)
    assert shared.per_class == {} and abs(shared.default - 0.6) <= 0.15
    assert set(per_class.per_class) == {1}


def test_thresholds_round_trip_and_per_class_cut():
    t = Thresholds(0.4, {3: 0.7})
    assert Thresholds.from_dict(t.as_dict()) == t and t.lowest == 0.4
    assert t.of([1, 3]).tolist() == pytest.approx([0.4, 0.7])
    scores, _ = _image(0, 0.7)
    assert (cut_semantic(scores, Thresholds(0.5, {1: 0.99})).label == 1).sum() < (
        cut_semantic(scores, 0.5).label == 1
    ).sum()


def test_isotonic_pools_violators_and_fills_empty_bins():
    fitted = isotonic(np.array([0.1, 0.3, 0.2, 0.0, 0.5, 0.4]), np.array([1, 1, 1, 0, 1, 3]))
    assert fitted.tolist() == pytest.approx([0.1, 0.25, 0.25, 0.3375, 0.425, 0.425])
    assert np.all(np.diff(fitted) >= 0)
    assert isotonic(np.zeros(4), np.zeros(4)).tolist() == [0.0] * 4


def _relation_label(scores: WalkScores, truth: GroundTruth, shrink: int) -> np.ndarray:
    """Relation labels as irn's: the object's confident core, background far from it, ignore between."""
    from scipy import ndimage

    mask = truth.semantic.astype(bool)
    core = ndimage.binary_erosion(mask, iterations=shrink)
    far = ~ndimage.binary_dilation(mask, iterations=shrink)
    label = np.full(mask.shape, 255, np.uint8)
    label[core], label[far] = 1, 0
    return label


def test_expected_iou_under_relation_label_probabilities_finds_the_object(images):
    stats = RelationStats.empty()
    for scores, truth in images:
        stats.add(ImageCut.of(scores), _relation_label(scores, truth, shrink=2))
    probability = stats.probability()
    assert np.all(np.diff(probability) >= 0) and probability[-1] > 0.9 and probability[20] < 0.1
    total = np.zeros((2, len(CANDIDATES)))
    for scores, _ in images:
        iou, classes = expected_ious(ImageCut.of(scores), probability, CANDIDATES)
        assert classes.tolist() == [1] and np.all((iou >= 0) & (iou <= 1))
        np.add.at(total, classes, iou)
    shared = choose_by_expected_iou(total, CANDIDATES, per_class=False)
    assert 0.45 <= shared.default <= 0.95 and shared.per_class == {}
    low = CANDIDATES.index(0.1)
    assert total[1, low] < total[1].max() - 1.0  # a low cut takes in background that is not the object
    assert set(choose_by_expected_iou(total, CANDIDATES, per_class=True).per_class) == {1}
    merged = RelationStats.empty().merge(stats)
    assert np.array_equal(merged.labelled, stats.labelled)


def test_semantic_relation_stats_count_each_bin_as_a_pixel_loop_does(images):
    """The class-score statistics (relation-majority) against a pixel-by-pixel count."""
    stats = RelationStats.empty()
    labelled = np.zeros(100, np.int64)
    same = np.zeros(100, np.int64)
    for scores, truth in images[:4]:
        relation = _relation_label(scores, truth, shrink=2)
        cut = ImageCut.of(scores)
        stats.add(cut, relation, semantic=True)
        keys = np.asarray(scores.class_ids)
        for y in range(relation.shape[0]):
            for x in range(relation.shape[1]):
                if relation[y, x] == 255:
                    continue
                b = min(int(cut.semantic.value[y, x] * 100), 99)
                labelled[b] += 1
                same[b] += int(relation[y, x] == keys[cut.semantic.channel[y, x]])
    assert np.array_equal(stats.labelled, labelled) and np.array_equal(stats.same_class, same)
    no_class = (np.zeros(0, np.int16), np.zeros((0, 12, 16), np.uint8))
    empty = WalkScores(48, 64, *no_class, *no_class)
    stats.add(ImageCut.of(empty), np.zeros((48, 64), np.uint8), semantic=True)  # no class: nothing to count
    assert np.array_equal(stats.labelled, labelled)


def test_relation_majority_is_the_lowest_cut_where_the_class_is_the_likelier_label(images):
    probability = np.clip(np.linspace(-0.2, 1.1, 100), 0, 1)  # reaches 0.5 in bin 54
    assert choose_by_majority(probability, CANDIDATES) == 0.55
    assert choose_by_majority(np.full(100, 0.4), CANDIDATES) == max(CANDIDATES)  # no level is: the highest
    assert choose_by_majority(np.full(100, 0.4), CANDIDATES, otherwise=1.0) == 1.0  # or nothing from the walk
    assert choose_by_majority(np.full(100, 0.9), CANDIDATES) == min(CANDIDATES)
    # on the synthetic images, whose relation labels leave a band around each object open
    stats = RelationStats.empty()
    for scores, truth in images:
        stats.add(ImageCut.of(scores), _relation_label(scores, truth, shrink=2), semantic=True)
    chosen = choose_by_majority(stats.probability(), CANDIDATES)
    # scores are 1 inside the objects and under 0.45 outside; the empty bins between interpolate
    assert chosen == pytest.approx(0.7)


def test_relation_labels_of_another_size_are_skipped(images):
    stats = RelationStats.empty()
    stats.add(ImageCut.of(images[0][0]), np.zeros((5, 5), np.uint8))
    assert stats.labelled.sum() == 0


def test_few_shot_choice_prefers_a_plateau_to_a_lone_spike():
    candidates = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    curve = np.array([10.0, 62.0, 20.0, 55.0, 58.0, 56.0, 30.0])  # a spike at 0.2, a plateau at 0.4-0.6
    assert choose_semantic(curve, candidates) == 0.2 and choose_few_shot(curve, candidates) == 0.5
    with_gaps = np.array([np.nan, 40.0, 50.0, np.nan, np.nan, np.nan, np.nan])
    assert choose_few_shot(with_gaps, candidates) == 0.3  # NaN is no score, not a low one
    assert choose_few_shot(np.full(7, np.nan), candidates) is None
