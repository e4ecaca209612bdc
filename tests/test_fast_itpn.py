"""Fast-iTPN's token migration and token gathering, training-free.

References: detectron2's own ViT and our plain Swin (keep everything; G = N), and brute-force
versions written plainly here of both scores, the selection, the region pooling and the gathered
attention with decomposed relative positions at the regions' centres.
"""
import math

import pytest
import torch
from detectron2.modeling.backbone.utils import get_rel_pos

from expedite import ExpediteConfig, HostLayout, InputSizeError, TokenSet, tokens_from_map, tokens_to_map
from expedite.gathering import gather_regions, region_index
from expedite.migration import attention_received, keep_counts, neighbour_distinctness, select_kept
from test_token_methods import TINY_VIT, swin_pair, vit_pair

GLOBAL_BLOCKS = (1, 3)  # TINY_VIT's blocks without windows


def _last(model, x):
    with torch.no_grad():
        return model(x)["last_feat"]


# ---------------------------------------------------------------------------------------------
# Identity cases.


@pytest.mark.parametrize("gather_path", ["map", "token set"])
def test_gathering_with_one_token_per_region_equals_detectron2_vit(gather_path):
    # 128 / 16 = 8: an 8x8 map, so gather=8 gives G = N; keep=16 (a whole 4x4 window, as a
    # count) takes the token-set path, keep=1.0 the regular map.
    keep = 1.0 if gather_path == "map" else 16
    plain, fast = vit_pair(location=1, method="itpn", itpn=dict(keep=keep, gather=8))
    x = torch.randn(2, 3, 128, 128)
    torch.testing.assert_close(_last(fast, x), _last(plain, x), rtol=1e-5, atol=1e-5)


def test_gathering_on_expedits_reduced_map_with_one_token_per_region_equals_expedit_alone():
    # Expedit 4x4 windows -> 2x2 centres: the global blocks see a 4x4 map.
    _, expedit = vit_pair(location=1, expedit=dict(grid=2, k=4))
    _, gathered = vit_pair(location=1, expedit=dict(grid=2, k=4, gather=4))
    x = torch.randn(1, 3, 128, 128)
    torch.testing.assert_close(_last(gathered, x), _last(expedit, x), rtol=1e-5, atol=1e-5)
    gathered.expedite.expedit.gather = 2
    assert not torch.allclose(_last(gathered, x), _last(expedit, x), atol=1e-3)


