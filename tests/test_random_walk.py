"""The sparse random walk against the reference's dense formula (irn propagate_to_edge)."""

import numpy as np
import pytest
import torch

from ray_wsis.method.path_index import boundary_to_affinity, path_index
from ray_wsis.method.random_walk import WalkOperator, dense_random_walk, dense_walk_cost, random_walk


def affinity_of(boundary, radius=5):
    index = path_index(radius)
    return boundary_to_affinity(boundary[None], index, layout="same")[0], index


def reference_dense_walk(x, boundary, radius, beta, exp_times):
    """irn propagate_to_edge written out from notes 3.3, float64, independent of ray_wsis.

    Pad the edge map by r' = radius - 1 with 1.0 (left, right, bottom), affinity of a pair =
    1 - max edge on its thick line, dense symmetric A with diagonal 1, T = A^b / colsum,
    square exp_times times, crop the padded grid back, rw = x @ T.
    """
    groups_paths = []
    for y in range(0, radius):
        for xx in range(-radius + 1, radius):
            if (y > 0 or xx > 0) and xx * xx + y * y < radius * radius:
                groups_paths.append((y, xx))
    h, w = boundary.shape
    m = radius - 1
    ph, pw = h + m, w + 2 * m
    edge = np.ones((ph, pw))
    edge[:h, m : m + w] = boundary
    n = ph * pw
    a = np.zeros((n, n))
    for dy, dx in groups_paths:
        length_sq = dy * dy + dx * dx
        path = [
            (py, px)
            for py in range(min(0, dy), max(0, dy) + 1)
            for px in range(min(0, dx), max(0, dx) + 1)
            if (dy * px - dx * py) ** 2 < length_sq
        ]
        for y in range(0, ph - m):  # every source of the padded "valid" window
            for xx in range(m, pw - m):
                aff = 1.0 - max(edge[y + py, xx + px] for py, px in path)
                i, j = y * pw + xx, (y + dy) * pw + xx + dx
                a[i, j] = a[j, i] = aff
    np.fill_diagonal(a, 1.0)
    t = a**beta
    t = t / t.sum(axis=0, keepdims=True)
    for _ in range(exp_times):
        t = t @ t
    keep = np.zeros((ph, pw), bool)
    keep[:h, m : m + w] = True
    t = t[keep.reshape(-1)][:, keep.reshape(-1)]
    return (x.reshape(x.shape[0], -1) @ t).reshape(x.shape)


