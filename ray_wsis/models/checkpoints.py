"""Model files: our own format, and import of the reference repos' state dicts.

Our files are ``torch.save`` of plain dicts of tensors, strings and numbers, loaded with
``weights_only=True``: no pickled code ever runs. The header names the kind of model and its
backbone so that a file of the wrong architecture fails with a clear message before use.
``weights_file_bytes`` / ``load_weights_file`` are the one writer and reader of that shape, for
the pipeline's networks (format ``ray_wsis/1``) and the downstream models (downstream/models.py).

The reference files (irn ``res50_cam.pth``, ``res50_irn.pth``; also published by ReCAM,
AMN, CLIMS...) register modules several times, so one tensor appears under several names
(``resnet50.layer1.*`` = ``stage2.0.*`` = ``backbone.1.*``), and ``res50_irn.pth`` carries
~223 MB of path-index buffers. We read one canonical name per tensor, falling back to the
aliases, and ignore the buffers.
"""

from __future__ import annotations

import io
import re
from typing import Any, Optional

import torch
from torch import nn

from ray_wsis.models.affinitynet import AffinityNet
from ray_wsis.models.backbone import Backbone
from ray_wsis.models.cam_net import CAMNet
from ray_wsis.models.irnet import IRNet

FORMAT = "ray_wsis/1"
KINDS = ("cam", "irnet", "affinitynet")


class CheckpointError(ValueError):
    """A model file that cannot serve here (wrong kind, wrong backbone, corrupt)."""


def checkpoint_header(kind: str, arch: str, num_classes: int) -> dict[str, Any]:
    """The fields a reader checks before it loads the weights (a fingerprint keeps a copy)."""
    return {"kind": kind, "arch": arch, "num_classes": int(num_classes)}


def weights_file_bytes(
    model: nn.Module, file_format: str, header: dict[str, Any], meta: Optional[dict[str, Any]] = None
) -> bytes:
    """A model file: ``torch.save`` of {format, the header's fields, meta (plain values only), the
    state dict on the CPU}, all loadable with ``weights_only=True``."""
    payload = {
        "format": file_format,
        **header,
        "meta": {str(k): v for k, v in (meta or {}).items() if isinstance(v, (str, int, float, bool))},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def load_weights_file(data: bytes, file_format: str, source: str, what: str) -> dict[str, Any]:
    """The payload of a model file of ``file_format``, loaded weights-only (no pickled code runs);
    CheckpointError when it cannot be loaded or is of another format (``what`` it is not, then)."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"{source} is not a loadable weights-only model file: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise CheckpointError(f"{source} is not {what}")
    return payload


def checkpoint_bytes(
    model: nn.Module, kind: str, arch: str, num_classes: int, meta: Optional[dict[str, Any]] = None
) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return weights_file_bytes(model, FORMAT, checkpoint_header(kind, arch, num_classes), meta)


def read_checkpoint(
    data: bytes, expect_kind: str, expect_arch: Optional[str] = None, source: str = "checkpoint"
) -> dict[str, Any]:
    """Parse and check a model file; raises CheckpointError naming what does not fit."""
    payload = load_weights_file(
        data,
        FORMAT,
        source,
        "a ray_wsis model file (to use weights of jiwoon-ahn/irn, "
        "convert them with ray_wsis.models.checkpoints.import_reference_*)",
    )
    check_header(payload, expect_kind, expect_arch, source)
    return payload


def check_header(
    header: dict[str, Any], expect_kind: str, expect_arch: Optional[str] = None, source: str = "checkpoint"
) -> None:
    """CheckpointError when a model file's header (or its fingerprint's copy) does not fit."""
    if header.get("kind") != expect_kind:
        raise CheckpointError(f"{source} holds a {header.get('kind')} model, expected {expect_kind}")
    if expect_arch and header.get("arch") != expect_arch:
        raise CheckpointError(
            f"{source} was trained with backbone {header.get('arch')}, but model.backbone is {expect_arch}"
        )


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")


# ----------------------------------------------------------------------------------------
# Reference (jiwoon-ahn/irn) state dicts

_RESNET_KEY = re.compile(r"^(conv1|bn1|layer[1-4])\.(.*)$")


def _reference_resnet(state: dict[str, torch.Tensor], aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    """Backbone tensors in our layout from `resnet50.*`, else from the stage aliases."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = None
        if key.startswith("resnet50."):
            name = key[len("resnet50.") :]
        else:
            for prefix, target in aliases.items():
                if key.startswith(prefix):
                    name = target + key[len(prefix) :]
                    break
        if name is None:
            continue
        match = _RESNET_KEY.match(name)
        if not match:
            continue
        stage, rest = match.groups()
        ours = {"conv1": f"conv1.0.{rest}", "bn1": f"conv1.1.{rest}"}.get(stage, f"{stage}.{rest}")
        out.setdefault("backbone." + ours, value)
    return out


