"""``implementation="official"`` against the official Expedit code's behaviour, written plainly
from its description (METHODS.md, "What the official implementation does exactly"): a dense
M x N masked matrix for clustering, loops for top-k and for the Swin mask and bias resize.

One test per point; each shows the official setting follows the reference and the default does
not, on inputs where they differ. Then end-to-end checks on a tiny ViTDet and a tiny Swin.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import ViT

from conftest import expedit_config
from expedite import ClusterContext, cluster_tokens, cluster_windows
from expedite import reconstruct_tokens, reconstruct_windows
from expedite.clustering import _cell_of_position
from expedite_vit.modeling import ExpeditedViT
from expedite_vit.modeling.swin import D2SwinTransformer, resize_relative_position_bias_table


pytestmark = pytest.mark.usefixtures("one_thread")


# --- References ---------------------------------------------------------------------------------


def official_cluster(x, grid, n_iters, t, radius):
    """x: (H, W, C) one window, padding included as zeros. Dense M x N soft k-means; a token's
    own cell is floor(i * h / H); centres outside +-radius cells get distance + 1e16."""
    height, width, channels = x.shape
    gh, gw = grid
    tokens = x.reshape(-1, channels)
    centres = torch.stack([
        x[(i * height) // gh : -(-((i + 1) * height) // gh), (j * width) // gw : -(-((j + 1) * width) // gw)]
        .reshape(-1, channels).mean(0)
        for i in range(gh) for j in range(gw)
    ])
    allowed = torch.zeros(gh * gw, height * width, dtype=torch.bool)
    for n in range(height * width):
        own_r, own_c = ((n // width) * gh) // height, ((n % width) * gw) // width
        for m in range(gh * gw):
            allowed[m, n] = abs(m // gw - own_r) <= radius and abs(m % gw - own_c) <= radius
    for _ in range(n_iters):
        dist = ((tokens[None] - centres[:, None]) ** 2).sum(-1) + (~allowed) * 1e16  # (M, N)
        assign = torch.softmax(-dist * t, dim=0)
        centres = assign @ tokens / assign.sum(1, keepdim=True).clamp(min=1e-16)
    return centres, tokens


def official_reconstruct(tokens, centres, refined, k, t):
    """Every weight exp(-t d) >= the k-th largest is kept (no shift), then L2-normalised."""
    out = torch.zeros(len(tokens), refined.shape[1], dtype=refined.dtype)
    for n in range(len(tokens)):
        dist = ((tokens[n] - centres) ** 2).sum(-1).clamp(min=0)
        weight = torch.exp(-t * dist)
        kth = sorted(weight.tolist(), reverse=True)[k - 1]
        kept = [w if w >= kth else 0.0 for w in weight.tolist()]
        norm = max(math.sqrt(sum(w * w for w in kept)), 1e-12)
        for m, w in enumerate(kept):
            out[n] += (w / norm) * refined[m]
    return out


def official_windows(x, window, grid, n_iters, t, radius):
    """x: (H, W, C). Pad with zeros to whole windows, cluster each, keep every window's centres."""
    height, width, channels = x.shape
    n_h, n_w = -(-height // window), -(-width // window)
    padded = F.pad(x, (0, 0, 0, n_w * window - width, 0, n_h * window - height))
    reduced = torch.zeros(n_h * grid, n_w * grid, channels, dtype=x.dtype)
    kept = {}
    for i in range(n_h):
        for j in range(n_w):
            win = padded[i * window : (i + 1) * window, j * window : (j + 1) * window]
            centres, tokens = official_cluster(win, (grid, grid), n_iters, t, radius)
            kept[i, j] = (tokens, centres)
            reduced[i * grid : (i + 1) * grid, j * grid : (j + 1) * grid] = centres.reshape(grid, grid, channels)
    return reduced, kept


def official_mask(height, width, window, shift):
    """Swin's shifted-window mask as the official code builds it after clustering: regions cut
    at -window and -shift of the padded map (shift being the checkpoint's, not the roll's)."""
    padded_h, padded_w = -(-height // window) * window, -(-width // window) * window
    region = torch.zeros(padded_h, padded_w)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in cuts:
        for cols in cuts:
            region[rows, cols] = label
            label += 1
    windows = region.reshape(padded_h // window, window, padded_w // window, window).transpose(1, 2)
    windows = windows.reshape(-1, window * window)
    return torch.where(windows[:, None, :] != windows[:, :, None], -100.0, 0.0)


def bilinear_table(table, window):
    """Resize a ((2w-1)^2, heads) table to ((2s-1)^2, heads) by bilinear interpolation of the
    (2w-1) x (2w-1) grid, pixel centres aligned (align_corners=False), written with loops."""
    side, heads = math.isqrt(table.shape[0]), table.shape[1]
    grid = table.reshape(side, side, heads)
    new = 2 * window - 1

    def source(i):
        pos = max((i + 0.5) * side / new - 0.5, 0.0)
        low = min(int(math.floor(pos)), side - 1)
        return low, min(low + 1, side - 1), pos - low

    out = torch.zeros(new, new, heads)
    for i in range(new):
        r0, r1, a = source(i)
        for j in range(new):
            c0, c1, b = source(j)
            out[i, j] = ((1 - a) * (1 - b) * grid[r0, c0] + (1 - a) * b * grid[r0, c1]
                         + a * (1 - b) * grid[r1, c0] + a * b * grid[r1, c1])
    return out.reshape(new * new, heads)


# --- Point 1: a token's own cell ------------------------------------------------------------------


def test_point1_own_cell_is_floor_of_i_h_over_H():
    assert _cell_of_position(12, 8, "floor").tolist() == [(i * 8) // 12 for i in range(12)]
    assert _cell_of_position(12, 8, "centre").tolist() == [math.floor((i + 0.5) * 8 / 12) for i in range(12)]
    for size, cells in ((14, 7), (64, 32)):  # where both readings agree
        assert torch.equal(_cell_of_position(size, cells, "floor"), _cell_of_position(size, cells, "centre"))

    torch.manual_seed(0)
    x = torch.randn(12, 12, 6, dtype=torch.float64)
    reference, _ = official_cluster(x, (8, 8), 3, 0.1, 1)
    official, _ = cluster_tokens(x[None].float(), (8, 8), 3, 0.1, 1, own_cell="floor")
    default, _ = cluster_tokens(x[None].float(), (8, 8), 3, 0.1, 1)
    torch.testing.assert_close(official.reshape(64, 6).double(), reference, atol=1e-4, rtol=1e-4)
    assert (default.reshape(64, 6).double() - reference).abs().max() > 1e-2


# --- Point 2: top-k ties --------------------------------------------------------------------------


def test_point2_ties_keep_more_than_k_clusters():
    # A token at the origin and four centres at distance 1 (+-e1, +-e2), a fifth further away:
    # the four tie for k=2.
    tokens = torch.zeros(1, 1, 3)
    centres = torch.tensor([[[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0], [3.0, 3.0, 0]]])
    context = ClusterContext(tokens, centres, torch.ones(1, 5, dtype=torch.bool), (1, 1))
    refined = torch.arange(5 * 3, dtype=torch.float32).reshape(1, 5, 1, 3) ** 1.5
    reference = official_reconstruct(tokens[0], centres[0], refined.reshape(5, 3), 2, 0.5)
    official = reconstruct_tokens(refined, context, 2, 0.5, "l2", keep_ties=True, shift_distances=False)
    default = reconstruct_tokens(refined, context, 2, 0.5, "l2")
    torch.testing.assert_close(official.reshape(1, 3), reference)
    torch.testing.assert_close(reference, refined.reshape(5, 3)[:4].sum(0, keepdim=True) / 2)  # all 4 kept
    assert (default.reshape(1, 3) - reference).abs().max() > 1.0  # only 2 of the 4


# --- Point 3: unshifted reconstruction weights ----------------------------------------------------


def test_point3_large_t_prime_underflows_to_zero_in_official_only():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 6, 4) * 3
    centres, context = cluster_tokens(x, (3, 3), 2, 0.1, 1)
    refined = torch.randn(1, 3, 3, 4)
    t_prime = 1e3  # t' * d_min is far above 90 for every token here
    d_min = ((context.tokens[0][:, None] - context.centres[0][None]) ** 2).sum(-1).min(-1).values
    assert (t_prime * d_min > 100).all()
    reference = official_reconstruct(context.tokens[0], context.centres[0], refined.reshape(9, 4), 3, t_prime)
    official = reconstruct_tokens(refined, context, 3, t_prime, "l2", keep_ties=True, shift_distances=False)
    default = reconstruct_tokens(refined, context, 3, t_prime, "l2")
    assert torch.equal(reference, torch.zeros_like(reference))
    assert torch.equal(official.reshape(36, 4), reference)
    assert torch.isfinite(default).all() and (default.abs().amax(-1) > 0).all()
    # The default is the same formula with the weights shifted by the smallest distance.
    nearest = reconstruct_tokens(refined, context, 1, 1.0)
    torch.testing.assert_close(default, nearest)  # t' this large: a hard assignment


# --- Point 4: padding clustered, reduced map not cropped ------------------------------------------


def test_point4_vitdet_map_64_by_14_windows_to_7_gives_35():
    torch.manual_seed(0)
    x = torch.randn(1, 64, 64, 4)
    settings = (14, (7, 7), 2, 0.05, 2)
    reduced, state = cluster_windows(x, *settings, own_cell="floor", mask_padding=False)
    default, _ = cluster_windows(x, *settings)
    assert reduced.shape[1:3] == (35, 35) and default.shape[1:3] == (32, 32)
    reference, kept = official_windows(x[0].double(), 14, 7, 2, 0.05, 2)
    torch.testing.assert_close(reduced[0].double(), reference, atol=1e-4, rtol=1e-4)

    refined = reduced * 1.5 + 0.1
    out = reconstruct_windows(refined, state, 5, 0.05, "l2", keep_ties=True, shift_distances=False)
    assert out.shape == x.shape
    expected = torch.zeros(70, 70, 4, dtype=torch.float64)
    for (i, j), (tokens, centres) in kept.items():
        block = refined[0, i * 7 : (i + 1) * 7, j * 7 : (j + 1) * 7].reshape(49, 4).double()
        rebuilt = official_reconstruct(tokens, centres, block, 5, 0.05)
        expected[i * 14 : (i + 1) * 14, j * 14 : (j + 1) * 14] = rebuilt.reshape(14, 14, 4)
    torch.testing.assert_close(out[0].double(), expected[:64, :64], atol=1e-4, rtol=1e-4)


def test_point4_swin_stage_40_by_12_windows_to_8_gives_32():
    assert official_windows(torch.zeros(40, 40, 1), 12, 8, 0, 0.01, 3)[0].shape[:2] == (32, 32)
    x = torch.randn(1, 40, 40, 2)
    assert cluster_windows(x, 12, (8, 8), 1, 0.01, 3, mask_padding=False)[0].shape[1:3] == (32, 32)
    assert cluster_windows(x, 12, (8, 8), 1, 0.01, 3)[0].shape[1:3] == (27, 27)


# --- Point 5: Swin bias resize and the old-shift mask ---------------------------------------------


def test_point5_bias_table_resized_bilinearly():
    torch.manual_seed(0)
    table = torch.randn(23 * 23, 3)  # a 12x12 window's table, to an 8x8 window's
    reference = bilinear_table(table, 8)
    torch.testing.assert_close(resize_relative_position_bias_table(table, 8, "bilinear"), reference)
    assert (resize_relative_position_bias_table(table, 8) - reference).abs().max() > 1e-2  # bicubic


def small_swin(implementation, window=12):
    torch.manual_seed(0)
    expedite = expedit_config(location=1, grid=8, n_iters=2, locality_window=3, k=4, implementation=implementation)
    return D2SwinTransformer(
        embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=window,
        out_features=("res2", "res3"), expedite=expedite,
    ).eval()


def record_block_calls(block):
    calls = []
    block.register_forward_pre_hook(lambda module, args: calls.append(args))
    return calls


@pytest.mark.parametrize("implementation", ["official", "default"])
def test_point4_and_5_on_the_swin_host(implementation):
    """A 160x160 image: a 40x40 first stage, 12x12 windows clustered to 8x8 before block 1."""
    model = small_swin(implementation)
    calls = record_block_calls(model.layers[0].blocks[1])
    with torch.no_grad():
        out = model(torch.randn(1, 3, 160, 160))
    assert out["res2"].shape == (1, 16, 40, 40) and torch.isfinite(out["res2"]).all()
    [(x, window, shift, mask, bias_resize)] = calls
    assert (window, shift) == (8, 4)  # the blocks roll by grid // 2 either way
    if implementation == "official":
        assert x.shape[1:3] == (32, 32) and bias_resize == "bilinear"
        assert torch.equal(mask, official_mask(32, 32, window=8, shift=6))  # old shift 6
        assert not torch.equal(mask, official_mask(32, 32, window=8, shift=4))
    else:
        assert x.shape[1:3] == (27, 27) and bias_resize == "bicubic"
        assert torch.equal(mask, official_mask(27, 27, window=8, shift=4))  # its own shift


def test_point5_old_shift_larger_than_the_new_window():
    """12 -> 4: the old shift 6 exceeds the window 4; the official cuts make the last 6 rows one
    region."""
    from expedite_vit.modeling.swin import shifted_window_attention_mask

    assert torch.equal(shifted_window_attention_mask(8, 8, 4, 6), official_mask(8, 8, 4, 6))
    assert torch.equal(shifted_window_attention_mask(4, 8, 4, 6), official_mask(4, 8, 4, 6))


# --- Point 6 and end to end: ViTDet clusters per 14x14 window ------------------------------------


def small_vit(**expedite):
    torch.manual_seed(0)
    kwargs = dict(img_size=224, patch_size=16, embed_dim=16, depth=3, num_heads=2, window_size=14,
                  window_block_indexes=[0, 2], use_rel_pos=True, rel_pos_zero_init=False)
    plain = ViT(**kwargs)
    model = ExpeditedViT(expedite=expedit_config(**expedite), **kwargs).eval()
    model.load_state_dict(plain.state_dict())
    return model


@pytest.mark.parametrize("implementation", ["official", "default"])
def test_point4_and_6_on_the_vitdet_host(implementation):
    """A 1024x1024 image: a 64x64 map, each 14x14 window clustered to 7x7 before the global
    block 1; the official reduced map (35x35) is what the reference clusters window by window."""
    model = small_vit(location=1, grid=7, n_iters=2, k=5, implementation=implementation)
    seen = {}
    model.token_reduction.clustering.register_forward_hook(lambda m, args, out: seen.update(x=args[0], reduced=out.x))
    model.blocks[1].attn.register_forward_pre_hook(lambda m, args: seen.update(global_input=args[0]))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 1024, 1024))["last_feat"]
    assert out.shape == (1, 16, 64, 64) and torch.isfinite(out).all()
    if implementation == "official":
        assert seen["global_input"].shape[1:3] == (35, 35)
        reference, _ = official_windows(seen["x"][0].double(), 14, 7, 2, 0.01, 2)
        torch.testing.assert_close(seen["reduced"][0].double(), reference, atol=1e-4, rtol=1e-4)
    else:
        assert seen["global_input"].shape[1:3] == (32, 32)


def test_end_to_end_vitdet_official_differs_only_where_expected():
    x_whole = torch.randn(1, 3, 448, 448)  # 28x28 tokens: whole windows, 14 -> 7 cells agree
    x_padded = torch.randn(1, 3, 400, 464)  # 25x29 tokens: partial windows
    settings = dict(location=1, grid=7, n_iters=2, k=5, reconstruct_temperature=0.01)
    default, official = small_vit(**settings), small_vit(**settings, implementation="official")
    with torch.no_grad():
        a, b = default(x_whole)["last_feat"], official(x_whole)["last_feat"]
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)  # no padding, no ties: the same
        a, b = default(x_padded)["last_feat"], official(x_padded)["last_feat"]
    assert a.shape == b.shape and torch.isfinite(b).all()
    assert (a - b).abs().max() > 1e-3  # padding clustered, uncropped map in the global block


