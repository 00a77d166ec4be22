"""Backbone, CAMNet, IRNet, AffinityNet and model files (our format and the reference's)."""

import io

import pytest
import torch
import torchvision
from torch import nn

from ray_wsis.models.affinitynet import AffinityNet
from ray_wsis.models.backbone import STAGES, Backbone, FixedStatsBatchNorm2d, build_backbone
from ray_wsis.models.cam_net import CAMNet
from ray_wsis.models.checkpoints import (
    FORMAT,
    CheckpointError,
    build_model,
    checkpoint_bytes,
    import_reference_cam,
    import_reference_irn,
    model_from_checkpoint,
    read_checkpoint,
)
from ray_wsis.models.irnet import IRNet, MeanShift

CHANNELS = {
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet101": (64, 256, 512, 1024, 2048),
}


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Perturb every parameter and buffer, so a tensor loaded under the wrong name shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("num_batches_tracked"):
                b.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return model


def bn_modules(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


# ----------------------------------------------------------------------------------------
# Backbone


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_backbone_stage_strides_and_channels(arch):
    torch.manual_seed(0)
    backbone = Backbone(arch).eval()
    assert backbone.arch == arch
    assert backbone.channels == CHANNELS[arch]
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 64))
    assert len(features) == 5
    strides = [64 // f.shape[-1] for f in features]
    assert strides == [4, 4, 8, 16, 16]  # IRN strides (2, 2, 2, 1): layer4 keeps stride 16
    assert [f.shape[1] for f in features] == list(CHANNELS[arch])
    assert all(f.shape[-2] == f.shape[-1] for f in features)


def test_backbone_odd_input_sizes_round_up():
    backbone = Backbone("resnet18").eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 37, 50))
    # conv/pool with padding: ceil(H / s) for every stage
    assert [tuple(f.shape[-2:]) for f in features] == [(10, 13), (10, 13), (5, 7), (3, 4), (3, 4)]


def test_unknown_arch_and_stage():
    with pytest.raises(ValueError, match="model.backbone"):
        Backbone("resnet152")
    with pytest.raises(ValueError, match="frozen_stages"):
        Backbone("resnet18", frozen_stages=("layer5",))


def test_frozen_stages_have_no_grad_and_stay_in_eval():
    torch.manual_seed(1)
    frozen = ("conv1", "layer1", "layer2")
    backbone = Backbone("resnet18", frozen_stages=frozen)
    backbone.train()
    for name in STAGES:
        stage = getattr(backbone, name)
        if name in frozen:
            assert all(not p.requires_grad for p in stage.parameters()), name
            assert all(not m.training for m in stage.modules()), name
        else:
            assert all(p.requires_grad for p in stage.parameters()), name
            assert all(m.training for m in stage.modules()), name
    before = {n: b.clone() for n, b in backbone.named_buffers()}
    out = backbone(torch.randn(2, 3, 64, 64))
    out[-1].sum().backward()
    for n, b in backbone.named_buffers():
        stage = n.split(".")[0]
        if stage in frozen:
            assert torch.equal(b, before[n]), n  # statistics of frozen stages do not move
    moved = [
        n
        for n, b in backbone.named_buffers()
        if n.startswith("layer4") and n.endswith("running_mean") and not torch.equal(b, before[n])
    ]
    assert moved  # but the trained stages' statistics do
    for name in STAGES:
        for p in getattr(backbone, name).parameters():
            assert (p.grad is None) == (name in frozen)
    # .eval() then .train() again keeps the frozen stages in eval
    backbone.eval().train()
    assert not backbone.layer1.training and backbone.layer3.training


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    torch.manual_seed(2)
    tv = torchvision.models.resnet18(weights=None)
    randomise(tv, 3)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(tv.state_dict(), path)  # includes fc.*, as an ImageNet file does
    return path, tv.state_dict()


