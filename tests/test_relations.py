"""Pair labels and the IRNet / AffinityNet losses against loops written from the formulas."""

import math

import numpy as np
import pytest
import torch

from ray_wsis.method.path_index import path_index, source_window
from ray_wsis.method.relations import feature_affinity, irn_loss, pair_labels, psa_loss

EPS = 1e-5


def thick_path(dy, dx):
    """The line points between (0,0) and (dy,dx) (notes 3.1), any order."""
    length_sq = dy * dy + dx * dx
    return [
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if (dy * x - dx * y) ** 2 < length_sq
    ]


def random_labels(rng, shape, classes=(0, 1, 2), ignore_fraction=0.2):
    labels = rng.choice(np.asarray(classes), size=shape)
    labels[rng.random(shape) < ignore_fraction] = 255
    return labels.astype(np.uint8)


def blocky_labels(rng, shape):
    """Labels in 3x3 blocks, so same-label pairs of every kind are plentiful."""
    b, h, w = shape
    coarse = rng.choice(
        np.asarray([0, 1, 2, 255], dtype=np.uint8), size=(b, h // 3 + 1, w // 3 + 1), p=[0.35, 0.3, 0.25, 0.1]
    )
    return np.repeat(np.repeat(coarse, 3, axis=1), 3, axis=2)[:, :h, :w]


def pairs(index, h, w):
    """Yield (k, dy, dx, y, x, src, dst) over directions and sources of the "valid" window."""
    hs, ws = source_window(h, w, index)
    m = index.margin
    for k, (dy, dx) in enumerate(index.directions.tolist()):
        for y in range(hs):
            for x in range(ws):
                yield k, dy, dx, y, x, (y, m + x), (y + dy, m + x + dx)


def test_pair_labels_match_brute_force():
    rng = np.random.default_rng(0)
    index = path_index(4)
    labels = random_labels(rng, (2, 9, 13))
    bg_pos, fg_pos, neg = (t.numpy() for t in pair_labels(torch.from_numpy(labels), index))
    hs, ws = source_window(9, 13, index)
    assert bg_pos.shape == fg_pos.shape == neg.shape == (2, index.num_directions, hs, ws)
    counts = np.zeros(3)
    for b in range(2):
        for k, _dy, _dx, y, x, s, d in pairs(index, 9, 13):
            a, c = labels[b][s], labels[b][d]
            valid = a != 255 and c != 255
            assert bg_pos[b, k, y, x] == float(valid and a == c == 0)
            assert fg_pos[b, k, y, x] == float(valid and a == c and a > 0)
            assert neg[b, k, y, x] == float(valid and a != c)
            counts += [bg_pos[b, k, y, x], fg_pos[b, k, y, x], neg[b, k, y, x]]
    assert (counts > 0).all()  # all three kinds occur, so the check means something


def test_pair_labels_shape_error():
    with pytest.raises(ValueError, match="B, h, w"):
        pair_labels(torch.zeros(8, 12, dtype=torch.uint8), path_index(3))


def brute_irn_loss(edge_logit, disp, labels, index):
    """notes 1.5 term by term, looping over batch x directions x source pixels."""
    b, _, h, w = edge_logit.shape
    edge = 1.0 / (1.0 + np.exp(-edge_logit[:, 0]))
    sums = dict(bg=0.0, bg_n=0.0, fg=0.0, fg_n=0.0, neg=0.0, neg_n=0.0, dfg=0.0, dbg=0.0)
    for bi in range(b):
        for _k, dy, dx, _y, _x, s, d in pairs(index, h, w):
            a, c = labels[bi][s], labels[bi][d]
            if a == 255 or c == 255:
                continue
            aff = 1.0 - max(edge[bi, s[0] + py, s[1] + px] for py, px in thick_path(dy, dx))
            pair = disp[bi, :, s[0], s[1]] - disp[bi, :, d[0], d[1]]
            if a == c == 0:
                sums["bg"] += -math.log(aff + EPS)
                sums["bg_n"] += 1
                sums["dbg"] += np.abs(pair).sum()
            elif a == c:
                sums["fg"] += -math.log(aff + EPS)
                sums["fg_n"] += 1
                sums["dfg"] += np.abs(pair - np.array([dy, dx])).sum()
            else:
                sums["neg"] += -math.log(1 + EPS - aff)
                sums["neg_n"] += 1
    bg_pos = sums["bg"] / (sums["bg_n"] + EPS)
    fg_pos = sums["fg"] / (sums["fg_n"] + EPS)
    neg = sums["neg"] / (sums["neg_n"] + EPS)
    dp_fg = sums["dfg"] / (2 * sums["fg_n"] + EPS)
    dp_bg = sums["dbg"] / (2 * sums["bg_n"] + EPS)
    total = (bg_pos / 2 + fg_pos / 2 + neg) / 2 + (dp_fg + dp_bg) / 2
    return dict(loss=total, bg_pos=bg_pos, fg_pos=fg_pos, neg=neg, dp_fg=dp_fg, dp_bg=dp_bg)


@pytest.mark.parametrize("radius", [3, 5])
def test_irn_loss_matches_brute_force(radius):
    rng = np.random.default_rng(radius)
    index = path_index(radius)
    b, h, w = 2, 11, 15
    edge_logit = rng.normal(size=(b, 1, h, w)) * 2
    disp = rng.normal(size=(b, 2, h, w)) * 3
    labels = blocky_labels(rng, (b, h, w))
    got = irn_loss(torch.from_numpy(edge_logit), torch.from_numpy(disp), torch.from_numpy(labels), index)
    expected = brute_irn_loss(edge_logit, disp, labels, index)
    assert set(got) == set(expected)
    for key, value in expected.items():  # the masks are float32, so "count + 1e-5" rounds: rel 1e-6
        assert got[key].item() == pytest.approx(value, rel=1e-6), key
        assert value > 0, key


def test_irn_loss_backward_reaches_both_heads():
    rng = np.random.default_rng(7)
    index = path_index(3)
    edge = torch.from_numpy(rng.normal(size=(1, 1, 9, 12))).requires_grad_(True)
    disp = torch.from_numpy(rng.normal(size=(1, 2, 9, 12))).requires_grad_(True)
    labels = torch.from_numpy(blocky_labels(rng, (1, 9, 12)))
    irn_loss(edge, disp, labels, index)["loss"].backward()
    assert edge.grad.abs().sum() > 0 and disp.grad.abs().sum() > 0
    assert torch.isfinite(edge.grad).all() and torch.isfinite(disp.grad).all()


def test_displacement_to_a_common_centroid_has_zero_fg_loss():
    index = path_index(5)
    h, w = 14, 18
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    cy, cx = 6.3, 8.7
    toward = torch.stack([cy - yy, cx - xx])[None]  # D(p) = c - p
    labels = torch.ones(1, h, w, dtype=torch.uint8)  # one foreground class everywhere
    edge = torch.zeros(1, 1, h, w, dtype=torch.float64)
    out = irn_loss(edge, toward, labels, index)
    assert out["dp_fg"].item() < 1e-9
    assert out["dp_bg"].item() == 0.0  # no background pairs
    # pointing away from the centroid (the wrong sign) is penalised
    away = irn_loss(edge, -toward, labels, index)
    assert away["dp_fg"].item() > 1.0
    # a constant field on background costs nothing in dp_bg
    bg = irn_loss(
        edge, torch.full((1, 2, h, w), 4.0, dtype=torch.float64), torch.zeros(1, h, w, dtype=torch.uint8), index
    )
    assert bg["dp_bg"].item() == 0.0


def test_irn_loss_shape_error():
    index = path_index(3)
    with pytest.raises(ValueError, match="share"):
        irn_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 9), torch.zeros(1, 8, 8), index)


