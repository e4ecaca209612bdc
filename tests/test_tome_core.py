"""ToMe core (expedite/tome.py) against brute-force loop references."""
import math

import pytest
import torch

from expedite.tokens import merge_weighted
from expedite.tome import bipartite_soft_matching


# ---------------------------------------------------------------------------------------------
# Brute-force references: plain Python loops, float64 arithmetic.
# ---------------------------------------------------------------------------------------------
def _unit(v):
    n = math.sqrt(sum(c * c for c in v))
    return [c / n for c in v] if n > 0 else [0.0] * len(v)


def ref_matching(metric, mergeable, r):
    G, T, _ = metric.shape
    dest = [[i for i in range(T)] for _ in range(G)]
    for g in range(G):
        slots = [i for i in range(T) if bool(mergeable[g, i])]
        set_a, set_b = slots[0::2], slots[1::2]
        if not set_b:
            continue
        vec = {i: _unit(metric[g, i].double().tolist()) for i in slots}
        links = []  # (-similarity, a slot, b slot): sorting breaks ties by the lower A slot
        for a in set_a:
            best_b, best_s = None, None
            for b in set_b:  # ascending slots, strict '>' keeps the lowest slot on ties
                s = sum(p * q for p, q in zip(vec[a], vec[b]))
                if best_s is None or s > best_s:
                    best_b, best_s = b, s
            links.append((-best_s, a, best_b))
        links.sort()
        for _, a, b in links[: max(r, 0)]:
            dest[g][a] = b
    return torch.tensor(dest, dtype=torch.long)


def ref_merge(x, size, dest):
    G, T, C = x.shape
    x_out, s_out = x.double().clone(), size.double().clone()
    for g in range(G):
        for d in range(T):
            if int(dest[g, d]) != d:
                s_out[g, d] = 0.0
                continue
            members = [d] + [i for i in range(T) if i != d and int(dest[g, i]) == d]
            if len(members) == 1:
                continue
            total = sum(float(size[g, i]) for i in members)
            s_out[g, d] = total
            for c in range(C):
                x_out[g, d, c] = sum(float(size[g, i]) * float(x[g, i, c]) for i in members) / total
    return x_out, s_out


def _masks(G, T, gen):
    """Mergeable patterns: all, random holes, leading/trailing padding, alternating, 0/1/2 slots."""
    out = [torch.ones(G, T, dtype=torch.bool), torch.rand(G, T, generator=gen) < 0.6]
    lead = torch.ones(G, T, dtype=torch.bool)
    lead[0, :5] = False
    lead[-1, T - 7:] = False
    out.append(lead)
    alt = torch.zeros(G, T, dtype=torch.bool)
    alt[:, 1::2] = True
    alt[-1, ::3] = True
    out.append(alt)
    few = torch.zeros(G, T, dtype=torch.bool)
    few[1, 4] = True  # one mergeable slot: nothing to merge into
    few[-1, 3] = few[-1, T - 2] = True  # two slots
    out.append(few)
    return out


R_VALUES = [0, 1, 3, 7, 14, 15, 40]


# ---------------------------------------------------------------------------------------------
# bipartite_soft_matching
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("G,T", [(2, 30), (3, 17), (3, 2), (2, 1)])
def test_matching_matches_reference(G, T):
    gen = torch.Generator().manual_seed(G * 100 + T)
    metric = torch.randn(G, T, 8, generator=gen)
    for mask in _masks(G, max(T, 8), gen):
        mask = mask[:, :T].contiguous()
        for r in R_VALUES:
            dest = bipartite_soft_matching(metric, mask, r)
            assert dest.dtype == torch.long and dest.shape == (G, T)
            assert torch.equal(dest, ref_matching(metric, mask, r)), (mask, r)