def test_weights_from_a_file_fix_batch_norm(resnet18_weights):
    path, state = resnet18_weights
    backbone = Backbone("resnet18", weights=str(path))
    assert torch.equal(backbone.conv1[0].weight, state["conv1.weight"])
    assert torch.equal(backbone.layer3[1].bn2.running_var, state["layer3.1.bn2.running_var"])
    assert torch.equal(backbone.layer4[0].downsample[0].weight, state["layer4.0.downsample.0.weight"])
    bns = bn_modules(backbone)
    assert bns and all(isinstance(m, FixedStatsBatchNorm2d) for m in bns)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        train_out = backbone.train()(x)
        eval_out = backbone.eval()(x)
    for a, b in zip(train_out, eval_out):
        assert torch.equal(a, b)
    # the affine parameters still train
    assert all(m.weight.requires_grad and m.bias.requires_grad for m in bns)


def test_weights_with_module_prefix_and_state_dict_wrapper(resnet18_weights, tmp_path):
    path, state = resnet18_weights
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, wrapped)
    backbone = Backbone("resnet18", weights=str(wrapped))
    assert torch.equal(backbone.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])


def test_batch_norm_modes(resnet18_weights):
    path, _ = resnet18_weights
    scratch = Backbone("resnet18")
    bns = bn_modules(scratch)
    assert bns and all(type(m) is nn.BatchNorm2d for m in bns)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(scratch.train()(x)[-1], scratch.eval()(x)[-1])
    trained = Backbone("resnet18", weights=str(path), batch_norm="train")
    assert all(type(m) is nn.BatchNorm2d for m in bn_modules(trained))
    frozen = Backbone("resnet18", batch_norm="frozen")
    assert all(isinstance(m, FixedStatsBatchNorm2d) for m in bn_modules(frozen))


def test_weights_missing_keys_do_not_fit(resnet18_weights, tmp_path):
    _, state = resnet18_weights
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.")}, partial)
    with pytest.raises(ValueError, match="does not fit"):
        Backbone("resnet18", weights=str(partial))


def test_weights_of_another_arch_do_not_fit(resnet18_weights):
    path, _ = resnet18_weights
    with pytest.raises(ValueError, match="model.weights"):
        Backbone("resnet50", weights=str(path))


@pytest.mark.parametrize("weights", ["no/such/file.pth", "ResNet50_Weights.NOT_A_WEIGHT", "NotAnEnum.IMAGENET1K_V1"])
def test_invalid_weights_string(weights):
    with pytest.raises(ValueError, match="model.weights"):
        Backbone("resnet18", weights=weights)


@pytest.fixture
def offline_enum_weights(monkeypatch, resnet18_weights):
    """torchvision enum weights served from the local file: the enum path without a download."""
    _, state = resnet18_weights
    calls = []

    def fake_get_state_dict(self, *args, **kwargs):
        calls.append(self)
        return {k: v.clone() for k, v in state.items()}

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", fake_get_state_dict)
    return state, calls


def test_weights_from_a_torchvision_enum_name(offline_enum_weights):
    state, calls = offline_enum_weights
    backbone = Backbone("resnet18", weights="ResNet18_Weights.IMAGENET1K_V1")
    assert calls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1]
    assert torch.equal(backbone.conv1[0].weight, state["conv1.weight"])
    assert all(isinstance(m, FixedStatsBatchNorm2d) for m in bn_modules(backbone))


def test_weights_from_a_bare_enum_member_name(offline_enum_weights):
    state, calls = offline_enum_weights
    backbone = Backbone("resnet18", weights="IMAGENET1K_V1")
    assert torch.equal(backbone.conv1[0].weight, state["conv1.weight"])


def test_build_backbone_init_state():
    source = randomise(Backbone("resnet18"), 4)
    copy = build_backbone("resnet18", init_state=source.state_dict())
    for (n, a), (_, b) in zip(source.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), n
    with pytest.raises(ValueError, match="does not fit"):
        build_backbone("resnet34", init_state=source.state_dict())


# ----------------------------------------------------------------------------------------
# IRNet, CAMNet, AffinityNet


@pytest.fixture(scope="module")
def irnet50():
    torch.manual_seed(5)
    return randomise(IRNet(Backbone("resnet50")), 6)


def test_irnet_branch_parameter_counts(irnet50):
    edge = sum(p.numel() for n, p in irnet50.named_parameters() if n.startswith("edge"))
    dp = sum(p.numel() for n, p in irnet50.named_parameters() if n.startswith("dp"))
    assert edge == 125_409  # notes 2.3, counted on the reference network
    assert dp == 1_269_120
    groups = irnet50.parameter_groups()
    assert sum(p.numel() for p in groups[0]) == edge and sum(p.numel() for p in groups[1]) == dp
    assert groups[2] == []  # frozen backbone: nothing to train


