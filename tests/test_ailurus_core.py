"""Tests of the AiluRus functional core (expedite/ailurus.py) against plain loop references."""
import math

import numpy as np
import pytest
import torch

from expedite.ailurus import (
    ailurus_assignment,
    assign_to_anchors,
    density_peak_scores,
    select_anchors,
)


# ----------------------------------------------------------------------------- inputs

def make_inputs(seed, G=3, side=7, C=8, p_invalid=0.0, fractional=False, smooth=True):
    """Tokens on a side x side grid per group; smooth features make neighbours similar."""
    g = torch.Generator().manual_seed(seed)
    T = side * side
    rr, cc = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pos = torch.stack([rr, cc], -1).reshape(1, T, 2).float().repeat(G, 1, 1)
    if fractional:
        pos = pos + torch.rand(G, T, 2, generator=g) - 0.5
    x = torch.randn(G, T, C, generator=g)
    if smooth:
        # A few spatial regions per group, each with its own prototype, plus noise.
        proto = torch.randn(G, 4, C, generator=g) * 2.0
        region = ((pos[..., 0] >= side / 2).long() * 2 + (pos[..., 1] >= side / 2).long())
        x = torch.gather(proto, 1, region[..., None].expand(G, T, C)) + 0.5 * x
    valid = torch.rand(G, T, generator=g) >= p_invalid
    valid[:, 0] = True  # at least one valid token per group
    return x, pos, valid


# ----------------------------------------------------------------------------- references

def ref_density(x, pos, valid, k, radius):
    x = x.double().numpy()
    pos = pos.double().numpy()
    valid = valid.numpy()
    G, T, C = x.shape
    rho = np.zeros((G, T))
    delta = np.zeros((G, T))
    score = np.full((G, T), -np.inf)
    for g in range(G):
        dist = np.zeros((T, T))
        for i in range(T):
            for j in range(T):
                dist[i, j] = math.sqrt(float(((x[g, i] - x[g, j]) ** 2).sum()))
        for i in range(T):
            if not valid[g, i]:
                continue
            d2s = []
            for j in range(T):
                if j == i or not valid[g, j]:
                    continue
                cheb = max(abs(pos[g, i, 0] - pos[g, j, 0]), abs(pos[g, i, 1] - pos[g, j, 1]))
                if cheb <= radius:
                    d2s.append(dist[i, j] ** 2 / C)
            d2s.sort()
            d2s = d2s[:k]
            rho[g, i] = math.exp(-sum(d2s) / len(d2s)) if d2s else 0.0
        for i in range(T):
            if not valid[g, i]:
                continue
            best = None
            for j in range(T):
                if not valid[g, j] or j == i:
                    continue
                denser = rho[g, j] > rho[g, i] or (rho[g, j] == rho[g, i] and j < i)
                if denser and (best is None or dist[i, j] < best):
                    best = dist[i, j]
            if best is None:  # the peak
                best = max(dist[i, j] for j in range(T) if valid[g, j])
            delta[g, i] = best
            score[g, i] = rho[g, i] * best
    return score, rho, delta


def ref_select(scores, valid, budget):
    G, T = scores.shape
    out = torch.zeros(G, T, dtype=torch.bool)
    for g in range(G):
        cands = [(-float(scores[g, i]), i) for i in range(T) if valid[g, i]]
        cands.sort()
        for _, i in cands[:max(budget, 0)]:
            out[g, i] = True
    return out


def ref_assign(x, pos, valid, anchors, radius, threshold):
    x = x.double()
    G, T, _ = x.shape
    dest = torch.arange(T).repeat(G, 1)
    for g in range(G):
        for i in range(T):
            if not valid[g, i] or anchors[g, i]:
                continue
            best, best_j = None, None
            for j in range(T):
                if not (anchors[g, j] and valid[g, j]):
                    continue
                cheb = max(abs(float(pos[g, i, 0] - pos[g, j, 0])), abs(float(pos[g, i, 1] - pos[g, j, 1])))
                if cheb > radius:
                    continue
                a, b = x[g, i], x[g, j]
                s = float((a @ b) / (a.norm().clamp_min(1e-12) * b.norm().clamp_min(1e-12)))
                if best is None or s > best:
                    best, best_j = s, j
            if best is not None and best >= threshold:
                dest[g, i] = best_j
    return dest


# ----------------------------------------------------------------------------- density peaks

DENSITY_CASES = [
    # seed, side, p_invalid, fractional, k, radius, smooth
    (0, 7, 0.0, False, 4, 1, True),
    (1, 7, 0.3, False, 3, 2, True),
    (2, 6, 0.25, True, 5, 1, False),
    (3, 5, 0.4, True, 30, 3, True),     # k above the neighbour count
    (4, 7, 0.2, False, 2, 0, False),    # radius 0: isolated tokens, rho all 0, peak by slot
    (5, 4, 0.0, True, 1, 10, False),    # window covers the whole group
]