def test_end_to_end_swin_official_differs_by_bias_and_mask():
    """96x96 on a window-6 Swin clustered 6 -> 3: whole windows and agreeing cells, so only the
    bilinear bias and the old-shift mask (3 instead of 1) set the official setting apart."""
    torch.manual_seed(0)
    settings = dict(location=5, grid=3, n_iters=2, locality_window=3, k=3)
    models = {}
    for implementation in ("default", "official"):
        torch.manual_seed(0)
        models[implementation] = D2SwinTransformer(
            embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 2, 4, 8), window_size=6,
            expedite=expedit_config(**settings, implementation=implementation),
        ).eval()
    x = torch.randn(1, 3, 96 * 2, 96 * 2)  # stage 3 map 12x12: 2x2 windows of 6x6
    with torch.no_grad():
        a, b = models["default"](x), models["official"](x)
    torch.testing.assert_close(b["res3"], a["res3"], atol=0, rtol=0)  # before the clustering stage
    assert torch.isfinite(b["res4"]).all() and (a["res4"] - b["res4"]).abs().max() > 1e-3
    # With the same bias interpolation and mask, the official setting equals the default here.
    stage = models["official"].layers[2]
    original = stage._run_blocks
    stage._run_blocks = lambda x, start, stop, window, mask_shift=None, bias_resize="bicubic": original(
        x, start, stop, window
    )
    with torch.no_grad():
        c = models["official"](x)
    torch.testing.assert_close(c["res4"], a["res4"], atol=1e-4, rtol=1e-4)
