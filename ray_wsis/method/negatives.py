"""Negative mining for the classifier: a class's CAM must not fire on its context alone.

Where a class nearly always comes with its context (boats on water, aeroplanes in sky), the
image-level loss lets the classifier score the class from the context, and the CAM floods it. The
images *without* the class show where that happens: the pixels where its CAM still fires on them
are context. Two terms, added to the multi-label loss during train-cam (``cam.negatives``):

* **Negative peaks.** For every (image, absent class) pair of a batch, the mean of the class's
  top ``cam.negative_top`` share of raw CAM values is a logit that must say "absent" (binary
  cross-entropy against 0). The image-level loss reads the mean over all pixels, which a large,
  mildly positive context region satisfies at once; the peak term pushes down the pixels where the
  class fires on an image that lacks it.
* **Context prototypes** (after FPR, Chen et al., ICCV 2023). Per class, a running mean of the
  features where its CAM fires on images without it (the *negative prototype*, the context) and
  of the features at its CAM peaks on images with it (the *positive prototype*, the object). On
  an image with the class, pixels whose feature is closer (cosine) to the negative prototype than
  to the positive one are context: the class's CAM there, relative to its peak, is the loss.

Both work inside a batch (no extra pass over the data) and change nothing at inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def top_share_mean(values: torch.Tensor, share: float) -> torch.Tensor:
    """Mean of the top ``share`` of the last dimension's values (at least one), (..., N) -> (...)."""
    k = max(1, min(values.shape[-1], round(values.shape[-1] * share)))
    return values.topk(k, dim=-1).values.mean(dim=-1)


def negative_peak_loss(raw_cams: torch.Tensor, targets: torch.Tensor, share: float) -> torch.Tensor:
    """Binary cross-entropy against "absent" of each absent class's top-``share`` raw CAM mean.

    raw_cams: (B, C, h, w) class maps before the ReLU (their spatial mean is the image logit);
    targets: (B, C) multi-hot. Returns the mean over (image, absent class) pairs (0 when none).
    """
    absent = targets < 0.5
    if not bool(absent.any()):
        return raw_cams.sum() * 0.0
    peaks = top_share_mean(raw_cams.flatten(2), share)  # (B, C)
    return F.softplus(peaks[absent]).mean()


class ContextPrototypes:
    """Running per-class negative (context) and positive (object) feature prototypes.

    ``update`` mines them from a batch; ``loss`` penalises a present class's normalised CAM on
    the pixels nearer its negative prototype than its positive one. Prototypes are unit vectors,
    updated as ``p <- normalise(momentum * p + (1 - momentum) * batch_prototype)``; a class has no
    prototype until a batch shows it (and its loss is 0 until it has both).
    """

    def __init__(self, num_classes: int, channels: int, momentum: float = 0.9, peak_share: float = 0.1) -> None:
        self.momentum, self.peak_share = momentum, peak_share
        self.negative = torch.zeros(num_classes, channels)
        self.positive = torch.zeros(num_classes, channels)
        self.has_negative = torch.zeros(num_classes, dtype=torch.bool)
        self.has_positive = torch.zeros(num_classes, dtype=torch.bool)

    def _blend(self, bank: torch.Tensor, has: torch.Tensor, c: int, value: torch.Tensor) -> None:
        value = F.normalize(value.float(), dim=0).to(bank.device)
        mixed = self.momentum * bank[c] + (1 - self.momentum) * value if bool(has[c]) else value
        bank[c] = F.normalize(mixed, dim=0)
        has[c] = True

    @torch.no_grad()
    def update(self, features: torch.Tensor, raw_cams: torch.Tensor, targets: torch.Tensor) -> None:
        """Mine a batch: features (B, D, h, w), raw_cams (B, C, h, w), targets (B, C) multi-hot."""
        self._to(features.device)
        unit = F.normalize(features.float(), dim=1).flatten(2)  # (B, D, N)
        cams = raw_cams.float().flatten(2).clamp(min=0)  # (B, C, N)
        for c in range(targets.shape[1]):
            absent, present = targets[:, c] < 0.5, targets[:, c] >= 0.5
            weights = cams[absent, c]  # where the class fires on images without it
            if weights.numel() and float(weights.sum()) > 0:
                mined = torch.einsum("bdn,bn->d", unit[absent], weights) / weights.sum()
                self._blend(self.negative, self.has_negative, c, mined)
            if bool(present.any()):
                peaks = _peak_mask(cams[present, c], self.peak_share)  # (P, N)
                mined = torch.einsum("bdn,bn->d", unit[present], peaks) / peaks.sum()
                self._blend(self.positive, self.has_positive, c, mined)

    def context_mask(self, features: torch.Tensor, class_index: int) -> torch.Tensor:
        """(B, h, w) bool: pixels nearer class ``class_index``'s negative prototype than its positive."""
        unit = F.normalize(features.float(), dim=1)
        to_negative = torch.einsum("bdhw,d->bhw", unit, self.negative[class_index].to(unit.device))
        to_positive = torch.einsum("bdhw,d->bhw", unit, self.positive[class_index].to(unit.device))
        return to_negative > to_positive

    def loss(self, features: torch.Tensor, raw_cams: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean over present (image, class) pairs of the class's max-normalised CAM on its context pixels."""
        terms = []
        for c in range(targets.shape[1]):
            present = targets[:, c] >= 0.5
            if not (bool(present.any()) and bool(self.has_negative[c]) and bool(self.has_positive[c])):
                continue
            cams = raw_cams[present, c].clamp(min=0)  # (P, h, w)
            peak = cams.flatten(1).amax(dim=1).detach().clamp(min=1e-5).view(-1, 1, 1)
            context = self.context_mask(features[present].detach(), c).float()
            terms.append(((cams / peak) * context).flatten(1).sum(1) / context.flatten(1).sum(1).clamp(min=1))
        if not terms:
            return raw_cams.sum() * 0.0
        return torch.cat(terms).mean()

    def _to(self, device: torch.device) -> None:
        if self.negative.device != device:
            self.negative, self.positive = self.negative.to(device), self.positive.to(device)
            self.has_negative, self.has_positive = self.has_negative.to(device), self.has_positive.to(device)


def _peak_mask(cams: torch.Tensor, share: float) -> torch.Tensor:
    """(P, N) float: 1 on each row's top ``share`` of values (at least one pixel), else 0."""
    k = max(1, min(cams.shape[1], round(cams.shape[1] * share)))
    index = cams.topk(k, dim=1).indices
    return torch.zeros_like(cams).scatter_(1, index, 1.0)