def import_reference_cam(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """irn res50_cam.pth -> a CAMNet(resnet50, 20) state dict."""
    aliases = {
        "stage1.0.": "conv1.",
        "stage1.1.": "bn1.",
        "stage1.4.": "layer1.",
        "stage2.0.": "layer2.",
        "stage3.0.": "layer3.",
        "stage4.0.": "layer4.",
    }
    out = _reference_resnet(state, aliases)
    weight = state.get("classifier.weight", state.get("newly_added.0.weight"))
    if weight is None:
        raise CheckpointError("reference CAM state dict has no classifier.weight")
    out["classifier.weight"] = weight
    for name in ("context_negative", "context_positive"):  # irn mines no context prototypes
        out[name] = weight.new_zeros(weight.shape[0], weight.shape[1])
    return out


def import_reference_irn(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """irn res50_irn.pth -> an IRNet(resnet50) state dict (path-index buffers dropped)."""
    aliases = {
        "stage1.0.": "conv1.",
        "stage1.1.": "bn1.",
        "stage2.0.": "layer1.",
        "stage3.0.": "layer2.",
        "stage4.0.": "layer3.",
        "stage5.0.": "layer4.",
    }
    out = _reference_resnet(state, aliases)
    mean_keys = ("mean_shift.running_mean", "fc_dp7.4.running_mean", "dp_layers.6.4.running_mean")
    for key in mean_keys:  # one mean-shift buffer, whichever alias the file carries
        if key in state:
            out["mean_shift.running_mean"] = state[key]
            break
    for key, value in state.items():
        if key.startswith("fc_dp7.4."):
            continue  # the mean shift (a BatchNorm in irn before 4582a4b): handled above
        head = re.match(r"^fc_(edge|dp)(\d)\.(.*)$", key)
        if head:
            branch, number, rest = head.groups()
            out[f"{branch}{number}.{rest}"] = value
    return out


# ----------------------------------------------------------------------------------------
# Building models from files


def build_model(
    kind: str,
    arch: str,
    num_classes: int,
    *,
    weights: str = "",
    batch_norm: str = "auto",
    frozen_stages: tuple[str, ...] = (),
    train_backbone: bool = False,
) -> nn.Module:
    backbone = Backbone(arch, weights, batch_norm, frozen_stages)  # type: ignore[arg-type]
    if kind == "cam":
        return CAMNet(backbone, num_classes)
    if kind == "irnet":
        return IRNet(backbone, train_backbone=train_backbone)
    if kind == "affinitynet":
        return AffinityNet(backbone)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def model_from_checkpoint(
    data: bytes, kind: str, arch: Optional[str] = None, source: str = "checkpoint"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model in eval mode from one of our files (no weights are downloaded).

    In eval mode trained and fixed BatchNorm both use running statistics, so the plain
    layer serves either way.
    """
    payload = read_checkpoint(data, kind, arch, source)
    model = build_model(kind, payload["arch"], payload["num_classes"], batch_norm="train")
    load_state(model, payload["state_dict"], source)
    return model.eval(), payload
