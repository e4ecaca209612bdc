"""AiluRus, ToMe and Fast-iTPN's migration on both hosts, through the one token-reduction interface.

References: detectron2's own ViT and our plain Swin (identity cases), and brute-force versions of
the irregular-token machinery written plainly here (merging, attention over a token set, position
terms at fractional offsets).
"""
import math

import pytest
import torch
from detectron2.modeling import ViT
from detectron2.modeling.backbone.utils import add_decomposed_rel_pos

from expedite import ExpediteConfig, HostLayout, TokenBlock, merge_tokens, run_token_block, tokens_from_map, tokens_to_map
from expedite.positions import decomposed_position_features, table_position_bias
from expedite_vit.benchmark.flops import count_flops
from expedite_vit.modeling import ExpeditedViT
from expedite_vit.modeling.swin import D2SwinTransformer
from expedite_vit.runtime.models import token_reduction_modules

TINY_VIT = dict(
    img_size=128, patch_size=16, embed_dim=64, depth=4, num_heads=4, window_size=4,
    window_block_indexes=[0, 2], use_rel_pos=True, rel_pos_zero_init=False,
)
TINY_SWIN = dict(embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 2, 2, 4), window_size=4, drop_path_rate=0.0)

# Settings that keep every token: the methods must then give exactly the host's output.
KEEP_ALL = {
    "tome": dict(method="tome", tome=dict(r=0)),
    "ailurus": dict(method="ailurus", ailurus=dict(budget=16)),  # every token of a 4x4 window is an anchor
    "itpn": dict(method="itpn", itpn=dict(keep=16)),  # a count: the token-set path, nothing migrates
}
REDUCING = {
    "tome": dict(method="tome", tome=dict(r=3)),
    "ailurus": dict(method="ailurus", ailurus=dict(budget=4, threshold=0.0, neighbourhood=3)),
    "itpn-neighbour": dict(method="itpn", itpn=dict(keep=0.5)),
    "itpn-attention": dict(method="itpn", itpn=dict(keep=6, score="attention")),
}


def vit_pair(**expedite):
    torch.manual_seed(0)
    plain = ViT(**TINY_VIT).eval()
    with torch.no_grad():
        for block in plain.blocks:  # random relative positions, so they matter
            block.attn.rel_pos_h.normal_(std=0.5)
            block.attn.rel_pos_w.normal_(std=0.5)
    fast = ExpeditedViT(expedite=ExpediteConfig(**expedite), **TINY_VIT).eval()
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def swin_pair(**expedite):
    torch.manual_seed(0)
    plain = D2SwinTransformer(**TINY_SWIN).eval()
    with torch.no_grad():
        for name, param in plain.named_parameters():
            if "relative_position_bias_table" in name:
                param.normal_(std=0.5)
    fast = D2SwinTransformer(expedite=ExpediteConfig(**expedite), **TINY_SWIN).eval()
    fast.load_state_dict(plain.state_dict())
    return plain, fast


# ---------------------------------------------------------------------------------------------
# Identity: with every token kept, the irregular path computes what the host computes.


