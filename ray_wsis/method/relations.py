"""Pair labels and the relation losses of IRNet and AffinityNet.

Pair labels are computed on the training device from the (B, h, w) relation-label map, not
shipped from the data loader: irn ships three float (152 x 13090) tensors per sample (24 MB);
we ship the 128x128 uint8 map (16 KB) and slice it here.
"""

from __future__ import annotations

import torch

from ray_wsis.classes import IGNORE
from ray_wsis.method.path_index import PathIndex, boundary_to_affinity, pad_for_same, pair_windows

EPS = 1e-5


def pair_labels(labels: torch.Tensor, index: PathIndex) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bg_pos, fg_pos, neg) float masks (B, D, h_src, w_src) from a (B, h, w) label map.

    A pair counts when neither end is 255: positive when both labels agree (split into
    background and foreground), negative when they differ (irn GetAffinityLabelFromIndices).
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, h, w), got {tuple(labels.shape)}")
    src, dst = pair_windows(labels.long(), index)
    src = src.unsqueeze(1)
    valid = (src != IGNORE) & (dst != IGNORE)
    equal = src == dst
    positive = equal & valid
    bg_pos = positive & (src == 0)
    fg_pos = positive & (src > 0)
    neg = ~equal & valid
    return bg_pos.float(), fg_pos.float(), neg.float()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, channels: int = 1) -> torch.Tensor:
    return (values * mask).sum() / (channels * mask.sum() + EPS)


def irn_loss(
    edge_logit: torch.Tensor, displacement: torch.Tensor, labels: torch.Tensor, index: PathIndex
) -> dict[str, torch.Tensor]:
    """IRNet's affinity + displacement loss, term for term as irn step/train_irn.py.

    edge_logit (B, 1, h, w), displacement (B, 2, h, w), labels (B, h, w) at the same stride.
    """
    if edge_logit.shape[-2:] != labels.shape[-2:] or displacement.shape[-2:] != labels.shape[-2:]:
        raise ValueError(
            f"edge {tuple(edge_logit.shape)}, displacement {tuple(displacement.shape)} and "
            f"labels {tuple(labels.shape)} must share (h, w)"
        )
    bg_pos, fg_pos, neg = pair_labels(labels, index)
    aff = boundary_to_affinity(torch.sigmoid(edge_logit[:, 0]), index, layout="valid")
    pos_loss = -torch.log(aff + EPS)
    neg_loss = -torch.log(1.0 + EPS - aff)
    bg_pos_loss = _masked_mean(pos_loss, bg_pos)
    fg_pos_loss = _masked_mean(pos_loss, fg_pos)
    neg_aff_loss = _masked_mean(neg_loss, neg)

    src, dst = pair_windows(displacement, index)  # (B, 2, hs, ws), (B, 2, D, hs, ws)
    pair = src.unsqueeze(2) - dst
    target = torch.as_tensor(index.directions.T, dtype=pair.dtype, device=pair.device).view(1, 2, -1, 1, 1)
    dp_fg = _masked_mean((pair - target).abs(), fg_pos.unsqueeze(1), channels=2)
    dp_bg = _masked_mean(pair.abs(), bg_pos.unsqueeze(1), channels=2)
    aff_total = (bg_pos_loss / 2 + fg_pos_loss / 2 + neg_aff_loss) / 2
    total = aff_total + (dp_fg + dp_bg) / 2
    return {
        "loss": total,
        "bg_pos": bg_pos_loss,
        "fg_pos": fg_pos_loss,
        "neg": neg_aff_loss,
        "dp_fg": dp_fg,
        "dp_bg": dp_bg,
    }


def feature_affinity(features: torch.Tensor, index: PathIndex, layout: str = "valid") -> torch.Tensor:
    """exp(-mean_c |f_i - f_j|) for every pair (psa AffinityNet): (B, C, H, W) -> (B, D, ., .).

    layout "same" pads the map so every pixel is a source and zeroes out-of-map partners.
    psa itself only uses the "valid" window; the padded form keeps border pixels connected.
    """
    if layout == "same":
        h, w = features.shape[-2:]
        inside = pad_for_same(torch.ones(1, 1, h, w, device=features.device, dtype=features.dtype), index, 0.0)
        src_in, dst_in = pair_windows(inside, index)
        features = pad_for_same(features, index, 0.0)
    elif layout != "valid":
        raise ValueError(f"layout must be 'same' or 'valid', got {layout!r}")
    src, dst = pair_windows(features, index)
    aff = torch.exp(-(src.unsqueeze(2) - dst).abs().mean(dim=1))
    if layout == "same":
        aff = aff * (src_in.unsqueeze(2) * dst_in)[:, 0]
    return aff


def psa_loss(features: torch.Tensor, labels: torch.Tensor, index: PathIndex) -> dict[str, torch.Tensor]:
    """AffinityNet loss bg/4 + fg/4 + neg/2 (psa train_aff.py)."""
    if features.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"features {tuple(features.shape)} and labels {tuple(labels.shape)} must share (h, w)")
    bg_pos, fg_pos, neg = pair_labels(labels, index)
    aff = feature_affinity(features, index, layout="valid")
    bg = _masked_mean(-torch.log(aff + EPS), bg_pos)
    fg = _masked_mean(-torch.log(aff + EPS), fg_pos)
    ng = _masked_mean(-torch.log(1.0 + EPS - aff), neg)
    return {"loss": bg / 4 + fg / 4 + ng / 2, "bg_pos": bg, "fg_pos": fg, "neg": ng}