@pytest.mark.parametrize("seed,side,p_invalid,fractional,k,radius,smooth", DENSITY_CASES)
def test_density_matches_reference(seed, side, p_invalid, fractional, k, radius, smooth):
    x, pos, valid = make_inputs(seed, G=3, side=side, p_invalid=p_invalid, fractional=fractional, smooth=smooth)
    score, rho, delta = density_peak_scores(x, pos, valid, k, radius)
    r_score, r_rho, r_delta = ref_density(x, pos, valid, k, radius)
    assert score.dtype == rho.dtype == delta.dtype == torch.float32
    assert score.shape == rho.shape == delta.shape == valid.shape
    np.testing.assert_allclose(rho.numpy(), r_rho, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(delta.numpy(), r_delta, rtol=1e-5, atol=1e-6)
    v = valid.numpy()
    np.testing.assert_allclose(score.numpy()[v], r_score[v], rtol=1e-5, atol=1e-7)
    assert torch.isneginf(score[~valid]).all()
    assert (rho[~valid] == 0).all() and (delta[~valid] == 0).all()


@pytest.mark.parametrize("seed,side,p_invalid,fractional,k,radius,smooth", DENSITY_CASES)
def test_exactly_one_peak_per_group(seed, side, p_invalid, fractional, k, radius, smooth):
    x, pos, valid = make_inputs(seed, G=3, side=side, p_invalid=p_invalid, fractional=fractional, smooth=smooth)
    _, rho, _ = density_peak_scores(x, pos, valid, k, radius)
    G, T = rho.shape
    for g in range(G):
        peaks = []
        for i in range(T):
            if not valid[g, i]:
                continue
            denser = any(
                valid[g, j] and j != i and (rho[g, j] > rho[g, i] or (rho[g, j] == rho[g, i] and j < i))
                for j in range(T)
            )
            if not denser:
                peaks.append(i)
        assert len(peaks) == 1


def test_density_single_token_and_empty_slots():
    x = torch.randn(2, 5, 8)
    pos = torch.zeros(2, 5, 2)
    valid = torch.zeros(2, 5, dtype=torch.bool)
    valid[0, 2] = True  # group 0: a single token; group 1: nothing valid
    score, rho, delta = density_peak_scores(x, pos, valid, k=3, radius=1)
    assert rho[0, 2] == 0 and delta[0, 2] == 0 and score[0, 2] == 0
    assert torch.isneginf(score[1]).all()
    dest = ailurus_assignment(x, pos, valid, budget=1, k=3, radius=1, threshold=0.0)
    assert torch.equal(dest, torch.arange(5).repeat(2, 1))


def test_wide_features_do_not_underflow():
    x, pos, valid = make_inputs(7, G=2, side=5, C=8)
    wide = x.repeat(1, 1, 128) * 3.0  # C = 1024, raw squared distances in the thousands
    _, rho, _ = density_peak_scores(wide, pos, valid, k=4, radius=1)
    assert (rho[valid] > 0).all()


# ----------------------------------------------------------------------------- anchors

@pytest.mark.parametrize("budget", [0, 1, 3, 7, 20, 49, 100])
def test_select_anchors_matches_sorted_reference(budget):
    g = torch.Generator().manual_seed(11)
    G, T = 3, 49
    scores = torch.randint(0, 5, (G, T), generator=g).float()  # many ties
    valid = torch.rand(G, T, generator=g) > 0.3
    scores[1, ::3] = float("-inf")                              # valid -inf ties with invalid slots
    got = select_anchors(scores, valid, budget)
    assert got.dtype == torch.bool
    assert torch.equal(got, ref_select(scores, valid, budget))
    assert not (got & ~valid).any()
    assert torch.equal(got.sum(1), valid.sum(1).clamp_max(budget))


def test_select_anchors_ties_prefer_lower_slot():
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5]])
    valid = torch.tensor([[True, True, False, True, True]])
    assert select_anchors(scores, valid, 2).tolist() == [[False, True, False, True, False]]
    assert select_anchors(scores, valid, 1).tolist() == [[False, True, False, False, False]]


# ----------------------------------------------------------------------------- assignment

@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.5, 0.8, 1.01])
@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("fractional", [False, True])
def test_assign_matches_reference(threshold, radius, fractional):
    x, pos, valid = make_inputs(21 + radius, G=3, side=7, p_invalid=0.2, fractional=fractional)
    g = torch.Generator().manual_seed(5)
    anchors = torch.rand(3, 49, generator=g) < 0.2  # some fall on invalid slots: ignored
    dest = assign_to_anchors(x, pos, valid, anchors, radius, threshold)
    assert dest.dtype == torch.long
    assert torch.equal(dest, ref_assign(x, pos, valid, anchors, radius, threshold))