@pytest.mark.parametrize("shape, seed", [((12, 16), 0), ((20, 24), 1)])
def test_sparse_walk_matches_dense_float64(shape, seed):
    torch.manual_seed(seed)
    h, w = shape
    boundary = torch.rand(h, w) * 0.4
    boundary[h // 2, 2 : w - 3] = 0.9  # a partial wall, so the walk is not just uniform
    affinity, index = affinity_of(boundary)
    x = torch.rand(3, h, w)
    x[1] = 0
    x[1, 1, 1] = 5.0  # a point seed
    sparse = random_walk(x, affinity, index, beta=10, exp_times=8)
    dense = dense_random_walk(x.double(), affinity.double(), index, beta=10, exp_times=8)
    assert sparse.shape == x.shape and sparse.dtype == torch.float32
    peak = dense.abs().max().item()
    assert peak > 0
    # the CPU kernel walks a float64 state with float32 weights for float32 x: 10x inside the budget
    assert (sparse.double() - dense).abs().max().item() <= 1e-5 * peak
    # the device-generic eager path (GPUs) walks in x's dtype: float32 within the 1e-4 budget
    eager = WalkOperator(affinity, index, beta=10).eager(x, 256)
    assert eager.dtype == torch.float32
    assert (eager.double() - dense).abs().max().item() <= 1e-4 * peak
    # in float64 both are the same linear map up to rounding
    sparse64 = random_walk(x.double(), affinity.double(), index, beta=10, exp_times=8)
    assert (sparse64 - dense).abs().max().item() <= 1e-10 * peak


def test_dense_walk_matches_an_independent_reference():
    """dense_random_walk (the oracle above) itself follows the reference's padded construction."""
    torch.manual_seed(3)
    h, w, radius = 7, 9, 3
    boundary = torch.rand(h, w, dtype=torch.float64) * 0.5
    affinity, index = affinity_of(boundary, radius)
    x = torch.rand(2, h, w, dtype=torch.float64)
    ours = dense_random_walk(x, affinity, index, beta=10, exp_times=4).numpy()
    theirs = reference_dense_walk(x.numpy(), boundary.numpy(), radius, beta=10, exp_times=4)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    sparse = random_walk(x, affinity, index, beta=10, exp_times=4).numpy()
    np.testing.assert_allclose(sparse, theirs, rtol=1e-9, atol=1e-12)
    eager = WalkOperator(affinity, index, beta=10).eager(x, 16).numpy()
    np.testing.assert_allclose(eager, theirs, rtol=1e-9, atol=1e-12)


def test_boundary_line_blocks_the_walk():
    h, w, line = 16, 28, 14
    boundary = torch.zeros(h, w)
    boundary[:, line] = 0.95
    affinity, index = affinity_of(boundary)
    x = torch.zeros(1, h, w)
    x[0, :, :5] = 1.0  # seed on the left only
    walked = random_walk(x, affinity, index, beta=10, exp_times=8)
    peak = walked.max().item()
    assert peak > 0
    assert walked[0, :, line + 1 :].max().item() < 1e-6 * peak
    # the left side is well mixed: the far left column is reached too
    assert walked[0, :, line - 1].min().item() > 0.5 * peak
    # control: without the line the mass crosses
    open_affinity, _ = affinity_of(torch.zeros(h, w))
    free = random_walk(x, open_affinity, index, beta=10, exp_times=8)
    assert free[0, :, line + 1 :].max().item() > 1e-2 * free.max().item()


def test_constant_input_stays_constant():
    torch.manual_seed(4)
    boundary = torch.rand(11, 13)
    affinity, index = affinity_of(boundary)
    walk = WalkOperator(affinity, index, beta=10)
    # every pixel's weights sum to one (the reference's column normalisation)
    torch.testing.assert_close(walk.weights.sum(0), torch.ones(11, 13, dtype=torch.float64), rtol=1e-12, atol=0)
    out = walk(torch.full((2, 11, 13), 3.0), 256)
    torch.testing.assert_close(out, torch.full((2, 11, 13), 3.0), rtol=1e-5, atol=0)
    # the eager float32 path: rounding over 256 steps stays within the 1e-4-of-peak budget
    torch.testing.assert_close(
        walk.eager(torch.full((2, 11, 13), 3.0), 256), torch.full((2, 11, 13), 3.0), rtol=1e-4, atol=0
    )
    walk64 = WalkOperator(affinity.double(), index, beta=10)
    out64 = walk64(torch.full((1, 11, 13), 3.0, dtype=torch.float64), 256)
    torch.testing.assert_close(out64, torch.full((1, 11, 13), 3.0, dtype=torch.float64), rtol=1e-12, atol=0)


def test_walk_never_exceeds_input_range():
    torch.manual_seed(5)
    affinity, index = affinity_of(torch.rand(10, 12) * 0.3)
    x = torch.rand(1, 10, 12)
    out = random_walk(x, affinity, index, beta=10, exp_times=5)
    assert out.max() <= x.max() + 1e-6 and out.min() >= x.min() - 1e-6


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (3, 17), (9, 2)])
def test_maps_smaller_than_the_radius(shape):
    """Maps narrower than the neighbourhood: the kernel's padding keeps every read in bounds."""
    torch.manual_seed(6)
    h, w = shape
    affinity, index = affinity_of(torch.rand(h, w) * 0.5)
    x = torch.rand(2, h, w, dtype=torch.float64)
    walk = WalkOperator(affinity, index, beta=10)
    dense = dense_random_walk(x, affinity.double(), index, beta=10, exp_times=5)
    torch.testing.assert_close(walk(x, 32), dense, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(walk.eager(x, 32), dense, rtol=1e-9, atol=1e-12)


def test_operator_is_reusable_across_channel_sets():
    """The instance walk calls one operator on several chunks of channels."""
    torch.manual_seed(7)
    affinity, index = affinity_of(torch.rand(14, 19) * 0.6)
    walk = WalkOperator(affinity, index, beta=10)
    x = torch.rand(5, 14, 19)
    whole = walk(x, 64)
    torch.testing.assert_close(torch.cat([walk(x[:2], 64), walk(x[2:], 64)]), whole)


def test_zero_steps_is_identity():
    affinity, index = affinity_of(torch.zeros(6, 8))
    x = torch.rand(2, 6, 8)
    assert torch.equal(WalkOperator(affinity, index, 10)(x, 0), x)


def test_walk_operator_memory_is_linear_in_pixels():
    h, w = 15, 21
    affinity, index = affinity_of(torch.rand(h, w))
    walk = WalkOperator(affinity, index, beta=10)
    d = index.num_directions
    assert walk.weights.numel() == (2 * d + 1) * h * w
    assert len(walk.offsets) == 2 * d + 1


def test_shape_errors():
    affinity, index = affinity_of(torch.zeros(6, 8))
    with pytest.raises(ValueError, match="affinity"):
        WalkOperator(affinity[:-1], index, 10)
    with pytest.raises(ValueError, match="affinity"):
        WalkOperator(affinity[0], index, 10)
    walk = WalkOperator(affinity, index, 10)
    with pytest.raises(ValueError, match="x must be"):
        walk(torch.zeros(1, 6, 9), 1)
    with pytest.raises(ValueError, match="x must be"):
        walk(torch.zeros(6, 8), 1)
    with pytest.raises(ValueError, match="steps"):
        walk(torch.zeros(1, 6, 8), -1)


def test_dense_walk_cost():
    cost = dense_walk_cost(94, 125)
    n = 94 * 125
    assert cost["flops"] == 8 * 2.0 * n**3
    assert cost["matrix_bytes"] == 4.0 * n * n
    assert 0.5e9 < cost["matrix_bytes"] < 0.6e9  # notes 3.3: 0.55 GB for a 500x375 image


def test_the_stencil_walk_of_many_images_equals_each_cpu_walk():
    """walk_many (the device path: one gather and one weighted sum per step for every image and
    channel) against the compiled float64-state CPU walk of each image, within 1e-4 of the peak."""
    from ray_wsis.method.random_walk import walk_many

    torch.manual_seed(3)
    index = path_index(5)
    operators, seeds = [], []
    for _ in range(3):
        boundary = torch.rand(17, 23) ** 3
        affinity = boundary_to_affinity(boundary[None], index, layout="same")[0]
        operators.append(WalkOperator(affinity, index, beta=10))
        seeds.append(torch.rand(4, 17, 23))
    x = torch.stack(seeds)
    batched = walk_many(operators, x, 256)
    for op, seed, got in zip(operators, seeds, batched):
        expected = op.compiled(seed, 256)
        peak = expected.abs().max().item()
        assert (got - expected).abs().max().item() <= 1e-4 * peak
    with pytest.raises(ValueError, match="one operator per image"):
        walk_many(operators[:2], x, 4)
    assert torch.equal(walk_many(operators, x, 0), x)