@pytest.mark.parametrize("method", sorted(KEEP_ALL))
@pytest.mark.parametrize("size", [(128, 128), (160, 112), (112, 176)])  # 112 / 16 = 7: padded windows
def test_keeping_every_token_equals_detectron2_vit(method, size):
    plain, fast = vit_pair(location=1, **KEEP_ALL[method])
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(fast(x)["last_feat"], plain(x)["last_feat"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", sorted(KEEP_ALL))
@pytest.mark.parametrize("location", [4, 5, 7])  # stage 3 from a regular / a shifted block; its last block
@pytest.mark.parametrize("size", [(128, 128), (96, 160)])  # 96 / 16 = 6: padded, and shifted windows wrap
def test_keeping_every_token_equals_plain_swin(method, location, size):
    plain, fast = swin_pair(location=location, **KEEP_ALL[method])
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref, out = plain(x), fast(x)
    for name in ref:
        torch.testing.assert_close(out[name], ref[name], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Reducing runs, differs from the host, is deterministic and batch-invariant.


@pytest.mark.parametrize("host", ["vit", "swin"])
@pytest.mark.parametrize("method", sorted(REDUCING))
def test_reduction_batch_of_two_equals_two_of_one_and_is_deterministic(host, method):
    if host == "vit":
        plain, fast = vit_pair(location=1, **REDUCING[method])
        x = torch.randn(2, 3, 144, 176)
        run = lambda m, t: m(t)["last_feat"]  # noqa: E731
    else:
        plain, fast = swin_pair(location=4, **REDUCING[method])
        x = torch.randn(2, 3, 128, 160)
        run = lambda m, t: m(t)["res4"]  # noqa: E731
    with torch.no_grad():
        both = run(fast, x)
        torch.testing.assert_close(both, run(fast, x), rtol=0, atol=0)
        for i in range(2):
            torch.testing.assert_close(run(fast, x[i : i + 1]), both[i : i + 1], rtol=1e-5, atol=1e-5)
        ref = run(plain, x)
    assert both.shape == ref.shape and torch.isfinite(both).all()
    assert not torch.allclose(both, ref, atol=1e-3)


@pytest.mark.parametrize("method", sorted(REDUCING))
def test_autocast_runs_with_reduction_in_float32(method):
    _, fast = vit_pair(location=1, **REDUCING[method])
    x = torch.randn(1, 3, 128, 128)
    seen = {}
    hook = fast.token_reduction.unmerging.register_forward_hook(
        lambda module, args, out: seen.update(pos=args[0].pos.dtype, size=args[0].size.dtype)
    )
    with torch.no_grad():
        ref = fast(x)["last_feat"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fast(x)["last_feat"]
    hook.remove()
    assert seen == {"pos": torch.float32, "size": torch.float32}
    assert torch.isfinite(out).all()
    assert torch.nn.functional.cosine_similarity(out.float(), ref, dim=1).mean() > 0.95


@pytest.mark.parametrize("method", sorted(REDUCING))
def test_state_dict_unchanged_and_flops_counted(method):
    plain, fast = vit_pair(location=1, **REDUCING[method])
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    x = torch.randn(1, 3, 128, 128)
    reducers = token_reduction_modules(fast, "reduce")
    counted = count_flops(fast, x, submodules=list(reducers))
    baseline = count_flops(plain, x)["total"]
    assert counted["total"] < baseline
    # fvcore sees the method's own matmuls (AiluRus's distances, ToMe's key similarities).
    assert sum(counted.get(name, 0.0) for name in reducers) > 0


def test_tome_merges_r_tokens_per_window_and_block():
    _, fast = vit_pair(location=1, method="tome", tome=dict(r=2))
    seen = []
    hook = fast.token_reduction.unmerging.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        fast(torch.randn(1, 3, 128, 128))
    hook.remove()
    tokens = seen[0]
    # 8x8 map = 4 windows of 16 tokens; 3 blocks from location 1, each merging 2 per window.
    assert tokens.mergeable.sum(-1).tolist() == [[16 - 3 * 2] * 4]
    assert tokens.size.sum().item() == 64


# ---------------------------------------------------------------------------------------------
# The machinery against brute force.


def brute_merge(x, pos, size, dest):
    """Per window, per destination: size-weighted means, summed sizes, in slot order."""
    batch, groups, slots, _ = x.shape
    out = []
    for b in range(batch):
        for g in range(groups):
            kept = [t for t in range(slots) if dest[b, g, t] == t and size[b, g, t] > 0]
            entries = []
            for t in kept:
                members = [s for s in range(slots) if dest[b, g, s] == t and size[b, g, s] > 0]
                w = torch.tensor([float(size[b, g, s]) for s in members])
                xs = torch.stack([x[b, g, s] for s in members])
                ps = torch.stack([pos[b, g, s] for s in members])
                entries.append(((w[:, None] * xs).sum(0) / w.sum(), (w[:, None] * ps).sum(0) / w.sum(), w.sum()))
            out.append(entries)
    return out


def test_merge_tokens_against_brute_force():
    torch.manual_seed(1)
    tokens = tokens_from_map(torch.randn(2, 6, 7, 5), 4)  # padded to 8x8: 4 windows
    dest = torch.arange(16).repeat(2, 4, 1)
    # Random valid merges: odd slots of real tokens merge into the even slot before them, sometimes.
    merge = (torch.rand(2, 4, 16) < 0.5) & (torch.arange(16) % 2 == 1) & tokens.mergeable
    merge &= tokens.mergeable.roll(1, dims=-1)
    dest = torch.where(merge, dest - 1, dest)
    merged = merge_tokens(tokens, dest)
    expected = brute_merge(tokens.x, tokens.pos, tokens.size, dest)
    for b in range(2):
        for g in range(4):
            entries = expected[b * 4 + g]
            count = len(entries)
            assert int((merged.size[b, g] > 0).sum()) == count
            for t, (x, p, s) in enumerate(entries):
                torch.testing.assert_close(merged.x[b, g, t], x)
                torch.testing.assert_close(merged.pos[b, g, t], p)
                assert merged.size[b, g, t].item() == s.item()
    # Restoring: every position gets the feature of the token it was merged into.
    restored = tokens_to_map(merged)
    original = tokens_to_map(tokens)
    for b in range(2):
        for row in range(6):
            for col in range(7):
                window, slot = (row // 4) * 2 + col // 4, (row % 4) * 4 + col % 4
                target = int(dest[b, window, slot])
                torch.testing.assert_close(restored[b, row, col], merge_weighted_reference(tokens, dest, b, window, target))
    assert restored.shape == original.shape


def merge_weighted_reference(tokens, dest, b, window, target):
    members = [s for s in range(dest.shape[-1]) if dest[b, window, s] == target and tokens.size[b, window, s] > 0]
    return torch.stack([tokens.x[b, window, s] for s in members]).mean(0)


def brute_bias_1d(scores, offset):
    """Linear interpolation of per-offset scores at a fractional index, written plainly."""
    low = math.floor(offset)
    high = min(low + 1, len(scores) - 1)
    frac = offset - low
    return scores[low] * (1 - frac) + scores[high] * frac


def test_decomposed_terms_match_detectron2_at_whole_positions_and_interpolate_between():
    torch.manual_seed(2)
    heads, size, dim = 2, 5, 4
    table_h, table_w = torch.randn(2 * size - 1, dim), torch.randn(2 * size - 1, dim)
    q = torch.randn(1, heads, size * size, dim)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], -1).float()[None]

    def term(positions):
        q_extra, k_extra = decomposed_position_features(q, positions, table_h=table_h, table_w=table_w, size=(size, size))
        return q_extra @ k_extra[:, None].transpose(-2, -1)

    theirs = add_decomposed_rel_pos(torch.zeros(heads, size * size, size * size), q[0], table_h, table_w, (size, size), (size, size))
    torch.testing.assert_close(term(pos)[0], theirs, rtol=1e-5, atol=1e-5)

    # Fractional: the query's term interpolated at its own row, for the two integer rows around
    # the key's, weighted linearly by where the key sits between them.
    frac = (pos * 0.8 + torch.rand_like(pos) * 0.5).clamp(max=size - 1)
    ours = term(frac)
    for h in range(heads):
        for i in (0, 7, 24):
            for j in (3, 12, 20):
                expected = 0.0
                for axis, table in ((0, table_h), (1, table_w)):
                    scores = [float(q[0, h, i] @ table[e]) for e in range(2 * size - 1)]
                    pk = float(frac[0, j, axis])
                    low = math.floor(pk)
                    for row, weight in ((low, 1 - (pk - low)), (min(low + 1, size - 1), pk - low)):
                        expected += weight * brute_bias_1d(scores, float(frac[0, i, axis]) - row + size - 1)
                assert ours[0, h, i, j].item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_table_bias_is_bilinear_in_the_swin_table():
    torch.manual_seed(3)
    window, heads = 4, 3
    table = torch.randn((2 * window - 1) ** 2, heads)
    dy = (torch.rand(1, 5, 5) * 6 - 3)
    dx = (torch.rand(1, 5, 5) * 6 - 3)
    ours = table_position_bias(dy, dx, table=table, window=window)
    side = 2 * window - 1
    for i in range(5):
        for j in range(5):
            fy, fx = float(dy[0, i, j]) + window - 1, float(dx[0, i, j]) + window - 1
            y0, x0 = math.floor(fy), math.floor(fx)
            y1, x1 = min(y0 + 1, side - 1), min(x0 + 1, side - 1)
            wy, wx = fy - y0, fx - x0
            for h in range(heads):
                expected = (
                    table[y0 * side + x0, h] * (1 - wy) * (1 - wx) + table[y0 * side + x1, h] * (1 - wy) * wx
                    + table[y1 * side + x0, h] * wy * (1 - wx) + table[y1 * side + x1, h] * wy * wx
                )
                assert ours[0, h, i, j].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("window", [4, 0])  # windowed and global attention
def test_token_block_attention_against_brute_force(window):
    """A block over a merged token set: each token attends to the tokens of its window (all of
    them for global attention; padding as zero keys only in windows), with proportional
    attention and position terms at the tokens' offsets."""
    torch.manual_seed(4)
    dim, heads = 8, 2
    norm1, norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
    qkv, proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
    mlp = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.GELU(), torch.nn.Linear(16, dim))
    table = torch.randn((2 * 4 - 1) ** 2, heads)
    bias = lambda q, dy, dx: table_position_bias(dy, dx, table=table, window=4)  # noqa: E731
    block = TokenBlock(norm1=norm1, qkv=qkv, proj=proj, norm2=norm2, mlp=mlp, num_heads=heads,
                       scale=(dim // heads) ** -0.5, window=window, position_bias=bias)
    tokens = tokens_from_map(torch.randn(1, 6, 7, dim), 4)
    dest = torch.arange(16).repeat(1, 4, 1)
    dest[0, 0, 1], dest[0, 0, 4], dest[0, 3, 2] = 0, 0, 1  # merge a few real tokens
    tokens = merge_tokens(tokens, dest)
    with torch.no_grad():
        out = run_token_block(block, tokens, proportional_attention=True)
    x, pos, size, pad = tokens.x[0], tokens.pos[0], tokens.size[0], tokens.padding[0]
    groups, slots, _ = x.shape
    members = [(g, t) for g in range(groups) for t in range(slots) if size[g, t] > 0]
    with torch.no_grad():
        for g, t in members:
            if pad[g, t]:
                continue  # padding's own value is never used (the host crops it): not computed
            if window > 0:
                keys = [(g, s) for s in range(slots) if size[g, s] > 0]
            else:
                keys = [(h, s) for h, s in members if not pad[h, s]]
            y = lambda h, s: torch.zeros(dim) if (window > 0 and pad[h, s]) else norm1(x[h, s])  # noqa: E731
            q = qkv(y(g, t))[:dim].reshape(heads, -1)
            head_out = []
            for head in range(heads):
                logits = []
                for h, s in keys:
                    k = qkv(y(h, s))[dim : 2 * dim].reshape(heads, -1)[head]
                    offset = pos[g, t] - pos[h, s]
                    term = bias(None, offset[0].reshape(1, 1, 1), offset[1].reshape(1, 1, 1))[0, head, 0, 0]
                    logits.append(float(q[head] @ k) * block.scale + float(term) + math.log(float(size[h, s])))
                weights = torch.softmax(torch.tensor(logits), 0)
                values = torch.stack([qkv(y(h, s))[2 * dim :].reshape(heads, -1)[head] for h, s in keys])
                head_out.append(weights @ values)
            mid = x[g, t] + proj(torch.cat(head_out))
            expected = mid + mlp(norm2(mid))
            torch.testing.assert_close(out.x[0, g, t], expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_unknown_method_and_foreign_settings_are_named():
    with pytest.raises(ValueError, match=r"^expedite\.method='merge' \(str\) is not allowed: it must be one of 'expedit', 'ailurus', 'tome'"):
        ExpediteConfig(method="merge")
    with pytest.raises(AttributeError, match=r"^expedite\.tome\.grid is not a ToMe setting; its settings are: r, proportional_attention"):
        ExpediteConfig(method="tome", tome=dict(grid=3))
    with pytest.raises(AttributeError, match=r"expedite\.r is not a setting \(tome's is expedite\.tome\.r\)"):
        ExpediteConfig().r = 3


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(method="ailurus", location=1, ailurus=dict(budget=17)), r"^expedite\.ailurus\.budget=17 is above the 16 tokens of a 4x4 ViT window"),
        (dict(method="ailurus", location=1, ailurus=dict(neighbourhood=9)), r"^expedite\.ailurus\.neighbourhood=9 is larger than the 4x4 ViT window"),
        (dict(method="tome", location=1, tome=dict(r=9)), r"^expedite\.tome\.r=9: a block can merge at most half the 16 tokens"),
        (dict(method="tome", location=4), r"^expedite\.location=4 is past the last ViT block"),
    ],
)
def test_settings_that_do_not_fit_the_host_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        ExpediteConfig(**settings).check_host(HostLayout(name="ViT", num_blocks=4, window=4))
    with pytest.raises(ValueError, match=message):
        vit_pair(**settings)


@pytest.mark.parametrize("value", [0, -1, 2.0, "4", True])
def test_budget_below_one_or_not_an_int_is_refused(value):
    with pytest.raises(ValueError, match=r"^expedite\.ailurus\.budget=.* is not allowed: it must be an int >= 1"):
        ExpediteConfig(method="ailurus", ailurus=dict(budget=value))


def test_merging_methods_refuse_convolution_blocks_after_the_location():
    layout = HostLayout(name="ViT", num_blocks=4, window=4, conv_blocks=(2,))
    with pytest.raises(ValueError, match=r"^expedite\.method='tome': ViT blocks \[2\] end in a convolution"):
        ExpediteConfig(method="tome", location=1).check_host(layout)
    ExpediteConfig(method="tome", location=3).check_host(layout)
    ExpediteConfig(method="expedit", location=1, expedit=dict(grid=2, k=2)).check_host(layout)


def test_overriding_a_method_that_does_not_run_is_refused():
    from expedite_vit.runtime.config import ConfigError, load_config
    from test_train_net import TINY_CONFIG

    node = "model.backbone.net.expedite"
    with pytest.raises(ConfigError, match=rf"^{node}\.expedit\.grid=2 is a setting of method 'expedit', but "
                       rf"{node}\.method='tome': it would be ignored; .*{node}\.tome\.r"):
        load_config(str(TINY_CONFIG), [f"{node}.method=tome", f"{node}.expedit.grid=2"])
    cfg = load_config(str(TINY_CONFIG), [f"{node}.method=tome", f"{node}.tome.r=3"])
    assert cfg.model.backbone.net.expedite.tome.r == 3
    # A tool that runs other methods too (benchmark --methods) takes their settings.
    cfg = load_config(str(TINY_CONFIG), [f"{node}.itpn.gather=2"], methods=["expedit", "itpn"])
    assert cfg.model.backbone.net.expedite.itpn.gather == 2