def test_matching_invariants():
    gen = torch.Generator().manual_seed(1)
    G, T = 3, 30
    metric = torch.randn(G, T, 8, generator=gen)
    for mask in _masks(G, T, gen):
        for r in R_VALUES:
            dest = bipartite_soft_matching(metric, mask, r)
            slots = torch.arange(T).expand(G, T)
            moved = dest != slots
            # Non-mergeable slots neither move nor receive; destinations map to themselves.
            assert not moved[~mask].any()
            assert mask.gather(1, dest)[moved].all()
            assert torch.equal(dest.gather(1, dest), dest)
            # Exactly min(r, |A|) merges per group, none with fewer than two mergeable slots.
            n = mask.sum(1)
            expect = torch.where(n >= 2, ((n + 1) // 2).clamp(max=r), torch.zeros_like(n))
            assert torch.equal(moved.sum(1), expect)


def test_alternation_skips_holes():
    # Mergeable slots 1, 2, 4, 7, 8: A = {1, 4, 8}, B = {2, 7}, whatever lies in between.
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, [1, 2, 4, 7, 8]] = True
    metric = torch.zeros(1, 10, 2)
    metric[0, :, 0] = 1.0
    metric[0, 8] = torch.tensor([1.0, 0.5])  # the least similar A token: merged last
    dest = bipartite_soft_matching(metric, mask, 3)
    expect = torch.arange(10)
    expect[[1, 4, 8]] = 2  # all ties to B slot 2 (the lowest)
    assert torch.equal(dest[0], expect)
    dest = bipartite_soft_matching(metric, mask, 2)
    expect[8] = 8
    assert torch.equal(dest[0], expect)


def test_r_zero_and_negative_is_identity():
    metric = torch.randn(3, 20, 8)
    mask = torch.ones(3, 20, dtype=torch.bool)
    for r in (0, -2):
        assert torch.equal(bipartite_soft_matching(metric, mask, r), torch.arange(20).expand(3, 20))


def test_ties_duplicate_tokens():
    gen = torch.Generator().manual_seed(7)
    G, T = 3, 30
    # Prototypes whose cosines are exact in float32 and float64 (0, +-0.5, 1), so that equal
    # similarities are equal bit for bit in both the implementation and the reference.
    protos = torch.zeros(4, 8)
    protos[0, 0] = 2.0
    protos[1, 1] = 3.0
    protos[2, :4] = 0.5
    protos[3, :4] = torch.tensor([-4.0, 4.0, -4.0, 4.0])
    metric = protos[torch.randint(0, 4, (G, T), generator=gen)]  # many exact duplicates
    metric[2] = torch.randn(8, generator=gen)  # a group of identical tokens: every similarity ties
    for mask in _masks(G, T, gen):
        for r in R_VALUES:
            dest = bipartite_soft_matching(metric, mask, r)
            assert torch.equal(dest, ref_matching(metric, mask, r)), (mask, r)
    # All identical: partner is the first B slot, the first r A slots merge.
    mask = torch.ones(1, 12, dtype=torch.bool)
    dest = bipartite_soft_matching(metric[2:3, :12], mask, 4)
    expect = torch.arange(12)
    expect[[0, 2, 4, 6]] = 1
    assert torch.equal(dest[0], expect)


def test_zero_metric_does_not_nan():
    metric = torch.zeros(2, 10, 8)
    mask = torch.ones(2, 10, dtype=torch.bool)
    dest = bipartite_soft_matching(metric, mask, 3)
    assert torch.equal(dest, ref_matching(metric, mask, 3))


def test_matching_deterministic_half_and_grouping():
    gen = torch.Generator().manual_seed(3)
    G, T = 3, 30
    metric = torch.randn(G, T, 8, generator=gen)
    mask = torch.rand(G, T, generator=gen) < 0.7
    for r in (2, 9, 30):
        dest = bipartite_soft_matching(metric, mask, r)
        assert torch.equal(dest, bipartite_soft_matching(metric.clone(), mask.clone(), r))
        half = metric.half()
        from_half = bipartite_soft_matching(half, mask, r)
        assert torch.equal(from_half, bipartite_soft_matching(half.float(), mask, r))
        parts = [bipartite_soft_matching(metric[g : g + 1], mask[g : g + 1], r) for g in range(G)]
        assert torch.equal(torch.cat(parts), dest)


# ---------------------------------------------------------------------------------------------
# merge_weighted
# ---------------------------------------------------------------------------------------------
def _merge_case(seed, G=3, T=30, C=8, r=9):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(G, T, generator=gen) < 0.8
    metric = torch.randn(G, T, C, generator=gen)
    x = torch.randn(G, T, C, generator=gen)
    size = torch.randint(1, 6, (G, T), generator=gen).float() * mask  # empty slots: size 0
    dest = bipartite_soft_matching(metric, mask, r)
    return x, size, dest


@pytest.mark.parametrize("seed,r", [(0, 1), (1, 9), (2, 40)])
def test_merge_matches_reference(seed, r):
    x, size, dest = _merge_case(seed, r=r)
    xm, sm = merge_weighted(x, size, dest)
    xr, sr = ref_merge(x, size, dest)
    assert xm.dtype == x.dtype and sm.dtype == size.dtype
    torch.testing.assert_close(sm.double(), sr, rtol=1e-6, atol=0)
    keep = sr > 0
    torch.testing.assert_close(xm.double()[keep], xr[keep], rtol=1e-6, atol=1e-6)
    # Slots that received nothing (unmerged, empty, merged away) are untouched, bit for bit.
    moved = (dest != torch.arange(dest.shape[1])).float()
    received = torch.zeros_like(size).scatter_add_(1, dest, moved) > 0
    assert torch.equal(xm[~received], x[~received])


def test_merge_many_into_one():
    # Every A token of an all-identical group shares the same partner.
    G, T = 2, 12
    metric = torch.ones(G, T, 8)
    dest = bipartite_soft_matching(metric, torch.ones(G, T, dtype=torch.bool), T)
    x = torch.randn(G, T, 8)
    size = torch.arange(1, T + 1).float().expand(G, T).contiguous()
    xm, sm = merge_weighted(x, size, dest)
    xr, sr = ref_merge(x, size, dest)
    torch.testing.assert_close(sm.double(), sr, rtol=1e-6, atol=0)
    torch.testing.assert_close(xm.double()[sr > 0], xr[sr > 0], rtol=1e-6, atol=1e-6)


def test_merge_conserves_size_and_mass():
    for seed in range(3):
        x, size, dest = _merge_case(seed, r=12)
        xm, sm = merge_weighted(x, size, dest)
        torch.testing.assert_close(sm.sum(1), size.sum(1), rtol=1e-6, atol=0)
        before = (x.double() * size.double().unsqueeze(-1)).sum(1)
        after = (xm.double() * sm.double().unsqueeze(-1)).sum(1)
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_merge_identity_dest():
    x, size, _ = _merge_case(4)
    dest = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    xm, sm = merge_weighted(x, size, dest)
    assert torch.equal(xm, x) and torch.equal(sm, size)


def test_merge_deterministic_half_and_grouping():
    x, size, dest = _merge_case(5, r=10)
    xm, sm = merge_weighted(x, size, dest)
    xm2, sm2 = merge_weighted(x.clone(), size.clone(), dest.clone())
    assert torch.equal(xm, xm2) and torch.equal(sm, sm2)
    xh, sh = merge_weighted(x.half(), size.half(), dest)
    xf, sf = merge_weighted(x.half().float(), size.half().float(), dest)
    assert xh.dtype == torch.float16 and sh.dtype == torch.float16
    assert torch.equal(xh, xf.half()) and torch.equal(sh, sf.half())
    parts = [
        merge_weighted(x[g : g + 1], size[g : g + 1], dest[g : g + 1]) for g in range(x.shape[0])
    ]
    assert torch.equal(torch.cat([p[0] for p in parts]), xm)
    assert torch.equal(torch.cat([p[1] for p in parts]), sm)


def test_merge_extra_feature_dims():
    x, size, dest = _merge_case(6, r=5)
    x4 = x.reshape(x.shape[0], x.shape[1], 2, 4)
    xm4, sm4 = merge_weighted(x4, size, dest)
    xm, sm = merge_weighted(x, size, dest)
    assert xm4.shape == x4.shape
    assert torch.equal(xm4.reshape(xm.shape), xm) and torch.equal(sm4, sm)
