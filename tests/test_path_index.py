"""Pixel pairs within a radius and their thick digital lines (irn misc/indexing.PathIndex)."""

import numpy as np
import pytest
import torch

from ray_wsis.method.path_index import (
    boundary_to_affinity,
    pad_for_same,
    pair_windows,
    path_index,
    path_max,
    source_window,
)


def reference_paths(radius):
    """The reference's get_search_paths_dst, re-derived from its description (notes 3.1).

    Directions: row 0 to the right, then rows 1..r-1 with x^2 + y^2 < r^2. A direction's
    path is every integer point of the (0,0)-(dy,dx) box whose distance to the line is < 1,
    sorted by decreasing |y| + |x| (a stable sort of a row-major scan). Paths are grouped by
    their length, shortest group first, directions in listing order within a group.
    """
    directions = [(0, x) for x in range(1, radius)]
    for y in range(1, radius):
        for x in range(1 - radius, radius):
            if x * x + y * y < radius * radius:
                directions.append((y, x))
    by_length = {}
    for dy, dx in directions:
        points = []
        for y in range(min(0, dy), max(0, dy) + 1):
            for x in range(min(0, dx), max(0, dx) + 1):
                if (dy * x - dx * y) ** 2 / (dy * dy + dx * dx) < 1:
                    points.append((y, x))
        points.sort(key=lambda p: -(abs(p[0]) + abs(p[1])))
        by_length.setdefault(len(points), []).append(points)
    groups = [np.asarray(by_length[n]) for n in sorted(by_length)]
    destinations = np.concatenate([g[:, 0] for g in groups])
    return groups, destinations


def all_paths(index):
    """One list of (y, x) points per direction, in the index's direction order."""
    return [[tuple(p) for p in path] for group in index.groups for path in group.tolist()]


@pytest.mark.parametrize("radius, count", [(5, 34), (10, 152), (2, 4), (3, 12)])
def test_direction_counts(radius, count):
    index = path_index(radius)
    assert index.num_directions == count
    assert index.directions.shape == (count, 2)
    assert index.margin == radius - 1


@pytest.mark.parametrize("radius", [3, 5, 10])
def test_directions_unique_half_plane_within_radius(radius):
    index = path_index(radius)
    dirs = [tuple(d) for d in index.directions.tolist()]
    assert len(set(dirs)) == len(dirs)
    for dy, dx in dirs:
        assert dy > 0 or (dy == 0 and dx > 0), (dy, dx)
        assert dy * dy + dx * dx < radius * radius
        # the opposite direction is never listed: each unordered pair appears once
        assert (-dy, -dx) not in dirs
    # and every offset of the half disc is there
    expected = {
        (y, x)
        for y in range(0, radius)
        for x in range(-radius + 1, radius)
        if x * x + y * y < radius * radius and (y > 0 or x > 0)
    }
    assert set(dirs) == expected


@pytest.mark.parametrize("radius", [3, 5, 10])
def test_paths_are_thick_lines_from_destination_to_origin(radius):
    index = path_index(radius)
    paths = all_paths(index)
    assert len(paths) == index.num_directions
    for (dy, dx), path in zip(index.directions.tolist(), paths):
        assert path[0] == (dy, dx)
        assert path[-1] == (0, 0)
        assert len(set(path)) == len(path)
        # |y|+|x| never increases along the path
        steps = [abs(y) + abs(x) for y, x in path]
        assert steps == sorted(steps, reverse=True)
        # exactly the bounding-box points within distance 1 of the line
        length_sq = dy * dy + dx * dx
        box = {(y, x) for y in range(min(0, dy), max(0, dy) + 1) for x in range(min(0, dx), max(0, dx) + 1)}
        thick = {(y, x) for y, x in box if (dy * x - dx * y) ** 2 < length_sq}
        assert set(path) == thick


@pytest.mark.parametrize("radius", [5, 10])
def test_matches_reference_search_paths_and_order(radius):
    index = path_index(radius)
    groups, destinations = reference_paths(radius)
    assert len(index.groups) == len(groups)
    for ours, theirs in zip(index.groups, groups):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(index.directions, destinations)


