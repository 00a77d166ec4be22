"""AffinityNet's path (psa): its relation labels, its walk seeds, its cut, and the whole pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_wsis.classes import IGNORE
from ray_wsis.config import AffinityConfig
from ray_wsis.method.affinity_labels import crf_marginals, psa_relation_labels
from ray_wsis.method.predictors import psa_seeds
from ray_wsis.method.scores import WALKED_BACKGROUND, cut_semantic, encode_region_scores


def _scene(seed: int = 0, h: int = 9, w: int = 11, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    cams = rng.random((k, h, w)).astype(np.float32) ** 2
    return image, cams


def _brute_force_labels(cams: np.ndarray, class_ids: list[int], la: float, ha: float) -> np.ndarray:
    """psa's label formula pixel by pixel, no CRF."""
    k, h, w = cams.shape
    out = np.zeros((h, w), np.uint8)
    for y in range(h):
        for x in range(w):
            peak = max(float(cams[c, y, x]) for c in range(k))
            low = [(1 - peak) ** la] + [float(cams[c, y, x]) for c in range(k)]
            high = [(1 - peak) ** ha] + [float(cams[c, y, x]) for c in range(k)]
            a, b = int(np.argmax(low)), int(np.argmax(high))
            out[y, x] = IGNORE if a == 0 else class_ids[a - 1]
            if b == 0:
                out[y, x] = 0
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psa_labels_match_the_formula_without_crf(seed):
    image, cams = _scene(seed)
    config = AffinityConfig()
    got = psa_relation_labels(image, cams, [4, 9], config, crf=False)
    assert np.array_equal(got, _brute_force_labels(cams, [4, 9], config.la_alpha, config.ha_alpha))
    assert set(np.unique(got)) <= {0, 4, 9, IGNORE}


def test_psa_labels_with_crf_keep_confident_regions():
    """A clear object in a flat image: the CRF keeps fg where la says fg and bg where ha says bg."""
    h, w = 24, 24
    image = np.full((h, w, 3), 90, np.uint8)
    image[6:18, 6:18] = (200, 40, 40)
    cams = np.zeros((1, h, w), np.float32)
    cams[0, 6:18, 6:18] = 0.95
    got = psa_relation_labels(image, cams, [3], AffinityConfig())
    assert (got[8:16, 8:16] == 3).all() and (got[:3] == 0).all()
    marginals = crf_marginals(image, np.concatenate([np.full((1, h, w), 0.5, np.float32), cams]), AffinityConfig())
    assert marginals.shape == (2, h, w) and np.allclose(marginals.sum(0), 1.0, atol=1e-4)


def test_psa_seeds_power_before_the_pooling():
    cams = np.random.default_rng(3).random((2, 5, 6)).astype(np.float32)
    height, width = 19, 22  # stride-4 maps of 19 x 22 (5 x 6), not multiples of 8
    from ray_wsis.method.upsample import upsample_cams

    full = upsample_cams(cams, height, width)
    background = (1 - full.max(0)) ** 16
    stack = np.concatenate([background[None], full])
    padded = np.zeros((3, 24, 24), np.float32)
    padded[:, :height, :width] = stack
    expected = torch.nn.functional.avg_pool2d(torch.from_numpy(padded)[None], 8, 8)[0].numpy()
    got = psa_seeds(cams, height, width, 16.0)
    assert got.shape == (3, 3, 3) and np.allclose(got, expected, atol=1e-6)
    pooled_first = (1 - expected[1:].max(0)) ** 16
    assert not np.allclose(got[0], pooled_first)  # the order matters (x^16 is convex)


def test_walked_background_cut_is_psas_argmax():
    rng = np.random.default_rng(4)
    walked = rng.random((3, 4, 5)).astype(np.float32)  # background, two classes
    scores = encode_region_scores(30, 38, [2, 7], walked[1:], walked[:1], scale=8)
    label = cut_semantic(scores, WALKED_BACKGROUND).label
    q = np.concatenate([scores.background, scores.semantic]).astype(np.float32)
    up = torch.nn.functional.interpolate(
        torch.from_numpy(q)[None], scale_factor=8, mode="bilinear", align_corners=False
    )[0, :, :30, :38]
    expected = np.array([0, 2, 7], np.uint8)[up.argmax(0).numpy()]
    assert (label == expected).mean() > 0.995  # ties of quantised values aside


def test_affinity_predictor_outputs_scores_and_labels():
    from ray_wsis.method.predictors import AffinityPredictor
    from ray_wsis.method.scores import cut_labels
    from ray_wsis.models.affinitynet import AffinityNet
    from ray_wsis.models.backbone import Backbone

    torch.manual_seed(0)
    predictor = AffinityPredictor(AffinityNet(Backbone("resnet18")), AffinityConfig(exp_times=4))
    image = np.random.default_rng(0).integers(0, 255, (37, 50, 3), dtype=np.uint8)
    cams = np.zeros((2, 10, 13), np.float32)
    cams[0, 2:6, 2:6], cams[1, 5:9, 8:12] = 1.0, 0.8
    out = predictor(image, cams, [4, 11])
    assert out.semantic.shape == (37, 50) and set(np.unique(out.semantic)) <= {0, 4, 11}
    assert out.scores is not None and out.scores.scale == 8 and out.scores.background.shape == (1, 5, 7)
    again, found = cut_labels(out.scores, WALKED_BACKGROUND, WALKED_BACKGROUND, 0.01)
    assert np.array_equal(again.label, out.semantic) and len(found) == len(out.instances)


@pytest.mark.slow
def test_affinitynet_runs_end_to_end(tmp_path):
    from ray_wsis.pipeline.sink import committed_ids
    from tests.pipeline_helpers import (
        assert_default_instance_choice,
        make_tiny_voc,
        run_stages,
        start_local_ray,
        tiny_config,
    )

    data = make_tiny_voc(tmp_path / "voc")
    config = tiny_config(
        data,
        str(tmp_path / "out"),
        "method=affinitynet",
        "affinity.crop_size=96",
        "affinity.batch_size=4",
        "affinity.epochs=1",
        "affinity.exp_times=5",
    )
    start_local_ray()
    results = run_stages(config)
    names = [k for k in results if k != "seconds"]
    assert names == [
        "train-cam",
        "make-cams",
        "make-affinity-labels",
        "train-affinitynet",
        "make-pseudo-labels",
        "calibrate",
        "cut-labels",
        "evaluate",
    ]
    assert results["make-affinity-labels"]["processed"] == 8 and results["make-pseudo-labels"]["processed"] == 8
    timing = results["make-pseudo-labels"]["timing"]  # AffinityNet's forward passes held the batch's images
    assert timing["images_per_forward"] > 1 and {"model", "walk", "post", "decode", "write"} <= set(timing["seconds"])
    import json
    import os

    ids = committed_ids(__import__("ray_wsis.pipeline.layout", fromlist=["Layout"]).Layout.of(config).pseudo_labels)
    assert len(ids) == len(set(ids)) == 8
    metrics = json.load(open(os.path.join(config.output, "metrics.json")))
    assert metrics["reference"]["semantic"]["plane"] == "walked"
    assert metrics["sem_miou_at_reference"] is not None and metrics["calibrated"]["mode"] == "label-free"
    calibration = json.load(open(os.path.join(config.output, "calibration.json")))
    assert_default_instance_choice(calibration)
    assert os.path.exists(os.path.join(config.output, "models", "affinitynet.pt"))