def test_irnet_outputs_and_frozen_backbone(irnet50):
    model = irnet50.train()
    assert not model.backbone.training and model.edge1.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    stats = {n: b.clone() for n, b in model.backbone.named_buffers()}
    x = torch.randn(2, 3, 64, 64)
    edge, dp = model(x)
    assert edge.shape == (2, 1, 16, 16) and dp.shape == (2, 2, 16, 16)
    (edge.sum() + dp.abs().sum()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith(("edge", "dp")))
    for n, b in model.backbone.named_buffers():
        assert torch.equal(b, stats[n]), n  # plain BN in a train-mode forward: statistics unchanged
    model.zero_grad(set_to_none=True)


def test_irnet_mean_shift_only_in_eval(irnet50):
    model = irnet50
    with torch.no_grad():
        model.mean_shift.running_mean.copy_(torch.tensor([1.5, -2.0]))
        x = torch.randn(1, 3, 64, 64)
        edge_train, dp_train = model.train()(x)
        edge_eval, dp_eval = model.eval()(x)
        model.mean_shift.running_mean.zero_()
    torch.testing.assert_close(edge_train, edge_eval)
    torch.testing.assert_close(dp_train - dp_eval, torch.tensor([1.5, -2.0]).view(1, 2, 1, 1).expand_as(dp_eval))
    shift = MeanShift()
    shift.running_mean.copy_(torch.tensor([3.0, 4.0]))
    y = torch.randn(2, 2, 3, 3)
    assert torch.equal(shift.train()(y), y)
    assert torch.equal(shift.eval()(y), y - torch.tensor([3.0, 4.0]).view(1, 2, 1, 1))


def test_irnet_trainable_backbone_gets_gradients():
    model = IRNet(Backbone("resnet18"), train_backbone=True).train()
    assert model.backbone.training
    edge, dp = model(torch.randn(2, 3, 48, 48))
    assert edge.shape == (2, 1, 12, 12) and dp.shape == (2, 2, 12, 12)
    (edge.sum() + dp.sum()).backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert len(model.parameter_groups()[2]) == len(list(model.backbone.parameters()))


def test_irnet_odd_size_outputs_at_stride_4():
    model = IRNet(Backbone("resnet18")).eval()
    with torch.no_grad():
        edge, dp = model(torch.randn(1, 3, 72, 88))
    assert edge.shape == (1, 1, 18, 22) and dp.shape == (1, 2, 18, 22)


