"""Negative mining (method/negatives.py) against brute-force loops, and its classifier step."""

from __future__ import annotations

import math

import pytest
import torch

from ray_wsis.method.negatives import ContextPrototypes, negative_peak_loss, top_share_mean


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(4, 6, 5, 7, generator=g)
    raw = torch.randn(4, 3, 5, 7, generator=g)
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    return features, raw, targets


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def test_negative_peak_loss_is_the_brute_force_mean_over_absent_pairs():
    _, raw, targets = _batch()
    share = 0.2
    terms = []
    for b in range(raw.shape[0]):
        for c in range(raw.shape[1]):
            if targets[b, c] == 0:
                values = sorted(raw[b, c].flatten().tolist(), reverse=True)
                k = max(1, round(len(values) * share))
                peak = sum(values[:k]) / k
                terms.append(math.log1p(math.exp(peak)))
    expected = sum(terms) / len(terms)
    assert negative_peak_loss(raw, targets, share).item() == pytest.approx(expected, rel=1e-5)
    assert top_share_mean(torch.tensor([[1.0, 5.0, 3.0]]), 0.0).item() == 5.0  # at least one value


def test_negative_peak_loss_is_zero_without_absent_classes_and_keeps_the_graph():
    _, raw, _ = _batch()
    raw.requires_grad_(True)
    loss = negative_peak_loss(raw, torch.ones(4, 3), 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert raw.grad is not None and not raw.grad.any()


def test_prototypes_are_the_brute_force_weighted_means():
    features, raw, targets = _batch(1)
    mined = ContextPrototypes.empty(3, 6, momentum=0.9, peak_share=0.1)
    mined.update(features, raw, targets)
    d, n = features.shape[1], features.shape[2] * features.shape[3]
    for c in range(3):
        negative, total = [0.0] * d, 0.0
        positive, count = [0.0] * d, 0
        for b in range(4):
            pixels = [_unit(features[b, :, i // 7, i % 7].tolist()) for i in range(n)]
            values = raw[b, c].flatten().tolist()
            if targets[b, c] == 0:
                for f, v in zip(pixels, values):
                    w = max(v, 0.0)
                    negative = [a + w * x for a, x in zip(negative, f)]
                    total += w
            else:
                top = sorted(range(n), key=lambda i: values[i], reverse=True)[: max(1, round(n * 0.1))]
                for i in top:
                    positive = [a + x for a, x in zip(positive, pixels[i])]
                    count += 1
        assert bool(mined.has_negative[c]) == (total > 0)
        if total > 0:
            assert mined.negative[c].tolist() == pytest.approx(_unit([a / total for a in negative]), abs=1e-5)
        assert bool(mined.has_positive[c]) == (count > 0)
        if count:
            assert mined.positive[c].tolist() == pytest.approx(_unit([a / count for a in positive]), abs=1e-5)
    # class 2 is in no image: no positive prototype, so no loss for it
    assert not mined.has_positive[2]


def test_prototypes_blend_with_momentum():
    mined = ContextPrototypes.empty(1, 2, momentum=0.75)
    first = torch.tensor([1.0, 0.0])
    second = torch.tensor([0.0, 1.0])
    for direction in (first, second):
        features = direction.view(1, 2, 1, 1).repeat(2, 1, 2, 2)
        raw = torch.ones(2, 1, 2, 2)
        mined.update(features, raw, torch.tensor([[0.0], [1.0]]))
    expected = _unit([0.75, 0.25])
    assert mined.negative[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert mined.positive[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_context_loss_is_the_normalised_cam_on_pixels_nearer_the_negative_prototype():
    features, raw, targets = _batch(2)
    mined = ContextPrototypes.empty(3, 6)
    mined.update(features, raw, targets)
    terms = []
    for b in range(4):
        for c in range(3):
            if targets[b, c] == 0 or not (mined.has_negative[c] and mined.has_positive[c]):
                continue
            cams = raw[b, c].clamp(min=0)
            peak = max(float(cams.max()), 1e-5)
            inside, count = 0.0, 0
            for y in range(5):
                for x in range(7):
                    f = torch.tensor(_unit(features[b, :, y, x].tolist()))
                    if float(f @ mined.negative[c]) > float(f @ mined.positive[c]):
                        inside += float(cams[y, x]) / peak
                        count += 1
            terms.append(inside / max(count, 1))
    assert terms
    assert mined.loss(features, raw, targets).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_context_loss_pushes_down_the_cam_on_context_pixels_only():
    """An object pixel and a context pixel; the context alone in a negative image."""
    obj, ctx = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    features = torch.stack([torch.stack([obj, ctx], -1), torch.stack([ctx, ctx], -1)]).view(2, 2, 1, 2)
    raw = torch.tensor([[[[2.0, 1.0]]], [[[1.0, 1.0]]]], requires_grad=True)
    targets = torch.tensor([[1.0], [0.0]])
    mined = ContextPrototypes.empty(1, 2, peak_share=0.5)
    mined.update(features, raw.detach(), targets)
    assert mined.context_mask(features[:1], 0).tolist() == [[[False, True]]]
    mined.loss(features, raw, targets).backward()
    assert raw.grad[0, 0, 0, 1] > 0  # descending lowers the CAM on the context pixel
    assert raw.grad[0, 0, 0, 0] == 0 and not raw.grad[1].any()  # the peak is detached; negatives untouched


def test_the_classifier_step_with_mining_keeps_irn_logits_and_adds_its_terms():
    from ray_wsis.config import load_config
    from ray_wsis.models.checkpoints import build_model
    from ray_wsis.train.loops import NegativeMiningStep, classifier_step, step_function

    torch.manual_seed(0)
    model = build_model("cam", "resnet18", 3)
    model.eval()
    image = torch.randn(2, 3, 48, 64)
    logits, features, raw = model(image, maps=True)
    torch.testing.assert_close(logits, model(image), rtol=1e-4, atol=1e-5)
    assert features.shape[1] == model.backbone.channels[-1] and raw.shape == (2, 3, 3, 4)

    batch = {"image": image, "target": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}
    plain = load_config(None, [])
    assert not isinstance(step_function("cam", plain), NegativeMiningStep)
    mining = load_config(None, ["cam.negative_peak_weight=0.5", "cam.context_prototype_weight=1.0"])
    step = step_function("cam", mining)
    assert isinstance(step, NegativeMiningStep)
    losses = step(model, batch)
    base = classifier_step(model, batch)["loss"]
    assert losses["classification_loss"].item() == pytest.approx(base.item(), rel=1e-4)
    expected = base + 0.5 * losses["negative_peak_loss"] + 1.0 * losses["context_loss"]
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-4)
    losses["loss"].backward()
    assert model.classifier.weight.grad is not None


def test_context_gate_is_the_brute_force_nearer_prototype_rule():
    from ray_wsis.method.negatives import context_gate

    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, 4, 3, 5, generator=g)
    negative = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    positive = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    negative[2] = 0  # class 2: nothing mined, gates nothing
    gate = context_gate(features, negative, positive)
    assert gate.shape == (2, 3, 3, 5)
    for b in range(2):
        for k in range(3):
            for y in range(3):
                for x in range(5):
                    f = torch.tensor(_unit(features[b, :, y, x].tolist()))
                    context = k < 2 and float(f @ negative[k]) > float(f @ positive[k])
                    assert gate[b, k, y, x].item() == (0.0 if context else 1.0)


def test_rectified_cams_are_zero_on_context_features_and_batched_equals_per_image():
    from ray_wsis.method.cam import batched_cams, multiscale_cams
    from ray_wsis.method.negatives import context_gate
    from ray_wsis.models.checkpoints import build_model

    torch.manual_seed(0)
    model = build_model("cam", "resnet18", 3).eval()
    images = [torch.randn(3, 48, 64), torch.randn(3, 48, 64), torch.randn(3, 40, 56)]
    plain = [multiscale_cams(model, image, [1, 3], scales=(1.0,), flip=False) for image in images]
    with torch.no_grad():
        features = model.backbone(images[0][None])[-1]
        unit = torch.nn.functional.normalize(features, dim=1)[0]
        model.context_negative[0] = unit[:, 0, 0]  # class 1's context: the top-left pixel's feature
        model.context_positive[0] = unit[:, -1, -1]
    gate = context_gate(features, model.context_negative[[0, 2]], model.context_positive[[0, 2]])[0]
    assert 0 < int((gate[0] == 0).sum()) < gate[0].numel() and bool((gate[1] == 1).all())
    rectified = [multiscale_cams(model, image, [1, 3], scales=(1.0,), flip=False) for image in images]
    raw = torch.relu(torch.nn.functional.conv2d(features, model.classifier.weight[[0, 2]]))[0] * gate
    expected = torch.nn.functional.interpolate(raw[None], size=rectified[0].shape[-2:], mode="bilinear")[0]
    expected = expected / (expected.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-5)
    torch.testing.assert_close(rectified[0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rectified[0][1], plain[0][1])  # class 3 has no prototypes: unchanged
    batched = batched_cams(model, images, [[1, 3]] * 3, scales=(1.0, 0.5), images_per_forward=2)
    for image, cams in zip(images, batched):
        torch.testing.assert_close(cams, multiscale_cams(model, image, [1, 3], scales=(1.0, 0.5)), rtol=1e-4, atol=1e-4)


def test_rectify_mines_into_the_model_file_and_old_files_load_without_prototypes():
    from ray_wsis.config import load_config
    from ray_wsis.models.checkpoints import build_model
    from ray_wsis.train.loops import step_function

    torch.manual_seed(0)
    model = build_model("cam", "resnet18", 3)
    batch = {"image": torch.randn(2, 3, 48, 64), "target": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}
    step = step_function("cam", load_config(None, ["cam.context_rectify=true"]))
    losses = step(model, batch)
    assert set(losses) == {"loss", "classification_loss"}  # mining alone adds no loss
    # every class is absent from an image (its context mined); class 3 is in none (no object)
    assert (model.context_negative.norm(dim=1) > 0).tolist() == [True, True, True]
    assert (model.context_positive.norm(dim=1) > 0).tolist() == [True, True, False]
    state = model.state_dict()
    assert "context_negative" in state and "context_positive" in state
    old = {k: v for k, v in state.items() if not k.startswith("context_")}
    fresh = build_model("cam", "resnet18", 3)
    fresh.load_state_dict(old)  # a file from before the prototypes: none mined, CAMs ungated
    assert not fresh.context_negative.any() and not fresh.context_positive.any()