@pytest.mark.parametrize("location", [4, 5])
def test_keeping_every_token_by_ratio_equals_plain_swin(location):
    plain, fast = swin_pair(location=location, method="itpn", itpn=dict(keep=1.0))
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        ref, out = plain(x), fast(x)
    for name in ref:
        torch.testing.assert_close(out[name], ref[name], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Migration: kept counts, and migrated tokens come back unchanged and in place.


@pytest.mark.parametrize("score", ["neighbour", "attention"])
@pytest.mark.parametrize("keep", [0.5, 5])
def test_migrated_tokens_return_unchanged_in_place(score, keep):
    plain, fast = vit_pair(location=2, method="itpn", itpn=dict(keep=keep, score=score))
    x = torch.randn(2, 3, 112, 176)  # 7x11 map: padded 4x4 windows with 4, 6, 8, ... real tokens
    captured = {}
    fast.token_reduction.migration.register_forward_hook(lambda m, args, out: captured.update(tokens=out))
    out = _last(fast, x)
    tokens: TokenSet = captured["tokens"]
    migrated = (tokens.source >= tokens.x.shape[1] * tokens.x.shape[2]).reshape(2, 8, 12)[:, :7, :11]
    stay = tokens.mergeable.sum(-1)  # (B, G): tokens each window kept
    real = tokens_from_map(torch.zeros(2, 7, 11, 1), 4).mergeable.sum(-1)
    expected = keep_counts(real.flatten(), keep).reshape(real.shape)
    assert torch.equal(stay, expected)
    assert migrated.sum() == real.sum() - expected.sum() > 0
    # Migrated positions hold, bit for bit, their features from before migration.
    carried = tokens.carried.reshape(2, 8, 12, -1)[:, :7, :11]
    features = out.permute(0, 2, 3, 1)
    assert torch.equal(features[migrated], carried[migrated])
    # ... which are the host's features after its first two blocks.
    with torch.no_grad():
        stem = fast.patch_embed(x) + _abs_pos(fast, (7, 11))
        for block in plain.blocks[:2]:
            stem = block(stem)
    torch.testing.assert_close(features[migrated], stem[migrated], rtol=1e-5, atol=1e-5)
    # Kept tokens went on through the later blocks.
    assert not torch.allclose(features[~migrated], stem[~migrated], atol=1e-3)


def _abs_pos(model, size):
    from detectron2.modeling.backbone.utils import get_abs_pos

    return get_abs_pos(model.pos_embed, model.pretrain_use_cls_token, size)


@pytest.mark.parametrize("score", ["neighbour", "attention"])
def test_migration_batch_of_two_equals_two_of_one_with_gathering(score):
    _, fast = vit_pair(location=1, method="itpn", itpn=dict(keep=0.4, score=score, gather=3))
    x = torch.randn(2, 3, 144, 176)
    both = _last(fast, x)
    torch.testing.assert_close(both, _last(fast, x), rtol=0, atol=0)
    for i in range(2):
        torch.testing.assert_close(_last(fast, x[i : i + 1]), both[i : i + 1], rtol=1e-5, atol=1e-5)


def test_migration_scores_and_pooling_run_in_float32_under_autocast():
    _, fast = vit_pair(location=1, method="itpn", itpn=dict(keep=0.5, score="attention", gather=4))
    x = torch.randn(1, 3, 128, 128)
    kept = []
    fast.token_reduction.migration.register_forward_hook(lambda m, args, out: kept.append(out.pos.clone()))
    ref = _last(fast, x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)["last_feat"]
    # The same tokens stay with and without autocast: their scores were computed in float32.
    assert torch.equal(kept[0], kept[1]) and kept[1].dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.nn.functional.cosine_similarity(out.float(), ref, dim=1).mean() > 0.95


# ---------------------------------------------------------------------------------------------
# The cores against brute force.


def test_neighbour_distinctness_against_brute_force():
    torch.manual_seed(1)
    y = torch.randn(2, 4, 5, 6)
    got = neighbour_distinctness(y)
    for b in range(2):
        for i in range(4):
            for j in range(5):
                around = [y[b, a, c] for a in range(i - 1, i + 2) for c in range(j - 1, j + 2)
                          if 0 <= a < 4 and 0 <= c < 5 and (a, c) != (i, j)]
                mean = torch.stack(around).mean(0)
                want = -torch.dot(y[b, i, j], mean) / (y[b, i, j].norm() * mean.norm())
                assert math.isclose(float(got[b, i, j]), float(want), abs_tol=1e-5)


def test_attention_received_against_brute_force():
    torch.manual_seed(2)
    q, k = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    candidates = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)
    got = attention_received(q, k, 0.5, candidates)
    for n in range(3):
        real = candidates[n].nonzero().flatten().tolist()
        total = torch.zeros(5)
        for h in range(2):
            for i in real:
                logits = torch.tensor([float(q[n, h, i] @ k[n, h, j]) * 0.5 for j in real])
                total[real] += logits.softmax(0)
        want = total / (2 * len(real))
        torch.testing.assert_close(got[n], want, rtol=1e-5, atol=1e-6)
        assert math.isclose(float(got[n].sum()), 1.0, rel_tol=1e-5)  # each query's weights sum to 1


def test_keep_counts_and_selection_against_brute_force():
    real = torch.tensor([196, 7, 0, 3])
    assert keep_counts(real, 0.5).tolist() == [98, 4, 0, 2]
    assert keep_counts(real, 1.0).tolist() == [196, 7, 0, 3]
    assert keep_counts(real, 5).tolist() == [5, 5, 0, 3]
    torch.manual_seed(3)
    importance = torch.randn(4, 9)
    importance[0, 3] = importance[0, 5]  # a tie: the earlier slot wins
    candidates = torch.rand(4, 9) > 0.3
    counts = torch.minimum(torch.tensor([2, 3, 1, 9]), candidates.sum(-1))
    got = select_kept(importance, candidates, counts)
    for n in range(4):
        ranked = sorted((j for j in range(9) if candidates[n, j]), key=lambda j: (-float(importance[n, j]), j))
        assert set(got[n].nonzero().flatten().tolist()) == set(ranked[: int(counts[n])])


def test_region_pooling_against_brute_force():
    torch.manual_seed(4)
    pos = torch.tensor([[[0.0, 0.0], [2.0, 6.0], [2.5, 1.5], [6.0, 6.0], [3.0, 3.0], [4.0, 0.0]]])
    size = torch.tensor([[1.0, 2.0, 4.0, 1.0, 1.0, 3.0]])
    include = torch.tensor([[True, True, True, True, False, True]])
    values = torch.randn(1, 6, 5)
    pooled, centres, weight = gather_regions(values, pos, size, include, 3, (7, 7))
    # floor(row * 3 / 7): rows 0-2 -> 0, 3-4 -> 1, 5-6 -> 2; a merged token at row 2.5 -> 1.
    assert region_index(pos, 3, (7, 7)).tolist() == [[0, 2, 3, 8, 4, 3]]
    for region in range(9):
        members = [m for m in range(6) if include[0, m] and region_index(pos[0, m], 3, (7, 7)) == region]
        total = sum(float(size[0, m]) for m in members)
        assert float(weight[0, region]) == total
        if members:
            want = sum(values[0, m] * size[0, m] for m in members) / total
            torch.testing.assert_close(pooled[0, region], want)
            torch.testing.assert_close(centres[0, region], sum(pos[0, m] * size[0, m] for m in members) / total)