def brute_feature_affinity(f, index):
    b, c, h, w = f.shape
    hs, ws = source_window(h, w, index)
    out = np.zeros((b, index.num_directions, hs, ws))
    for bi in range(b):
        for k, _dy, _dx, y, x, s, d in pairs(index, h, w):
            out[bi, k, y, x] = math.exp(-np.abs(f[bi, :, s[0], s[1]] - f[bi, :, d[0], d[1]]).mean())
    return out


def test_feature_affinity_matches_psa_formula():
    rng = np.random.default_rng(3)
    index = path_index(3)
    f = rng.normal(size=(2, 5, 8, 10))
    got = feature_affinity(torch.from_numpy(f), index).numpy()
    np.testing.assert_allclose(got, brute_feature_affinity(f, index), rtol=1e-12)


def test_feature_affinity_same_layout_zeroes_outside_partners():
    rng = np.random.default_rng(4)
    index = path_index(3)
    h, w = 7, 9
    f = torch.from_numpy(rng.normal(size=(1, 4, h, w)))
    same = feature_affinity(f, index, layout="same")
    assert same.shape == (1, index.num_directions, h, w)
    for k, (dy, dx) in enumerate(index.directions.tolist()):
        for y in range(h):
            for x in range(w):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    expected = math.exp(-(f[0, :, y, x] - f[0, :, y + dy, x + dx]).abs().mean().item())
                    assert same[0, k, y, x].item() == pytest.approx(expected, rel=1e-12)
                else:
                    assert same[0, k, y, x].item() == 0.0
    with pytest.raises(ValueError, match="layout"):
        feature_affinity(f, index, layout="bogus")


def test_psa_loss_matches_brute_force():
    rng = np.random.default_rng(5)
    index = path_index(4)
    b, h, w = 2, 10, 13
    f = rng.normal(size=(b, 6, h, w)) * 0.5
    labels = blocky_labels(rng, (b, h, w))
    got = psa_loss(torch.from_numpy(f), torch.from_numpy(labels), index)
    aff = brute_feature_affinity(f, index)
    sums = np.zeros(6)
    for bi in range(b):
        for k, _dy, _dx, y, x, s, d in pairs(index, h, w):
            a, c = labels[bi][s], labels[bi][d]
            if a == 255 or c == 255:
                continue
            v = aff[bi, k, y, x]
            if a == c == 0:
                sums[0] += -math.log(v + EPS)
                sums[1] += 1
            elif a == c:
                sums[2] += -math.log(v + EPS)
                sums[3] += 1
            else:
                sums[4] += -math.log(1 + EPS - v)
                sums[5] += 1
    bg, fg, neg = sums[0] / (sums[1] + EPS), sums[2] / (sums[3] + EPS), sums[4] / (sums[5] + EPS)
    assert min(sums[1], sums[3], sums[5]) > 0
    assert got["bg_pos"].item() == pytest.approx(bg, rel=1e-6)
    assert got["fg_pos"].item() == pytest.approx(fg, rel=1e-6)
    assert got["neg"].item() == pytest.approx(neg, rel=1e-6)
    assert got["loss"].item() == pytest.approx(bg / 4 + fg / 4 + neg / 2, rel=1e-6)


def test_psa_loss_shape_error():
    with pytest.raises(ValueError, match="share"):
        psa_loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 9), path_index(3))
