"""psa's relation labels for AffinityNet (psa infer_cls.py --out_la_crf/--out_ha_crf, train_aff.py).

For each image the CAMs get a background plane (1 - max_c CAM)^alpha at full resolution, once
with a low power (la, alpha 4: a strong background, so its foreground is confident) and once
with a high power (ha, alpha 32: a weak background, so its background is confident). Each
stack is refined by a dense CRF on its scores (unary from the scores as probabilities,
Gaussian sxy 3, bilateral sxy 80 / srgb 13), and

    label = class where the la CRF says foreground,
            0     where the ha CRF says background,
            255   elsewhere (ignored by the affinity loss).

psa then averages the CRF marginals over 8x8 blocks before taking each argmax; we store the
full-resolution label and the training batches sample it at stride 8 (docs/faithfulness.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ray_wsis.classes import IGNORE
from ray_wsis.config import AffinityConfig
from ray_wsis.method.ir_labels import dense_crf


def background_plane(cams: np.ndarray, alpha: float) -> np.ndarray:
    """(1, H, W) psa background score (1 - max over classes)^alpha (max 0 with no class)."""
    peak = cams.max(axis=0) if cams.shape[0] else np.zeros(cams.shape[1:], np.float32)
    return np.power(np.clip(1.0 - peak, 0.0, 1.0), alpha, dtype=np.float32)[None]


def crf_marginals(image: np.ndarray, scores: np.ndarray, config: AffinityConfig) -> np.ndarray:
    """(C, H, W) dense-CRF marginals with the scores as unary probabilities (psa tool/imutils.crf_inference)."""
    from pydensecrf.utils import unary_from_softmax

    return dense_crf(image, unary_from_softmax(scores.astype(np.float32)), scores.shape[0], config)


def psa_relation_labels(
    image: np.ndarray, cams: np.ndarray, class_ids: Sequence[int], config: AffinityConfig, crf: bool = True
) -> np.ndarray:
    """(H, W) uint8 in {0, class ids, 255} from full-resolution CAMs (K, H, W)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if cams.ndim != 3 or cams.shape[1:] != image.shape[:2]:
        raise ValueError(f"cams must be (K, {image.shape[0]}, {image.shape[1]}), got {cams.shape}")
    if len(class_ids) != cams.shape[0]:
        raise ValueError(f"class_ids has {len(class_ids)} entries for {cams.shape[0]} CAMs")
    cams = np.asarray(cams, np.float32)
    keys = np.asarray([0, *class_ids], dtype=np.uint8)

    def winner(alpha: float) -> np.ndarray:
        scores = np.concatenate([background_plane(cams, alpha), cams])
        if crf and len(keys) > 1:
            scores = crf_marginals(image, scores, config)
        return np.argmax(scores, axis=0)

    low, high = winner(config.la_alpha), winner(config.ha_alpha)
    label = keys[low]
    label[low == 0] = IGNORE
    label[high == 0] = 0
    return label