def _interpolated_rel(table, side, offset):
    """detectron2's resized table at a fractional offset, by linear interpolation, one entry."""
    full = get_rel_pos(side, side, table)  # (side, side, dim): entry [i, j] = table at offset i - j
    rows = torch.cat([full[0, 1:].flip(0), full[:, 0]])  # offsets -(side-1) .. side-1
    index = offset + side - 1
    low = math.floor(index)
    high = min(low + 1, 2 * side - 2)
    w = index - low
    return rows[low] * (1 - w) + rows[high] * w


def test_gathered_attention_against_brute_force():
    """A global block's attention with gathering, written out per query and region."""
    _, fast = vit_pair(location=1, method="itpn", itpn=dict(keep=1.0, gather=3))
    block = fast.blocks[1]
    token_block = fast._token_block(block, (7, 7))
    torch.manual_seed(5)
    y = torch.randn(1, 7, 7, 64)
    with torch.no_grad():
        got = fast.token_reduction.gathered_attention(token_block, y)
        attn = block.attn
        heads, dim = attn.num_heads, 64 // attn.num_heads
        qkv = attn.qkv(y.reshape(49, 64)).reshape(49, 3, heads, dim)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        cells = [(i, j) for i in range(7) for j in range(7)]
        regions = {}
        for n, (i, j) in enumerate(cells):
            regions.setdefault((i * 3 // 7, j * 3 // 7), []).append(n)
        out = torch.zeros(49, heads, dim)
        for n, (i, j) in enumerate(cells):
            for h in range(heads):
                logits, values = [], []
                for members in regions.values():
                    k_bar = k[members, h].mean(0)
                    ci = sum(cells[m][0] for m in members) / len(members)
                    cj = sum(cells[m][1] for m in members) / len(members)
                    term = q[n, h] @ _interpolated_rel(attn.rel_pos_h, 7, i - ci)
                    term += q[n, h] @ _interpolated_rel(attn.rel_pos_w, 7, j - cj)
                    logits.append(q[n, h] @ k_bar * attn.scale + term + math.log(len(members)))
                    values.append(v[members, h].mean(0))
                out[n, h] = torch.stack(logits).softmax(0) @ torch.stack(values)
        want = attn.proj(out.reshape(49, 64)).reshape(1, 7, 7, 64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Settings and errors.


@pytest.mark.parametrize("value", [0.0, 1.5, 0, -3, True, "half", float("nan")])
def test_keep_out_of_range_or_of_the_wrong_type_is_refused(value):
    with pytest.raises(ValueError, match=r"^expedite\.itpn\.keep=.* is not allowed: it must be a ratio"):
        ExpediteConfig(method="itpn", itpn=dict(keep=value))


@pytest.mark.parametrize(
    "settings, layout, message",
    [
        (dict(method="itpn", itpn=dict(keep=200)), HostLayout("ViT", 12, 14), r"keep=200 is above the 196 tokens"),
        (dict(location=2, expedit=dict(gather=4)), HostLayout("Swin", 24, 12),
         r"^expedite\.expedit\.gather=4: .* \(it has none\)"),
        (dict(method="itpn", location=10, itpn=dict(gather=4)), HostLayout("ViT", 12, 14, global_blocks=(2, 5, 8)),
         r"^expedite\.itpn\.gather=4: .* from location 10 on \(its global blocks are \[2, 5, 8\]\)"),
    ],
)
def test_settings_that_do_not_fit_the_host_are_named(settings, layout, message):
    with pytest.raises(ValueError, match=message):
        ExpediteConfig(**settings).check_host(layout)


def test_more_gathering_tokens_than_the_map_has_is_a_clear_error():
    _, fast = vit_pair(location=1, method="itpn", itpn=dict(keep=0.5, gather=9))
    with pytest.raises(InputSizeError, match=r"^expedite\.itpn\.gather=9: 9x9 gathering tokens .* 8x8 map .* allowed: 1 to 8"):
        _last(fast, torch.randn(1, 3, 128, 128))
    fast.expedite.itpn.keep = 1.0  # the regular-map path checks too
    with pytest.raises(InputSizeError, match=r"^expedite\.itpn\.gather=9: .* allowed: 1 to 8"):
        _last(fast, torch.randn(1, 3, 128, 128))


def test_gathering_on_swin_is_refused_at_build():
    with pytest.raises(ValueError, match=r"gather=2: gathering replaces global attention"):
        swin_pair(location=4, method="itpn", itpn=dict(gather=2))


def test_vit_layout_names_its_global_blocks():
    from expedite_vit.modeling import ExpeditedViT

    assert ExpeditedViT.host_layout(**TINY_VIT).global_blocks == GLOBAL_BLOCKS
    _, fast = vit_pair(enabled=False)
    assert fast.layout.global_blocks == GLOBAL_BLOCKS
