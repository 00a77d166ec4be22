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

**Rectified CAMs** (``cam.context_rectify``). The same prototypes, mined during training into the
classifier's buffers (the model file keeps them, no loss needed), gate its CAMs at inference: a
class's map is zeroed on the stride-16 pixels whose feature is nearer its context prototype than
its object prototype (:func:`context_gate`, at every scale and mirror in method/cam.py).
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
    updated as ``p <- normalise(momentum * p + (1 - momentum) * batch_prototype)``; a zero row is a
    class not yet seen (its loss is 0 until it has both). The banks may be a model's buffers
    (CAMNet.context_negative / context_positive): then the model file keeps what was mined.
    """

    def __init__(
        self,
        negative: torch.Tensor,
        positive: torch.Tensor,
        momentum: float = 0.9,
        peak_share: float = 0.1,
    ) -> None:
        if negative.shape != positive.shape or negative.dim() != 2:
            raise ValueError(f"prototype banks must be two (C, D) tensors, got {negative.shape} {positive.shape}")
        self.negative, self.positive = negative, positive
        self.momentum, self.peak_share = momentum, peak_share

    @classmethod
    def empty(
        cls, num_classes: int, channels: int, momentum: float = 0.9, peak_share: float = 0.1
    ) -> ContextPrototypes:
        return cls(torch.zeros(num_classes, channels), torch.zeros(num_classes, channels), momentum, peak_share)

    def to(self, device: torch.device) -> ContextPrototypes:
        self.negative, self.positive = self.negative.to(device), self.positive.to(device)
        return self

    @property
    def has_negative(self) -> torch.Tensor:
        return self.negative.norm(dim=1) > 0

    @property
    def has_positive(self) -> torch.Tensor:
        return self.positive.norm(dim=1) > 0

    def _blend(self, bank: torch.Tensor, c: int, value: torch.Tensor) -> None:
        value = F.normalize(value.float(), dim=0).to(bank.device, bank.dtype)
        seen = bool(bank[c].norm() > 0)
        bank[c] = F.normalize(self.momentum * bank[c] + (1 - self.momentum) * value if seen else value, dim=0)

    @torch.no_grad()
    def update(self, features: torch.Tensor, raw_cams: torch.Tensor, targets: torch.Tensor) -> None:
        """Mine a batch: features (B, D, h, w), raw_cams (B, C, h, w), targets (B, C) multi-hot."""
        unit = F.normalize(features.float(), dim=1).flatten(2)  # (B, D, N)
        cams = raw_cams.float().flatten(2).clamp(min=0)  # (B, C, N)
        for c in range(targets.shape[1]):
            absent, present = targets[:, c] < 0.5, targets[:, c] >= 0.5
            weights = cams[absent, c]  # where the class fires on images without it
            if weights.numel() and float(weights.sum()) > 0:
                self._blend(self.negative, c, torch.einsum("bdn,bn->d", unit[absent], weights) / weights.sum())
            if bool(present.any()):
                peaks = _peak_mask(cams[present, c], self.peak_share)  # (P, N)
                self._blend(self.positive, c, torch.einsum("bdn,bn->d", unit[present], peaks) / peaks.sum())

    def context_mask(self, features: torch.Tensor, class_index: int) -> torch.Tensor:
        """(B, h, w) bool: pixels nearer class ``class_index``'s negative prototype than its positive."""
        return (
            context_gate(
                features, self.negative[class_index : class_index + 1], self.positive[class_index : class_index + 1]
            )[:, 0]
            == 0
        )

    def loss(self, features: torch.Tensor, raw_cams: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean over present (image, class) pairs of the class's max-normalised CAM on its context pixels."""
        terms = []
        has = self.has_negative & self.has_positive
        for c in range(targets.shape[1]):
            present = targets[:, c] >= 0.5
            if not (bool(present.any()) and bool(has[c])):
                continue
            cams = raw_cams[present, c].clamp(min=0)  # (P, h, w)
            peak = cams.flatten(1).amax(dim=1).detach().clamp(min=1e-5).view(-1, 1, 1)
            context = self.context_mask(features[present].detach(), c).float()
            terms.append(((cams / peak) * context).flatten(1).sum(1) / context.flatten(1).sum(1).clamp(min=1))
        if not terms:
            return raw_cams.sum() * 0.0
        return torch.cat(terms).mean()


def context_gate(features: torch.Tensor, negative: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) float: 0 where a pixel's feature is nearer class k's negative (context) prototype
    than its positive (object) one, 1 elsewhere and for classes without both prototypes.

    features (B, D, h, w); negative, positive (K, D) unit rows (zero rows: none mined)."""
    unit = F.normalize(features.float(), dim=1)
    negative, positive = negative.to(unit.device, unit.dtype), positive.to(unit.device, unit.dtype)
    to_negative = torch.einsum("bdhw,kd->bkhw", unit, negative)
    to_positive = torch.einsum("bdhw,kd->bkhw", unit, positive)
    mined = ((negative.norm(dim=1) > 0) & (positive.norm(dim=1) > 0)).view(1, -1, 1, 1)
    return torch.where(mined & (to_negative > to_positive), 0.0, 1.0)


def _peak_mask(cams: torch.Tensor, share: float) -> torch.Tensor:
    """(P, N) float: 1 on each row's top ``share`` of values (at least one pixel), else 0."""
    k = max(1, min(cams.shape[1], round(cams.shape[1] * share)))
    index = cams.topk(k, dim=1).indices
    return torch.zeros_like(cams).scatter_(1, index, 1.0)
