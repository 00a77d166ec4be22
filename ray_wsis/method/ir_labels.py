"""Inter-pixel relation labels: confident foreground, confident background, the rest ignored.

irn step/cam_to_ir_label.py: the CAMs are thresholded twice against a constant background
plane, each result is refined by a dense CRF (labels as unary, gt_prob 0.7), and

    label = class where the high-threshold CRF says foreground,
            0     where even the low-threshold CRF says background,
            255   elsewhere (ignored by the relation losses).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ray_wsis.classes import IGNORE
from ray_wsis.config import AffinityConfig, IRLabelConfig


def crf_refine_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, config: IRLabelConfig) -> np.ndarray:
    """Dense CRF with hard labels as unary (irn misc/imutils.crf_inference_label)."""
    from pydensecrf.utils import unary_from_labels

    h, w = labels.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    if n_labels < 2:
        return labels.copy()
    unary = unary_from_labels(labels, n_labels, gt_prob=config.crf_gt_prob, zero_unsure=False)
    return np.argmax(dense_crf(image, unary, n_labels, config), axis=0)


def dense_crf(
    image: np.ndarray, unary: np.ndarray, n_labels: int, settings: IRLabelConfig | AffinityConfig
) -> np.ndarray:
    """(n_labels, H, W) marginals of pydensecrf's mean field: a Gaussian and a bilateral kernel with
    ``settings``' crf_* values (irn's and psa's CRFs differ in their unaries and kernel widths only)."""
    import pydensecrf.densecrf as dcrf

    h, w = image.shape[:2]
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=settings.crf_gaussian_sxy, compat=settings.crf_gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=settings.crf_bilateral_sxy,
        srgb=settings.crf_bilateral_srgb,
        rgbim=np.array(image, dtype=np.uint8, order="C", copy=True),
        compat=settings.crf_bilateral_compat,
    )
    return np.asarray(crf.inference(settings.crf_iterations)).reshape(n_labels, h, w)


def thresholds_for(cams: np.ndarray, config: IRLabelConfig) -> tuple[float, float]:
    """(fg, bg) thresholds: fixed (irn), or per-image quantiles of the max-over-classes CAM."""
    if config.threshold_mode == "fixed" or cams.shape[0] == 0:
        return config.fg_threshold, config.bg_threshold
    peak = cams.max(axis=0)
    return float(np.quantile(peak, config.fg_quantile)), float(np.quantile(peak, config.bg_quantile))


def relation_labels(image: np.ndarray, cams: np.ndarray, class_ids: Sequence[int], config: IRLabelConfig) -> np.ndarray:
    """(H, W) uint8 in {0, class ids, 255} from full-resolution CAMs (K, H, W)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if cams.ndim != 3 or cams.shape[1:] != image.shape[:2]:
        raise ValueError(f"cams must be (K, {image.shape[0]}, {image.shape[1]}), got {cams.shape}")
    if len(class_ids) != cams.shape[0]:
        raise ValueError(f"class_ids has {len(class_ids)} entries for {cams.shape[0]} CAMs")
    if any(not 1 <= c < IGNORE for c in class_ids):
        raise ValueError(f"class_ids must lie in 1..254, got {list(class_ids)}")
    keys = np.asarray([0, *class_ids], dtype=np.uint8)
    fg_threshold, bg_threshold = thresholds_for(cams, config)

    def confident(threshold: float) -> np.ndarray:
        plane = np.full((1, *cams.shape[1:]), threshold, dtype=np.float32)
        labels = np.argmax(np.concatenate([plane, cams.astype(np.float32)]), axis=0)
        if config.crf:
            labels = crf_refine_labels(image, labels, len(keys), config)
        return keys[labels]

    fg = confident(fg_threshold)
    bg = confident(bg_threshold)
    out = fg.copy()
    out[fg == 0] = IGNORE
    out[(fg == 0) & (bg == 0)] = 0
    return out