def test_assign_ties_prefer_lower_slot():
    # Tokens 0 and 2 are identical anchors adjacent to token 1.
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.2], [1.0, 0.0]]])
    pos = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    anchors = torch.tensor([[True, False, True]])
    assert assign_to_anchors(x, pos, valid, anchors, 1, 0.5).tolist() == [[0, 0, 2]]


def test_invalid_anchor_is_ignored():
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [1.0, 0.0]]])
    pos = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]]])
    valid = torch.tensor([[False, True, True]])
    anchors = torch.tensor([[True, False, False]])
    assert assign_to_anchors(x, pos, valid, anchors, 1, 0.0).tolist() == [[0, 1, 2]]


# ----------------------------------------------------------------------------- end to end

def test_full_budget_is_identity():
    x, pos, valid = make_inputs(31, G=3, side=7, p_invalid=0.2, fractional=True)
    budget = int(valid.sum(1).max())
    dest = ailurus_assignment(x, pos, valid, budget=budget, k=4, radius=2, threshold=-1.0)
    assert torch.equal(dest, torch.arange(49).repeat(3, 1))


def test_threshold_above_one_merges_nothing():
    x, pos, valid = make_inputs(32, G=3, side=7, p_invalid=0.2)
    dest = ailurus_assignment(x, pos, valid, budget=5, k=4, radius=3, threshold=1.0001)
    assert torch.equal(dest, torch.arange(49).repeat(3, 1))


def test_pipeline_merges_into_anchors_only():
    x, pos, valid = make_inputs(33, G=3, side=7, p_invalid=0.1)
    budget = 6
    score, _, _ = density_peak_scores(x, pos, valid, 4, 2)
    anchors = select_anchors(score, valid, budget)
    dest = ailurus_assignment(x, pos, valid, budget=budget, k=4, radius=2, threshold=0.3)
    assert torch.equal(dest, assign_to_anchors(x, pos, valid, anchors, 2, 0.3))
    moved = dest != torch.arange(49)
    assert moved.any()                                     # something merged
    assert torch.gather(anchors, 1, dest)[moved].all()     # only into anchors
    assert valid[moved].all()
    assert (dest[anchors] == torch.arange(49).repeat(3, 1)[anchors]).all()


def test_deterministic():
    x, pos, valid = make_inputs(41, G=3, side=7, p_invalid=0.2, fractional=True)
    a = ailurus_assignment(x, pos, valid, budget=8, k=5, radius=2, threshold=0.2)
    b = ailurus_assignment(x, pos, valid, budget=8, k=5, radius=2, threshold=0.2)
    assert torch.equal(a, b)
    s1 = density_peak_scores(x, pos, valid, 5, 2)
    s2 = density_peak_scores(x, pos, valid, 5, 2)
    for u, v in zip(s1, s2):
        assert torch.equal(u, v)


def test_half_input_equals_float_of_half():
    x, pos, valid = make_inputs(51, G=3, side=7, p_invalid=0.2)
    xh = x.half()
    for u, v in zip(density_peak_scores(xh, pos.half(), valid, 4, 2), density_peak_scores(xh.float(), pos, valid, 4, 2)):
        assert u.dtype == torch.float32
        assert torch.equal(u, v)
    a = ailurus_assignment(xh, pos.half(), valid, budget=6, k=4, radius=2, threshold=0.3)
    b = ailurus_assignment(xh.float(), pos, valid, budget=6, k=4, radius=2, threshold=0.3)
    assert torch.equal(a, b)


def test_group_batching_invariance():
    x, pos, valid = make_inputs(61, G=3, side=7, p_invalid=0.25, fractional=True)
    kw = dict(budget=7, k=4, radius=2, threshold=0.25)
    together = ailurus_assignment(x, pos, valid, **kw)
    apart = torch.cat([ailurus_assignment(x[g:g + 1], pos[g:g + 1], valid[g:g + 1], **kw) for g in range(3)])
    assert torch.equal(together, apart)
    s_all = density_peak_scores(x, pos, valid, 4, 2)
    for g in range(3):
        s_one = density_peak_scores(x[g:g + 1], pos[g:g + 1], valid[g:g + 1], 4, 2)
        for u, v in zip(s_all, s_one):
            torch.testing.assert_close(u[g:g + 1], v, rtol=1e-6, atol=0)


def test_no_grad_required():
    x, pos, valid = make_inputs(71, G=2, side=5)
    x.requires_grad_(True)
    dest = ailurus_assignment(x, pos, valid, budget=3, k=3, radius=1, threshold=0.0)
    assert dest.shape == (2, 25)
