import json
import math

import numpy as np
import pytest

from ray_wsis.eval.semantic import (
    IRLabelStats,
    SemanticEvaluator,
    cam_to_label,
    confusion_matrix,
    iou_from_confusion,
    mean_iou,
    precision_of_ir_labels,
)


def brute_force_confusion(pred, gt, num_classes):
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
        if g == 255:
            continue
        conf[g, p] += 1
    return conf


def brute_force_iou(conf):
    out = []
    for k in range(conf.shape[0]):
        tp = conf[k, k]
        union = conf[k, :].sum() + conf[:, k].sum() - tp
        out.append(float("nan") if union == 0 else tp / union)
    return out


def test_hand_computed_example():
    gt = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 1, 7]], dtype=np.uint8)  # 7 sits on void: ignored
    conf = confusion_matrix(pred, gt, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[2, 1] = 1
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, expected)
    iou = iou_from_confusion(conf)
    # class 0: tp 1, gt 2, pred 1 -> 1/2; class 1: tp 2, gt 2, pred 4 -> 2/4; class 2: 0/1; class 3 absent
    np.testing.assert_allclose(iou[:3], [0.5, 0.5, 0.0])
    assert math.isnan(iou[3])
    assert mean_iou(conf) == pytest.approx((0.5 + 0.5 + 0.0) / 3)


def test_random_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(5):
        gt = rng.integers(0, 5, size=(9, 11)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.15] = 255
        pred = rng.integers(0, 5, size=(9, 11)).astype(np.uint8)
        conf = confusion_matrix(pred, gt, 6)
        reference = brute_force_confusion(pred, gt, 6)
        np.testing.assert_array_equal(conf, reference)
        np.testing.assert_allclose(iou_from_confusion(conf), brute_force_iou(reference), equal_nan=True)


