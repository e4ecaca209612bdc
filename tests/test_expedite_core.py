"""The shared token-reduction core against plainly written references."""
import itertools
import math

import pytest
import torch

from expedite import (
    cluster_tokens,
    cluster_windows,
    reconstruct_tokens,
    reconstruct_windows,
    reduced_length,
)


def own_cell(index, size, cells):
    return math.floor((index + 0.5) * cells / size)


def brute_force_cluster(x, grid, n_iters, t, radius, mask):
    """Expedit's clustering written plainly: one token at a time, candidate centres found by
    comparing grid coordinates."""
    height, width, channels = x.shape
    gh, gw = grid
    # Adaptive-average-pooling regions, restricted to valid tokens.
    centres, valid = [], []
    for i, j in itertools.product(range(gh), range(gw)):
        rows = range((i * height) // gh, -(-((i + 1) * height) // gh))
        cols = range((j * width) // gw, -(-((j + 1) * width) // gw))
        members = [x[r, c] for r in rows for c in cols if mask[r, c]]
        valid.append(bool(members))
        centres.append(torch.stack(members).mean(0) if members else torch.zeros(channels, dtype=x.dtype))
    centres = torch.stack(centres)
    tokens = [(r, c) for r in range(height) for c in range(width)]
    for _ in range(n_iters):
        sums = torch.zeros_like(centres)
        mass = torch.zeros(gh * gw, dtype=x.dtype)
        for r, c in tokens:
            if not mask[r, c]:
                continue
            cr, cc = own_cell(r, height, gh), own_cell(c, width, gw)
            candidates = [
                m for m in range(gh * gw)
                if abs(m // gw - cr) <= radius and abs(m % gw - cc) <= radius and valid[m]
            ]
            d = torch.stack([((x[r, c] - centres[m]) ** 2).sum() for m in candidates])
            a = torch.softmax(-t * d, 0)
            for weight, m in zip(a, candidates):
                sums[m] += weight * x[r, c]
                mass[m] += weight
        for m in range(gh * gw):
            if mass[m] > 0:
                centres[m] = sums[m] / mass[m]
    return centres, torch.tensor(valid)


def brute_force_reconstruct(x, centres, valid, refined, k, t, normalize):
    height, width, _ = x.shape
    out = torch.zeros_like(x)
    for r, c in itertools.product(range(height), range(width)):
        d = ((x[r, c] - centres) ** 2).sum(-1)
        d[~valid] = float("inf")
        order = torch.argsort(d)[:k]
        w = torch.exp(-t * (d[order] - d[order].min()))
        w = w / (w.sum() if normalize == "sum" else w.norm())
        out[r, c] = (w[:, None] * refined[order]).sum(0)
    return out


@pytest.mark.parametrize(
    "size,grid,radius,normalize",
    [((8, 8), (4, 4), 1, "sum"), ((12, 9), (8, 5), 2, "l2"), ((7, 10), (3, 4), 0, "sum")],
)
def test_matches_brute_force(size, grid, radius, normalize):
    torch.manual_seed(0)
    x = torch.randn(*size, 6, dtype=torch.float64)
    mask = torch.ones(size, dtype=torch.bool)
    mask[-2:, :] = False  # padding rows, as at the edge of a padded window
    centres, context = cluster_tokens(x[None].float(), grid, 3, 0.5, radius, token_mask=mask[None])
    ref_centres, ref_valid = brute_force_cluster(x, grid, 3, 0.5, radius, mask)
    torch.testing.assert_close(context.centre_valid[0], ref_valid)
    torch.testing.assert_close(centres[0].reshape(-1, 6).double(), ref_centres, atol=1e-5, rtol=1e-5)

    refined = torch.randn(1, *grid, 6)
    k = min(5, int(ref_valid.sum()))
    out = reconstruct_tokens(refined, context, k, 0.3, normalize)
    ref = brute_force_reconstruct(x, ref_centres, ref_valid, refined[0].reshape(-1, 6).double(), k, 0.3, normalize)
    torch.testing.assert_close(out[0][mask].double(), ref[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_iters,t,k,t_rec", [(0, 0.01, 1, 0.01), (5, 1e4, 4, 1e4)])
def test_identity_with_as_many_clusters_as_tokens(n_iters, t, k, t_rec):
    torch.manual_seed(0)
    x = torch.randn(2, 9, 11, 16)
    centres, context = cluster_tokens(x, (9, 11), n_iters, t, 2)
    torch.testing.assert_close(centres, x)
    torch.testing.assert_close(reconstruct_tokens(centres, context, k, t_rec), x)
    reduced, state = cluster_windows(x, 5, (5, 5), n_iters, t, 2)
    assert reduced.shape == x.shape
    torch.testing.assert_close(reconstruct_windows(reduced, state, k, t_rec), x)


def test_a_token_never_joins_a_centre_outside_its_locality_window():
    torch.manual_seed(0)
    x = torch.randn(1, 12, 12, 4)
    before, _ = cluster_tokens(x, (6, 6), 1, 100.0, 1)
    # Two tokens of cell (0, 0) move with their sum kept, so every initial centre stays put; one
    # becomes a copy of the far centre (5, 5), which it would join without locality.
    shift = before[0, 5, 5] - x[0, 0, 0]
    x[0, 0, 0] += shift
    x[0, 1, 1] -= shift
    after, _ = cluster_tokens(x, (6, 6), 1, 100.0, 1)
    changed = (after - before).abs().amax(-1)[0] > 1e-5
    assert changed[:2, :2].any()  # radius 1 around cell (0, 0)
    assert not changed[2:, :].any() and not changed[:, 2:].any()


def test_batch_of_two_equals_two_batches_of_one():
    torch.manual_seed(0)
    x = torch.randn(2, 29, 31, 8)
    reduced, state = cluster_windows(x, 7, (4, 4), 3, 0.1, 2)
    full = reconstruct_windows(reduced * 1.5, state, 6, 0.1)
    for i in range(2):
        r_i, s_i = cluster_windows(x[i : i + 1], 7, (4, 4), 3, 0.1, 2)
        torch.testing.assert_close(r_i, reduced[i : i + 1], rtol=0, atol=1e-6)
        torch.testing.assert_close(reconstruct_windows(r_i * 1.5, s_i, 6, 0.1), full[i : i + 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("height,width,window,grid", [(33, 51, 14, 7), (21, 13, 12, 8), (5, 64, 14, 10)])
def test_odd_sizes(height, width, window, grid):
    x = torch.randn(1, height, width, 8)
    reduced, state = cluster_windows(x, window, (grid, grid), 2, 0.01, 2)
    assert reduced.shape[1:3] == (reduced_length(height, window, grid), reduced_length(width, window, grid))
    # A padded partial window keeps only cells holding real tokens, and at least one.
    assert reduced.shape[1] <= -(-height // window) * grid
    out = reconstruct_windows(reduced, state, 5, 0.01)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_deterministic_and_float32_under_autocast():
    torch.manual_seed(0)
    x = torch.randn(2, 28, 28, 16)
    first = cluster_windows(x, 14, (7, 7), 5, 0.01, 2)
    second = cluster_windows(x, 14, (7, 7), 5, 0.01, 2)
    assert torch.equal(first[0], second[0])

    low = x.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reduced, state = cluster_windows(low, 14, (7, 7), 5, 0.01, 2)
        out = reconstruct_windows(reduced, state, 10, 0.01)
    assert reduced.dtype == out.dtype == torch.bfloat16
    assert state.context.centres.dtype == torch.float32
    ref_reduced, ref_state = cluster_windows(low.float(), 14, (7, 7), 5, 0.01, 2)
    torch.testing.assert_close(reduced, ref_reduced.to(torch.bfloat16))
    ref_out = reconstruct_windows(reduced.float(), ref_state, 10, 0.01)
    torch.testing.assert_close(out, ref_out.to(torch.bfloat16))


def test_gradients_flow_to_the_tokens():
    x = torch.randn(1, 14, 14, 8, requires_grad=True)
    reduced, state = cluster_windows(x, 14, (7, 7), 3, 0.01, 2)
    out = reconstruct_windows(reduced * 2.0, state, 4, 0.01)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_reconstruction_rejects_k_outside_the_cluster_count():
    x = torch.randn(1, 8, 8, 4)
    centres, context = cluster_tokens(x, (2, 2), 1, 0.01, 1)
    with pytest.raises(ValueError, match="k=5"):
        reconstruct_tokens(centres, context, 5, 0.01)
    with pytest.raises(ValueError, match="k=0"):
        reconstruct_tokens(centres, context, 0, 0.01)


# The settings object (ExpediteConfig) and its host check: tests/test_expedite_settings.py.


@pytest.mark.parametrize("t_rec", [1e3, 1e30, 3e38])
def test_huge_reconstruction_temperature_stays_finite(t_rec):
    """Weights are shifted by each token's smallest distance before exp: any finite t' gives
    finite output, tending to a hard assignment to the nearest cluster (never NaN)."""
    torch.manual_seed(0)
    x = torch.randn(2, 14, 14, 8) * 10  # distances in the hundreds: exp(-t' d) alone underflows
    reduced, state = cluster_windows(x, 7, (3, 3), 2, 0.01, 1)
    for normalize in ("sum", "l2"):
        out = reconstruct_windows(reduced, state, 4, t_rec, normalize)
        assert torch.isfinite(out).all()
        assert out.abs().amax(-1).min() > 0  # no token collapsed to 0
    hard = reconstruct_windows(reduced, state, 4, 3e38, "sum")
    nearest = reconstruct_windows(reduced, state, 1, 0.01, "sum")
    torch.testing.assert_close(hard, nearest)
