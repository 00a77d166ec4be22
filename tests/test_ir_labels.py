"""Inter-pixel relation labels from CAMs (irn step/cam_to_ir_label.py)."""

import dataclasses

import numpy as np
import pytest

from ray_wsis.config import IRLabelConfig
from ray_wsis.method import ir_labels
from ray_wsis.method.ir_labels import crf_refine_labels, relation_labels, thresholds_for

H = W = 40
LO, HI = 14, 25  # the bright square spans rows/cols LO..HI


def scene():
    """A bright square on a dark image; its CAM is 1 inside, 0.2 in a 4-px band, 0 beyond."""
    image = np.full((H, W, 3), 30, np.uint8)
    image[LO : HI + 1, LO : HI + 1] = 220
    yy, xx = np.mgrid[:H, :W]
    outside = np.maximum(np.maximum(LO - yy, yy - HI), np.maximum(LO - xx, xx - HI))  # <= 0 inside
    inside = outside <= 0
    band = (outside >= 1) & (outside <= 4)
    far = outside >= 5
    cam = np.where(inside, 1.0, np.where(band, 0.2, 0.0)).astype(np.float32)
    return image, cam, inside, band, far


def test_thresholds_without_crf():
    image, cam, inside, band, far = scene()
    out = relation_labels(image, cam[None], [3], IRLabelConfig(crf=False))
    assert out.dtype == np.uint8 and out.shape == (H, W)
    assert (out[inside] == 3).all()
    assert (out[band] == 255).all()  # 0.05 < 0.2 <= 0.30: neither confident fg nor bg
    assert (out[far] == 0).all()


def test_exact_threshold_values_without_crf():
    # the constant plane comes first in the argmax, so a CAM equal to a threshold is background
    image = np.zeros((1, 4, 3), np.uint8)
    cam = np.array([[[0.30, 0.31, 0.05, 0.051]]], np.float32)
    out = relation_labels(image, cam, [7], IRLabelConfig(crf=False))
    assert out.tolist() == [[255, 7, 0, 255]]


def test_two_classes_take_the_larger_cam():
    image = np.zeros((1, 5, 3), np.uint8)
    cams = np.array([[[0.9, 0.4, 0.1, 0.0, 0.2]], [[0.5, 0.6, 0.2, 0.0, 0.04]]], np.float32)
    out = relation_labels(image, cams, [2, 9], IRLabelConfig(crf=False))
    assert out.tolist() == [[2, 9, 255, 0, 255]]


def test_with_crf_the_square_stays_labelled(monkeypatch):
    image, cam, inside, band, far = scene()
    calls = []
    original = ir_labels.crf_refine_labels

    def counting(img, labels, n_labels, config):
        calls.append(n_labels)
        return original(img, labels, n_labels, config)

    monkeypatch.setattr(ir_labels, "crf_refine_labels", counting)
    out = relation_labels(image, cam[None], [3], IRLabelConfig(crf=True))
    assert calls == [2, 2]  # the fg and the bg pass, each with K + 1 labels
    assert (out[inside] == 3).all()
    assert (out[far] == 0).all()
    # the band has no colour edge: the low-threshold CRF snaps it back to the square's edge,
    # so it becomes confident background instead of ignore
    assert (out[band] == 0).mean() > 0.9
    assert set(np.unique(out)) <= {0, 3, 255}


def test_crf_fixes_labels_that_disagree_with_the_image():
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, 20:] = 200
    truth = np.zeros((40, 40), np.int64)
    truth[:, 20:] = 1
    noisy = truth.copy()
    noisy[8:11, 8:11] = 1
    noisy[30:33, 28:31] = 0
    refined = crf_refine_labels(image, noisy, 2, IRLabelConfig())
    assert refined.shape == (40, 40)
    np.testing.assert_array_equal(refined, truth)
    # a single label is returned unchanged
    np.testing.assert_array_equal(crf_refine_labels(image, np.zeros((40, 40), np.int64), 1, IRLabelConfig()), 0)
    with pytest.raises(ValueError, match="size"):
        crf_refine_labels(image[:30], noisy, 2, IRLabelConfig())


def test_quantile_thresholds():
    image, cam, *_ = scene()
    rng = np.random.default_rng(0)
    cams = (cam * 0.2 + 0.01 * rng.random((H, W))).astype(np.float32)[None]  # weak CAMs, peak ~0.21
    fixed = relation_labels(image, cams, [4], IRLabelConfig(crf=False))
    assert not (fixed == 4).any()  # below the fixed 0.30 everywhere
    config = IRLabelConfig(crf=False, threshold_mode="quantile", fg_quantile=0.95, bg_quantile=0.6)
    fg_t, bg_t = thresholds_for(cams, config)
    assert fg_t == pytest.approx(float(np.quantile(cams[0], 0.95)))
    assert bg_t == pytest.approx(float(np.quantile(cams[0], 0.6)))
    out = relation_labels(image, cams, [4], config)
    assert (out == 4).mean() == pytest.approx(0.05, abs=0.005)
    assert (out == 0).mean() == pytest.approx(0.6, abs=0.005)
    np.testing.assert_array_equal(out == 4, cams[0] > fg_t)
    np.testing.assert_array_equal(out == 0, cams[0] <= bg_t)
    # fixed mode ignores the quantiles; no CAMs fall back to the fixed thresholds
    assert thresholds_for(cams, IRLabelConfig()) == (0.30, 0.05)
    assert thresholds_for(np.zeros((0, H, W), np.float32), config) == (0.30, 0.05)


def test_no_classes_gives_background_or_ignore():
    image, *_ = scene()
    out = relation_labels(image, np.zeros((0, H, W), np.float32), [], IRLabelConfig(crf=False))
    assert (out == 0).all()


@pytest.mark.parametrize("cams_shape", [(1, H, W + 1), (1, H - 1, W), (H, W)])
def test_shape_mismatch(cams_shape):
    image, *_ = scene()
    with pytest.raises(ValueError, match="cams"):
        relation_labels(image, np.zeros(cams_shape, np.float32), [1], IRLabelConfig(crf=False))


def test_bad_image_and_class_ids():
    image, cam, *_ = scene()
    with pytest.raises(ValueError, match="image"):
        relation_labels(image.astype(np.float32), cam[None], [1], IRLabelConfig(crf=False))
    with pytest.raises(ValueError, match="class_ids"):
        relation_labels(image, cam[None], [1, 2], IRLabelConfig(crf=False))
    for bad in (0, 255, 300):
        with pytest.raises(ValueError, match="class_ids"):
            relation_labels(image, cam[None], [bad], IRLabelConfig(crf=False))


def test_config_thresholds_are_used():
    image, cam, inside, band, far = scene()
    config = dataclasses.replace(IRLabelConfig(crf=False), fg_threshold=0.1)
    out = relation_labels(image, cam[None], [3], config)
    assert (out[band] == 3).all() and (out[inside] == 3).all() and (out[far] == 0).all()