def test_errors():
    gt = np.zeros((2, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="pred") as info:
        confusion_matrix(np.zeros((3, 2), dtype=np.uint8), gt, 3)
    assert "gt" in str(info.value)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(np.full((2, 3), 3, dtype=np.uint8), gt, 3)
    with pytest.raises(ValueError, match="gt"):
        confusion_matrix(gt, np.full((2, 3), 5, dtype=np.uint8), 3)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(np.zeros((2, 3), dtype=np.float32), gt, 3)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(np.zeros((1, 2, 3), dtype=np.uint8), gt, 3)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(gt, gt, 0)
    with pytest.raises(ValueError, match="conf"):
        iou_from_confusion(np.zeros((2, 3)))


def test_pred_out_of_range_on_void_is_ignored():
    gt = np.array([[255, 1]], dtype=np.uint8)
    pred = np.array([[200, 1]], dtype=np.uint8)
    assert confusion_matrix(pred, gt, 2)[1, 1] == 1


def test_evaluator_merge_equals_single_and_result():
    rng = np.random.default_rng(1)
    images = []
    for _ in range(6):
        gt = rng.integers(0, 4, size=(8, 10)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        images.append((rng.integers(0, 4, size=(8, 10)).astype(np.uint8), gt))
    single = SemanticEvaluator(5)
    for pred, gt in images:
        single.add(pred, gt)
    a, b = SemanticEvaluator(5), SemanticEvaluator(5)
    for pred, gt in images[:2]:
        a.add(pred, gt)
    for pred, gt in images[2:]:
        b.add_confusion(confusion_matrix(pred, gt, 5))
    merged = a.merge(b)
    np.testing.assert_array_equal(merged.confusion, single.confusion)
    result = merged.result()
    assert result == single.result()
    json.dumps(result)  # NaN became None
    assert result["images"] == 6
    assert result["iou"][4] is None  # class 4 never occurs
    iou = brute_force_iou(single.confusion)
    assert result["miou"] == pytest.approx(np.nanmean(iou) * 100)
    assert result["iou"][0] == pytest.approx(iou[0] * 100)
    conf = single.confusion
    assert result["pixel_accuracy"] == pytest.approx(np.trace(conf) / conf.sum() * 100)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    assert result["fp_rate"][1] == pytest.approx((1 - conf[1].sum() / union[1]) * 100)
    assert result["fn_rate"][1] == pytest.approx((1 - conf[:, 1].sum() / union[1]) * 100)
    assert result["precision"][1] == pytest.approx(conf[1, 1] / conf[:, 1].sum() * 100)  # rows: ground truth
    assert result["recall"][1] == pytest.approx(conf[1, 1] / conf[1].sum() * 100)
    assert result["precision"][4] is None and result["recall"][4] is None
    with pytest.raises(ValueError, match="other"):
        single.merge(SemanticEvaluator(4))


def test_perfect_prediction_and_empty_evaluator():
    gt = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    ev = SemanticEvaluator(3)
    ev.add(np.where(gt == 255, 0, gt).astype(np.uint8), gt)
    result = ev.result()
    assert result["miou"] == pytest.approx(100.0)
    assert result["pixel_accuracy"] == pytest.approx(100.0)
    empty = SemanticEvaluator(3).result()
    assert empty["miou"] is None and empty["pixel_accuracy"] is None and empty["images"] == 0


def test_cam_to_label():
    cams = np.zeros((2, 2, 3), dtype=np.float32)
    cams[0] = [[0.9, 0.1, 0.5], [0.2, 0.3, 0.0]]
    cams[1] = [[0.3, 0.7, 0.5], [0.1, 0.15, 0.0]]
    label = cam_to_label(cams, [15, 3], bg_threshold=0.25)
    expected = np.array([[15, 3, 15], [0, 15, 0]], dtype=np.uint8)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected)
    # Tie with the threshold goes to background, as np.argmax over the padded stack.
    assert cam_to_label(np.full((1, 1, 1), 0.25), [2], 0.25)[0, 0] == 0
    np.testing.assert_array_equal(cam_to_label(np.zeros((0, 2, 2)), [], 0.1), np.zeros((2, 2)))


def test_cam_to_label_matches_padding_reference():
    rng = np.random.default_rng(2)
    cams = rng.random((3, 6, 7))
    ids = np.array([4, 9, 20])
    padded = np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=0.4)
    keys = np.pad(ids, (1, 0), mode="constant")
    np.testing.assert_array_equal(cam_to_label(cams, ids, 0.4), keys[np.argmax(padded, axis=0)])


def test_cam_to_label_errors():
    with pytest.raises(ValueError, match="cams"):
        cam_to_label(np.zeros((2, 2)), [1], 0.1)
    with pytest.raises(ValueError, match="class_ids"):
        cam_to_label(np.zeros((2, 2, 2)), [1], 0.1)
    with pytest.raises(ValueError, match="class_ids"):
        cam_to_label(np.zeros((1, 2, 2)), [0], 0.1)
    with pytest.raises(ValueError, match="class_ids"):
        cam_to_label(np.zeros((1, 2, 2)), [255], 0.1)
    with pytest.raises(ValueError, match="cams"):
        cam_to_label(np.full((1, 2, 2), np.nan), [1], 0.1)


def test_precision_of_ir_labels():
    gt = np.array([[0, 1, 1], [2, 255, 2]], dtype=np.uint8)
    ir = np.array([[0, 1, 255], [1, 1, 255]], dtype=np.uint8)
    stats = precision_of_ir_labels(ir, gt)
    # valid GT pixels: 5; labelled among them: (0,0),(0,1),(1,0) -> 3; correct: 2
    assert stats == IRLabelStats(correct=2, labelled=3, valid=5)
    assert stats.precision == pytest.approx(2 / 3)
    assert stats.coverage == pytest.approx(3 / 5)
    total = stats + stats
    assert (total.correct, total.labelled, total.valid) == (4, 6, 10)
    d = precision_of_ir_labels(np.full((1, 1), 255, dtype=np.uint8), np.zeros((1, 1), dtype=np.uint8)).as_dict()
    assert d["precision"] is None and d["coverage"] == 0.0
    with pytest.raises(ValueError, match="ir_label"):
        precision_of_ir_labels(ir[:1], gt)