def test_group_shapes_match_the_reference_checkpoint_buffers():
    # notes 2.5: shapes of path_indices0..19 in res50_irn.pth are (n_paths, path_len, 13090)
    expected = [
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
    index = path_index(10)
    assert [g.shape[:2] for g in index.groups] == expected
    hs, ws = source_window(128, 128, index)
    assert (hs, ws, hs * ws) == (119, 110, 13090)
    # radius 5: 9 groups with lengths 2..11
    lengths = [g.shape[1] for g in path_index(5).groups]
    assert len(lengths) == 9 and lengths[0] == 2 and lengths[-1] == 11


def test_path_index_is_cached():
    assert path_index(5) is path_index(5)
    assert path_index(10) is path_index(10)
    assert path_index(5) is not path_index(10)


def test_radius_too_small():
    with pytest.raises(ValueError, match="radius"):
        path_index(1)


# ----------------------------------------------------------------------------------------
# path_max


def brute_path_max(boundary, index):
    """(B, D, hs, ws) max along every path and the flat argmax position, by loops."""
    b, h, w = boundary.shape
    hs, ws = source_window(h, w, index)
    m = index.margin
    values = np.zeros((b, index.num_directions, hs, ws))
    where = np.zeros((b, index.num_directions, hs, ws), dtype=np.int64)
    for k, path in enumerate(all_paths(index)):
        for bi in range(b):
            for y in range(hs):
                for x in range(ws):
                    points = [(y + py, m + x + px) for py, px in path]
                    vals = [boundary[bi, py, px] for py, px in points]
                    best = int(np.argmax(vals))
                    values[bi, k, y, x] = vals[best]
                    where[bi, k, y, x] = points[best][0] * w + points[best][1]
    return values, where


def test_path_max_matches_brute_force_with_and_without_grad():
    torch.manual_seed(0)
    index = path_index(3)
    boundary = torch.rand(2, 9, 11, dtype=torch.float64)
    expected, _ = brute_path_max(boundary.numpy(), index)
    plain = path_max(boundary, index)
    assert plain.shape == (2, index.num_directions, 7, 7)
    np.testing.assert_array_equal(plain.numpy(), expected)
    with_grad = path_max(boundary.clone().requires_grad_(True), index)
    assert with_grad.requires_grad
    assert torch.equal(with_grad.detach(), plain)


def test_path_max_gradient_flows_only_to_the_maxima():
    torch.manual_seed(1)
    index = path_index(4)
    boundary = torch.rand(2, 10, 13, dtype=torch.float64)
    _, where = brute_path_max(boundary.numpy(), index)
    weights = torch.rand(2, index.num_directions, *where.shape[2:], dtype=torch.float64)
    leaf = boundary.clone().requires_grad_(True)
    (path_max(leaf, index) * weights).sum().backward()
    expected = np.zeros((2, 10 * 13))
    for bi in range(2):
        np.add.at(expected[bi], where[bi].reshape(-1), weights[bi].numpy().reshape(-1))
    np.testing.assert_allclose(leaf.grad.numpy().reshape(2, -1), expected, rtol=1e-12, atol=1e-12)
    # pixels that are nobody's maximum get nothing
    never = np.ones((2, 10 * 13), bool)
    for bi in range(2):
        never[bi, np.unique(where[bi])] = False
    assert never.any()
    assert (leaf.grad.numpy().reshape(2, -1)[never] == 0).all()


def test_path_max_shape_errors():
    index = path_index(5)
    with pytest.raises(ValueError, match="B, H, W"):
        path_max(torch.zeros(1, 1, 16, 16), index)
    with pytest.raises(ValueError, match="too small"):
        path_max(torch.zeros(1, 16, 8), index)  # width 8 <= 2 * margin


# ----------------------------------------------------------------------------------------
# boundary_to_affinity


def test_zero_boundary_same_layout_gives_one_inside_zero_outside():
    index = path_index(5)
    h, w = 9, 12
    aff = boundary_to_affinity(torch.zeros(1, h, w), index, layout="same")
    assert aff.shape == (1, 34, h, w)
    for k, (dy, dx) in enumerate(index.directions.tolist()):
        for y in range(h):
            for x in range(w):
                inside = 0 <= y + dy < h and 0 <= x + dx < w
                assert aff[0, k, y, x].item() == (1.0 if inside else 0.0), (k, y, x)


@pytest.mark.parametrize("pixel", [(4, 5), (0, 0), (8, 11), (3, 0)])
def test_single_boundary_pixel_cuts_exactly_the_pairs_through_it(pixel):
    index = path_index(4)
    h, w = 9, 12
    boundary = torch.zeros(1, h, w)
    boundary[0, pixel[0], pixel[1]] = 1.0
    aff = boundary_to_affinity(boundary, index, layout="same")[0]
    for k, ((dy, dx), path) in enumerate(zip(index.directions.tolist(), all_paths(index))):
        for y in range(h):
            for x in range(w):
                inside = 0 <= y + dy < h and 0 <= x + dx < w
                through = any((y + py, x + px) == pixel for py, px in path)
                expected = 1.0 if inside and not through else 0.0
                assert aff[k, y, x].item() == expected, (k, y, x)


def test_valid_layout_equals_same_layout_interior():
    torch.manual_seed(2)
    index = path_index(5)
    boundary = torch.rand(2, 14, 17)
    valid = boundary_to_affinity(boundary, index, layout="valid")
    same = boundary_to_affinity(boundary, index, layout="same")
    hs, ws = source_window(14, 17, index)
    m = index.margin
    assert valid.shape == (2, 34, hs, ws)
    assert torch.equal(valid, same[..., :hs, m : m + ws])
    with pytest.raises(ValueError, match="layout"):
        boundary_to_affinity(boundary, index, layout="full")


def test_pad_for_same_pads_left_right_bottom():
    index = path_index(3)
    x = torch.zeros(1, 4, 5)
    padded = pad_for_same(x, index, 7.0)
    assert padded.shape == (1, 6, 9)
    assert torch.all(padded[:, :4, 2:7] == 0)
    assert torch.all(padded[:, 4:, :] == 7) and torch.all(padded[:, :, :2] == 7) and torch.all(padded[:, :, 7:] == 7)


def test_pair_windows_slices():
    index = path_index(3)
    x = torch.arange(2 * 7 * 9).view(2, 7, 9)
    src, dst = pair_windows(x, index)
    hs, ws = source_window(7, 9, index)
    m = index.margin
    assert src.shape == (2, hs, ws) and dst.shape == (2, index.num_directions, hs, ws)
    for k, (dy, dx) in enumerate(index.directions.tolist()):
        for y in range(hs):
            for xx in range(ws):
                assert src[1, y, xx] == x[1, y, m + xx]
                assert dst[1, k, y, xx] == x[1, y + dy, m + xx + dx]
    with pytest.raises(ValueError, match="too small"):
        pair_windows(torch.zeros(7, 4), index)