@pytest.mark.parametrize("arch, size", [("resnet50", (64, 64)), ("resnet18", (72, 88))])
def test_affinitynet_shape(arch, size):
    model = AffinityNet(Backbone(arch)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 448, -(-size[0] // 8), -(-size[1] // 8))
    assert (out >= -1).all()  # ELU output
    backbone, head = model.parameter_groups()
    assert len(head) == 4 and len(backbone) == len(list(model.backbone.parameters()))


def test_camnet_logits_and_cams():
    torch.manual_seed(7)
    model = CAMNet(Backbone("resnet50"), 20).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        cams = model.cams(x)
        features = model.backbone(x)[-1]
    assert logits.shape == (2, 20)
    assert cams.shape == (2, 20, 4, 4)
    assert (cams >= 0).all() and (cams > 0).any()
    # GAP and the 1x1 conv commute: logits are the spatial mean of the pre-ReLU maps
    raw = torch.nn.functional.conv2d(features, model.classifier.weight)
    torch.testing.assert_close(logits, raw.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cams, raw.clamp(min=0))
    with pytest.raises(ValueError, match="num_classes"):
        CAMNet(Backbone("resnet18"), 0)


def test_camnet_parameter_groups_skip_frozen_stages():
    model = CAMNet(Backbone("resnet18", frozen_stages=("conv1", "layer1", "layer2")), 5)
    backbone, head = model.parameter_groups()
    trainable = list(model.backbone.layer3.parameters()) + list(model.backbone.layer4.parameters())
    assert {id(p) for p in backbone} == {id(p) for p in trainable}
    assert head == [model.classifier.weight]


# ----------------------------------------------------------------------------------------
# Our model files


@pytest.mark.parametrize("kind", ["cam", "irnet", "affinitynet"])
def test_checkpoint_round_trip(kind):
    torch.manual_seed(8)
    model = randomise(build_model(kind, "resnet18", 4, batch_norm="frozen"), 9).eval()
    if kind == "irnet":
        model.mean_shift.running_mean.copy_(torch.tensor([0.7, -0.3]))
    data = checkpoint_bytes(model, kind, "resnet18", 4, meta={"epoch": 3, "note": "x", "bad": [1, 2]})
    payload = read_checkpoint(data, kind, "resnet18")
    assert payload["format"] == FORMAT and payload["kind"] == kind and payload["num_classes"] == 4
    assert payload["meta"] == {"epoch": 3, "note": "x"}
    rebuilt, payload2 = model_from_checkpoint(data, kind)
    assert not rebuilt.training
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        a, b = model(x), rebuilt(x)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert torch.equal(u, v)


@pytest.fixture(scope="module")
def cam_bytes():
    return checkpoint_bytes(build_model("cam", "resnet18", 3), "cam", "resnet18", 3)


def test_checkpoint_wrong_kind(cam_bytes):
    with pytest.raises(CheckpointError, match="cam model, expected irnet"):
        read_checkpoint(cam_bytes, "irnet")
    with pytest.raises(CheckpointError):
        model_from_checkpoint(cam_bytes, "affinitynet")


def test_checkpoint_wrong_arch_names_both(cam_bytes):
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(cam_bytes, "cam", "resnet50")
    assert "resnet18" in str(info.value) and "resnet50" in str(info.value)


@pytest.mark.parametrize("corrupt", ["garbage", "truncated", "flipped"])
def test_checkpoint_corrupt_bytes(cam_bytes, corrupt):
    data = {
        "garbage": b"definitely not a checkpoint",
        "truncated": cam_bytes[: len(cam_bytes) // 2],
        "flipped": cam_bytes[:100] + bytes(b ^ 0xFF for b in cam_bytes[100:400]) + cam_bytes[400:],
    }[corrupt]
    with pytest.raises(CheckpointError, match="my.pt"):
        read_checkpoint(data, "cam", source="my.pt")


def test_checkpoint_not_ours():
    buffer = io.BytesIO()
    torch.save({"classifier.weight": torch.zeros(20, 2048, 1, 1)}, buffer)
    with pytest.raises(CheckpointError, match="import_reference"):
        read_checkpoint(buffer.getvalue(), "cam")


def test_checkpoint_state_that_does_not_fit():
    data = checkpoint_bytes(build_model("affinitynet", "resnet18", 3), "cam", "resnet18", 3)
    with pytest.raises(CheckpointError, match="does not fit"):
        model_from_checkpoint(data, "cam")
    with pytest.raises(ValueError, match="kind"):
        checkpoint_bytes(build_model("cam", "resnet18", 3), "segmenter", "resnet18", 3)
    with pytest.raises(ValueError, match="kind"):
        build_model("segmenter", "resnet18", 3)


UNPICKLED = []


def _record(tag):
    UNPICKLED.append(tag)
    return tag


class Sneaky:
    """Unpickling this calls _record: code execution that weights_only must refuse."""

    def __reduce__(self):
        return (_record, ("code ran",))


def test_checkpoint_loads_weights_only():
    UNPICKLED.clear()
    evil = {
        "format": FORMAT,
        "kind": "cam",
        "arch": "resnet18",
        "num_classes": 3,
        "meta": {},
        "state_dict": {"x": Sneaky()},
    }
    for obj in (Sneaky(), evil):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        with pytest.raises(CheckpointError, match="weights-only"):
            read_checkpoint(buffer.getvalue(), "cam")
        assert UNPICKLED == []
    # control: a plain pickle load of the same bytes does run the code
    torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert UNPICKLED == ["code ran"]


# ----------------------------------------------------------------------------------------
# Reference (jiwoon-ahn/irn) state dicts, built here in the reference key layout (notes 2.5)


def _torchvision_name(ours: str) -> str:
    """backbone.conv1.0.* -> conv1.*, backbone.conv1.1.* -> bn1.*, backbone.layerN.* -> layerN.*"""
    rest = ours[len("backbone.") :]
    if rest.startswith("conv1.0."):
        return "conv1." + rest[len("conv1.0.") :]
    if rest.startswith("conv1.1."):
        return "bn1." + rest[len("conv1.1.") :]
    return rest


# torchvision module -> (stage alias, backbone.* mirror) in each reference network
CAM_ALIASES = {
    "conv1": ("stage1.0", "backbone.0.0"),
    "bn1": ("stage1.1", "backbone.0.1"),
    "layer1": ("stage1.4", "backbone.0.4"),
    "layer2": ("stage2.0", "backbone.1.0"),
    "layer3": ("stage3.0", "backbone.2.0"),
    "layer4": ("stage4.0", "backbone.3.0"),
}
IRN_ALIASES = {
    "conv1": ("stage1.0", "backbone.0.0"),
    "bn1": ("stage1.1", "backbone.0.1"),
    "layer1": ("stage2.0", "backbone.1.0"),
    "layer2": ("stage3.0", "backbone.2.0"),
    "layer3": ("stage4.0", "backbone.3.0"),
    "layer4": ("stage5.0", "backbone.4.0"),
}


def reference_backbone(state, aliases, resnet=True, stage_aliases=True, mirrors=True):
    out = {}
    for key, value in state.items():
        if not key.startswith("backbone."):
            continue
        tv = _torchvision_name(key)
        module, rest = tv.split(".", 1)
        if resnet:
            out["resnet50." + tv] = value
        stage, mirror = aliases[module]
        if stage_aliases:
            out[f"{stage}.{rest}"] = value
        if mirrors:
            out[f"{mirror}.{rest}"] = value
    return out


def reference_cam_state(model: CAMNet, **kw):
    state = model.state_dict()
    out = reference_backbone(state, CAM_ALIASES, **kw)
    out["classifier.weight"] = state["classifier.weight"]
    out["newly_added.0.weight"] = state["classifier.weight"]
    return out


def reference_irn_state(model: IRNet, old_mean_shift=False, **kw):
    state = model.state_dict()
    out = reference_backbone(state, IRN_ALIASES, **kw)
    for key, value in state.items():
        for branch, layers in (("edge", "edge_layers"), ("dp", "dp_layers")):
            if key.startswith(branch) and key[len(branch)].isdigit():
                number, rest = key[len(branch)], key[len(branch) + 2 :]
                out[f"fc_{branch}{number}.{rest}"] = value
                out[f"{layers}.{int(number) - 1}.{rest}"] = value
    mean = state["mean_shift.running_mean"]
    if old_mean_shift:  # before irn 4582a4b MeanShift was a BatchNorm2d(2, affine=False) inside fc_dp7
        for prefix in ("fc_dp7.4.", "dp_layers.6.4."):
            out[prefix + "running_mean"] = mean
            out[prefix + "running_var"] = torch.ones(2)
            out[prefix + "num_batches_tracked"] = torch.tensor(1234)
    else:
        for key in ("mean_shift.running_mean", "fc_dp7.4.running_mean", "dp_layers.6.4.running_mean"):
            out[key] = mean
    shapes = [
        (2, 2),
        (2, 3),
        (4, 4),
        (2, 5),
        (6, 6),
        (4, 7),
        (10, 8),
        (2, 9),
        (12, 10),
        (4, 11),
        (12, 12),
        (2, 13),
        (8, 14),
        (8, 15),
        (22, 16),
        (16, 18),
        (6, 19),
        (20, 20),
        (4, 21),
        (6, 22),
    ]
    for i, (n, length) in enumerate(shapes):  # N_src shrunk from 13090 to 3 to keep the test light
        out[f"path_indices{i}"] = torch.zeros(n, length, 3, dtype=torch.int64)
    out["disp_target"] = torch.zeros(1, 2, 152, 1)
    return out


@pytest.fixture(scope="module")
def cam50():
    torch.manual_seed(10)
    return randomise(CAMNet(Backbone("resnet50"), 20), 11).eval()


@pytest.fixture(scope="module")
def cam50_target():
    return CAMNet(Backbone("resnet50"), 20).eval()


def assert_same_state(imported, model):
    expected = model.state_dict()
    assert set(imported) == set(expected)
    for key, value in expected.items():
        assert torch.equal(imported[key], value), key


def test_reference_cam_layout_has_the_notes_key_count(cam50):
    state = reference_cam_state(cam50)
    assert len(state) == 956  # notes 2.5: 956 keys over 319 tensors
    assert len({id(v) for v in state.values()}) == 319
    assert state["classifier.weight"].shape == (20, 2048, 1, 1)
    assert "resnet50.layer4.0.downsample.1.running_var" in state and "stage1.4.2.conv3.weight" in state


@pytest.mark.parametrize("variant", ["full", "aliases_only", "stage_aliases_only", "resnet_and_newly_added"])
def test_import_reference_cam(cam50, cam50_target, variant):
    kw = {
        "full": {},
        "aliases_only": {"resnet": False},
        "stage_aliases_only": {"resnet": False, "mirrors": False},
        "resnet_and_newly_added": {"stage_aliases": False, "mirrors": False},
    }[variant]
    state = reference_cam_state(cam50, **kw)
    if variant == "resnet_and_newly_added":
        del state["classifier.weight"]
    else:
        assert not any(k.startswith("resnet50.") for k in state) or variant == "full"
    imported = import_reference_cam(state)
    assert_same_state(imported, cam50)
    fresh = randomise(cam50_target, 100)  # different values before the load
    fresh.load_state_dict(imported, strict=True)
    fresh.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = cam50(x)
        assert torch.isfinite(expected).all() and expected.abs().max() > 0
        assert torch.equal(fresh(x), expected)
        assert torch.equal(fresh.cams(x), cam50.cams(x))


def test_import_reference_cam_without_classifier(cam50):
    state = reference_cam_state(cam50)
    del state["classifier.weight"], state["newly_added.0.weight"]
    with pytest.raises(CheckpointError, match="classifier"):
        import_reference_cam(state)


@pytest.fixture(scope="module")
def irn50():
    torch.manual_seed(12)
    model = randomise(IRNet(Backbone("resnet50")), 13)
    with torch.no_grad():
        model.mean_shift.running_mean.copy_(torch.tensor([0.4, -1.1]))
    return model.eval()


@pytest.fixture(scope="module")
def irn50_target():
    return IRNet(Backbone("resnet50")).eval()


def test_reference_irn_layout_has_the_notes_key_count(irn50):
    state = reference_irn_state(irn50)
    assert len(state) == 1056  # notes 2.5
    assert state["fc_dp7.3.weight"].shape == (2, 256, 1, 1)
    assert state["fc_dp7.0.weight"].shape == (256, 448, 1, 1)
    assert state["fc_edge6.weight"].shape == (1, 160, 1, 1) and "edge_layers.5.bias" in state
    assert "stage2.0.0.conv1.weight" in state and "dp_layers.6.4.running_mean" in state


@pytest.mark.parametrize("variant", ["full", "backbone_aliases_only"])
def test_import_reference_irn(irn50, irn50_target, variant):
    state = reference_irn_state(irn50, resnet=(variant == "full"))
    imported = import_reference_irn(state)
    assert_same_state(imported, irn50)
    fresh = randomise(irn50_target, 101)
    fresh.load_state_dict(imported, strict=True)
    fresh.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        edge, dp = irn50(x)
        edge2, dp2 = fresh(x)
    assert torch.isfinite(edge).all() and torch.isfinite(dp).all()
    assert torch.equal(edge, edge2) and torch.equal(dp, dp2)
    assert torch.equal(fresh.mean_shift.running_mean, torch.tensor([0.4, -1.1]))


def test_import_reference_irn_old_mean_shift_layout(irn50, irn50_target):
    state = reference_irn_state(irn50, old_mean_shift=True)
    assert not any(k.startswith("mean_shift.") for k in state)
    imported = import_reference_irn(state)
    fresh = irn50_target
    fresh.load_state_dict(imported, strict=True)
    assert torch.equal(fresh.mean_shift.running_mean, torch.tensor([0.4, -1.1]))


def test_import_reference_irn_mean_shift_from_fc_dp7_only(irn50):
    state = {
        k: v
        for k, v in reference_irn_state(irn50).items()
        if k not in ("mean_shift.running_mean", "dp_layers.6.4.running_mean")
    }
    imported = import_reference_irn(state)
    assert torch.equal(imported["mean_shift.running_mean"], torch.tensor([0.4, -1.1]))
