"""Mask2Former's Swin backbone with Expedit per Swin window, against plain references.

Tiny models throughout (32 channels, depths 2-2-4-2, window 6), except for the Swin-L state_dict
check, which builds Swin-L on the meta device (no memory, no compute).
"""

import functools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.modeling.backbone.swin import SwinTransformer as Detectron2Swin
from fvcore.nn import FlopCountAnalysis

from conftest import FIXTURES, expedit_config, expedit_settings, set_expedit
from expedite import ExpediteConfig, reduced_length
from expedite_vit.modeling.swin import (
    D2SwinTransformer,
    PatchMerging,
    SwinTransformerBlock,
    relative_position_index,
    resize_relative_position_bias_table,
    shifted_window_attention_mask,
)

FIXTURE = Path(FIXTURES) / "mask2former_official.json"
SWIN_LARGE = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12)
TINY = dict(embed_dim=32, depths=(2, 2, 4, 2), num_heads=(1, 2, 4, 8), window_size=6)
# Clusters stage 3 (blocks 4..7) from its second block: 6x6 windows -> 4x4.
REDUCING = dict(
    location=5,
    grid=4,
    n_iters=3,
    cluster_temperature=0.05,
    locality_window=3,
    k=4,
    reconstruct_temperature=0.05,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On tiny models, intra-op threads cost more than they save (several times more on a busy
    2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def tiny_weights():
    torch.manual_seed(0)
    return D2SwinTransformer(**TINY).state_dict()


def build(expedite=None, **overrides):
    """A tiny Swin, always with the same random weights (built on the meta device, then given
    copies of them: much faster than initialising every model)."""
    with torch.device("meta"):
        model = D2SwinTransformer(**{**TINY, **overrides}, expedite=expedite)
    model.load_state_dict({k: v.clone() for k, v in tiny_weights().items()}, assign=True)
    return model.eval()


def images(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def assert_outputs_close(a, b, atol):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape, name
        torch.testing.assert_close(
            a[name], b[name], atol=atol, rtol=0, msg=lambda text: f"{name}: {text}"
        )


# --- Checkpoint compatibility ---------------------------------------------------------------------


def _swin_large_configs():
    models = json.loads(FIXTURE.read_text())["models"]
    return {path: keys for path, keys in models.items() if "swin_large" in path}


@pytest.fixture(scope="module")
def swin_large_shapes():
    with torch.device("meta"):
        model = D2SwinTransformer(
            **SWIN_LARGE,
            expedite=ExpediteConfig(
                location=10,
                expedit=dict(
                    grid=8,
                    n_iters=5,
                    cluster_temperature=0.05,
                    locality_window=7,
                    k=10,
                    reconstruct_temperature=0.05,
                ),
            ),
        )
    return {key: list(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize("config_path", sorted(_swin_large_configs()))
def test_state_dict_is_the_official_swin_large(swin_large_shapes, config_path):
    official = _swin_large_configs()[config_path]
    expected = {k[len("backbone.") :]: v for k, v in official.items() if k.startswith("backbone.")}
    assert swin_large_shapes == expected


@pytest.mark.parametrize("location, stage, block", [(10, 2, 6), (12, 2, 8), (8, 2, 4), (4, 2, 0)])
def test_location_counts_blocks_over_all_stages(location, stage, block):
    """The published Swin-L operating points (alpha 10, 12, 8) all fall in stage 3 (index 2)."""
    with torch.device("meta"):
        model = D2SwinTransformer(**SWIN_LARGE, expedite=ExpediteConfig(location=location, expedit=dict(grid=8)))
    assert model.reduction_point() == (stage, block)


@pytest.mark.parametrize(
    "dims",
    [
        dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
        dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
        dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    ],
    ids=["T", "S", "B"],
)
def test_swin_t_s_b_dimensions(dims):
    with torch.device("meta"):
        model = D2SwinTransformer(**dims)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    c, w = dims["embed_dim"], dims["window_size"]
    last = len(dims["depths"]) - 1
    assert shapes["patch_embed.proj.weight"] == (c, 3, 4, 4)
    assert shapes[f"layers.{last}.blocks.1.attn.relative_position_bias_table"] == (
        (2 * w - 1) ** 2,
        dims["num_heads"][last],
    )
    assert shapes["layers.2.blocks.0.attn.relative_position_index"] == (w * w, w * w)
    assert f"layers.2.blocks.{dims['depths'][2] - 1}.mlp.fc2.weight" in shapes
    assert shapes["norm3.weight"] == (8 * c,)
    assert {n: (s.channels, s.stride) for n, s in model.output_shape().items()} == {
        "res2": (c, 4),
        "res3": (2 * c, 8),
        "res4": (4 * c, 16),
        "res5": (8 * c, 32),
    }
    assert model.size_divisibility == 32


def test_relative_position_index_is_the_swin_layout():
    window = 3
    index = relative_position_index(window)
    for i in range(window * window):
        for j in range(window * window):
            dy, dx = i // window - j // window, i % window - j % window
            assert index[i, j] == (dy + window - 1) * (2 * window - 1) + (dx + window - 1)


def test_patch_merging_channel_order_is_the_checkpoints():
    merge = PatchMerging(dim=2)
    x = torch.randn(1, 5, 3, 2)  # odd sizes: padded with zeros
    padded = F.pad(x, (0, 0, 0, 1, 0, 1))
    parts = [
        padded[:, 0::2, 0::2],
        padded[:, 1::2, 0::2],
        padded[:, 0::2, 1::2],
        padded[:, 1::2, 1::2],
    ]
    expected = merge.reduction(merge.norm(torch.cat(parts, dim=-1)))
    torch.testing.assert_close(merge(x), expected)


# --- Plain behaviour ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(96, 96), (90, 70)])
def test_plain_equals_detectron2_swin(size):
    """detectron2's Swin computes what Mask2Former's does and has the same parameter names."""
    model = build()
    reference = Detectron2Swin(**TINY, drop_path_rate=0.0).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    x = images(2, 3, *size)
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert_outputs_close(ours, {f"res{i + 2}": theirs[f"p{i}"] for i in range(4)}, atol=0)


def test_disabled_is_plain_even_with_silly_settings():
    # A disabled config is not validated: grid 9 > window 6 and location 99 are fine.
    disabled = ExpediteConfig(enabled=False, location=99, expedit=dict(grid=9))
    x = images(1, 3, 64, 80)
    with torch.no_grad():
        assert_outputs_close(build(disabled)(x), build()(x), atol=0)


def test_out_features_subset():
    model = build(out_features=("res3", "res4"))
    assert set(model.output_shape()) == {"res3", "res4"}
    with torch.no_grad():
        out = model(images(1, 3, 64, 64))
    assert set(out) == {"res3", "res4"} and out["res4"].shape == (1, 128, 4, 4)


def test_lazy_config_instantiates():
    from expedite_vit.settings import expedite_node

    node = L(D2SwinTransformer)(**TINY, expedite=expedite_node(**expedit_settings(**REDUCING)))
    node.expedite.location = 4
    model = instantiate(node)
    assert model.reduction_point() == (2, 0)
    assert model.token_reduction.clustering.window == 6


# --- Expedited behaviour --------------------------------------------------------------------------


@pytest.mark.parametrize("location", [0, 3, 4, 7, 9])
def test_identity_clustering_equals_plain(location):
    """grid == window, no k-means rounds, k=1: clustering is the identity, the window and
    shift are unchanged, so the expedited backbone is the plain one."""
    identity = ExpediteConfig(location=location, expedit=dict(grid=6, n_iters=0, k=1))
    x = images(2, 3, 90, 70)
    with torch.no_grad():
        assert_outputs_close(build(identity)(x), build()(x), atol=1e-5)


@pytest.mark.parametrize("location", [1, 8])
def test_batch_of_two_equals_two_batches_of_one(location):
    model = build(expedit_config(**{**REDUCING, "location": location}))
    x = images(2, 3, 80, 96)
    with torch.no_grad():
        together = model(x)
        apart = [model(x[i : i + 1]) for i in range(2)]
    for name, out in together.items():
        torch.testing.assert_close(out, torch.cat([a[name] for a in apart]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "size, location",
    [((90, 70), 0), ((90, 70), 9), ((33, 51), 0), ((33, 51), 5), ((352, 544), 5), ((352, 544), 9)],
)
def test_odd_sizes_keep_the_plain_shapes(size, location):
    """352x544 is a 333x517 image padded to size_divisibility 32; 33x51 leaves every stage's
    map smaller than one window."""
    model = build(expedit_config(**{**REDUCING, "location": location}))
    plain = build()
    x = images(1, 3, *size)
    with torch.no_grad():
        out, expected = model(x), plain(x)
    for name in expected:
        assert out[name].shape == expected[name].shape
        assert torch.isfinite(out[name]).all()
    # Stages before the clustering location are untouched.
    untouched = sum(end <= location for end in (2, 4, 8, 10))  # stage ends of depths 2-2-4-2
    for i in range(untouched):
        torch.testing.assert_close(out[f"res{i + 2}"], expected[f"res{i + 2}"], atol=0, rtol=0)


def test_reduced_blocks_use_the_grid_window_and_shift():
    """Record what every block of the clustered stage is called with."""
    model = build(expedit_config(**REDUCING))  # stage 3 (4 blocks), clustered before block 1
    calls = []
    for block in model.layers[2].blocks:
        block.register_forward_pre_hook(lambda module, args: calls.append(args))
    with torch.no_grad():
        model(images(1, 3, 128, 96))  # stage 3 map 8x6 -> reduced 6x4 -> padded 8x4
    assert [(c[0].shape[1:3], c[1], c[2]) for c in calls] == [
        ((8, 6), 6, 0),
        ((6, 4), 4, 2),
        ((6, 4), 4, 0),
        ((6, 4), 4, 2),
    ]
    assert reduced_length(8, 6, 4) == 6 and reduced_length(6, 6, 4) == 4
    torch.testing.assert_close(calls[1][3], shifted_window_attention_mask(8, 4, 4, 2))


def test_expedited_forward_changes_no_parameter():
    model = build(expedit_config(**REDUCING))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(images(1, 3, 64, 64))
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_expedited_output_is_close_but_not_equal_to_plain():
    x = images(1, 3, 96, 96)
    with torch.no_grad():
        out, plain = build(expedit_config(**REDUCING))(x), build()(x)
    diff = (out["res4"] - plain["res4"]).abs().mean() / plain["res4"].abs().mean()
    assert 0 < diff < 1


# --- Relative position bias -----------------------------------------------------------------------


def test_bias_table_resize():
    table = torch.randn(11 * 11, 3)  # window 6
    assert torch.equal(resize_relative_position_bias_table(table, 6), table)
    resized = resize_relative_position_bias_table(table, 4)
    assert resized.shape == (7 * 7, 3)
    # Offset (0, 0) stays at the centre: a table that is a ramp in dy keeps its centre value.
    dy = torch.arange(-5, 6, dtype=torch.float32).repeat_interleave(11)
    ramp = resize_relative_position_bias_table(torch.stack([dy, dy + 1], dim=1), 4)
    torch.testing.assert_close(ramp[7 * 7 // 2], torch.tensor([0.0, 1.0]))
    assert (ramp[:, 0].reshape(7, 7).diff(dim=0) > 0).all()
    with pytest.raises(ValueError, match="not a square grid"):
        resize_relative_position_bias_table(torch.zeros(10, 2), 3)


# --- Shifted-window mask on the reduced map -------------------------------------------------------


def allowed_pairs(height, width, window, shift):
    """For each shifted window (row-major), which token pairs were neighbours before the roll:
    a pair may attend iff the roll moved both by the same amount, i.e. neither crossed the
    wrap-around seam without the other. Brute force over positions."""
    coords = [(r, c) for r in range(height) for c in range(width)]  # positions on the rolled map
    original = {(r, c): ((r + shift) % height, (c + shift) % width) for r, c in coords}
    windows = {}
    for r, c in coords:
        windows.setdefault((r // window, c // window), []).append((r, c))
    result = []
    for key in sorted(windows):
        members = sorted(windows[key])
        allowed = torch.zeros(len(members), len(members), dtype=torch.bool)
        for i, p in enumerate(members):
            for j, q in enumerate(members):
                rolled_offset = (p[0] - q[0], p[1] - q[1])
                original_offset = (original[p][0] - original[q][0], original[p][1] - original[q][1])
                allowed[i, j] = rolled_offset == original_offset
        result.append(allowed)
    return torch.stack(result)


@pytest.mark.parametrize("height, width, window", [(16, 16, 8), (12, 8, 4), (4, 8, 4), (18, 12, 6)])
def test_mask_allows_exactly_the_pre_roll_neighbours(height, width, window):
    shift = window // 2
    mask = shifted_window_attention_mask(height, width, window, shift)
    assert torch.equal(mask == 0, allowed_pairs(height, width, window, shift))
    assert set(mask.unique().tolist()) <= {0.0, -100.0}


def test_old_shift_mask_leaks_across_the_seam():
    """The official Expedit code rolls the clustered 8x8 windows by 4 but keeps the 12x12 map's
    mask, made for a shift of 6: tokens then attend across the wrap-around seam."""
    height = width = 16  # two 8x8 windows of clustered centres per side
    wrong = shifted_window_attention_mask(height, width, window=8, shift=6)
    allowed = allowed_pairs(height, width, window=8, shift=4)
    leaks = (wrong == 0) & ~allowed
    assert leaks.any()
    # e.g. in the bottom-right window, row 11 (original row 15) and row 12 (original row 0,
    # the image's top edge) may attend to each other.
    last = wrong[-1].reshape(8, 8, 8, 8)
    assert last[3, 0, 4, 0] == 0 and not allowed[-1].reshape(8, 8, 8, 8)[3, 0, 4, 0]


def reference_shifted_block(block, x, window, shift):
    """A Swin block written plainly on the unrolled map: token i attends to token j iff they
    fall in the same window after rolling by ``shift`` and the roll kept their offset, with the
    bias of that offset from the table resized to ``window``. Padding (zeros after norm1) is
    attended to, as in Swin."""
    batch, height, width, channels = x.shape
    attn = block.attn
    heads, head_dim = attn.num_heads, channels // attn.num_heads
    padded_h, padded_w = math.ceil(height / window) * window, math.ceil(width / window) * window
    y = F.pad(block.norm1(x), (0, 0, 0, padded_w - width, 0, padded_h - height))
    q, k, v = (
        attn.qkv(y.reshape(batch, -1, channels)).reshape(batch, -1, 3, heads, head_dim).unbind(2)
    )
    rows = torch.arange(padded_h).repeat_interleave(padded_w)
    cols = torch.arange(padded_w).repeat(padded_h)
    rolled_rows, rolled_cols = (rows - shift) % padded_h, (cols - shift) % padded_w
    d_rows, d_cols = rows[:, None] - rows[None, :], cols[:, None] - cols[None, :]
    allowed = (
        (rolled_rows[:, None] // window == rolled_rows[None, :] // window)
        & (rolled_cols[:, None] // window == rolled_cols[None, :] // window)
        & (rolled_rows[:, None] - rolled_rows[None, :] == d_rows)
        & (rolled_cols[:, None] - rolled_cols[None, :] == d_cols)
    )
    table = resize_relative_position_bias_table(attn.relative_position_bias_table, window)
    index = ((d_rows + window - 1) * (2 * window - 1) + d_cols + window - 1).clamp(
        0, len(table) - 1
    )
    logits = torch.einsum("bihd,bjhd->bhij", q, k) * head_dim**-0.5 + table[index].permute(2, 0, 1)
    weights = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
    out = attn.proj(torch.einsum("bhij,bjhd->bihd", weights, v).reshape(batch, -1, channels))
    out = out.reshape(batch, padded_h, padded_w, channels)[:, :height, :width]
    x = x + out
    return x + block.mlp(block.norm2(x))


def test_shifted_block_on_reduced_map_matches_reference():
    """A shifted block on a clustered map (its own window 6, run with window 4 and shift 2) with
    the mask for that window and shift equals the plain reference; the mask made for the
    checkpoint's shift (3) does not."""
    torch.manual_seed(0)
    block = SwinTransformerBlock(dim=16, num_heads=2, window_size=6).eval()
    x = torch.randn(2, 7, 10, 16)  # padded to 8x12: 2x3 windows of 4x4
    with torch.no_grad():
        expected = reference_shifted_block(block, x, window=4, shift=2)
        right = block(x, 4, 2, shifted_window_attention_mask(8, 12, 4, 2))
        wrong = block(x, 4, 2, shifted_window_attention_mask(8, 12, 4, 3))
    torch.testing.assert_close(right, expected, atol=1e-5, rtol=0)
    assert (wrong - expected).abs().max() > 1e-2


# --- Validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(location=10), r"^expedite\.location=10 is past the last Swin block: depths \[2, 2, 4, 2\] .*\[0, 9\]"),
        (dict(grid=8), r"^expedite\.expedit\.grid=\(8, 8\): grid 8x8 is larger than the 6x6 Swin window"),
        (dict(grid=(4, 3)), r"^expedite\.expedit\.grid=\(4, 3\): grid 4x3 must be square"),
        (dict(grid=2, k=5), r"^expedite\.expedit\.k=5 is above the cluster count 4"),
    ],
)
def test_bad_settings_fail_with_a_clear_error(settings, message):
    with pytest.raises(ValueError, match=message) as err:
        D2SwinTransformer(**TINY, expedite=expedit_config(**{**REDUCING, **settings}))
    assert "\n" not in str(err.value)
    # Made on a built model, the same settings fail at the next forward with the same message.
    model = build(expedit_config(**{**REDUCING, "enabled": False}))
    for key, value in settings.items():
        set_expedit(model.expedite, key, value)
    model.expedite.enabled = True
    with pytest.raises(ValueError, match=message):
        model(images(1, 3, 64, 64))


def test_bad_arguments_fail_with_a_clear_error():
    with pytest.raises(ValueError, match="out_features"):
        D2SwinTransformer(**TINY, out_features=("res6",))
    with pytest.raises(ValueError, match="head counts"):
        D2SwinTransformer(**{**TINY, "num_heads": (1, 2)})
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        build()(torch.zeros(3, 32, 32))


# --- Cost -----------------------------------------------------------------------------------------


def test_expedited_backbone_costs_fewer_flops():
    x = images(1, 3, 96, 96)
    counts = {}
    for name, model in [("plain", build()), ("expedited", build(expedit_config(**REDUCING)))]:
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        counts[name] = analysis.total()
    assert counts["expedited"] < 0.95 * counts["plain"]


# --- Settings changed on a built model ------------------------------------------------------------


def test_switching_on_a_model_built_with_reduction_off():
    x = images(1, 3, 96, 80)
    off = build(expedit_config(**{**REDUCING, "enabled": False}))
    with torch.no_grad():
        plain = off(x)
        assert off.reduction_point() is None
        off.expedite.enabled = True
        assert off.reduction_point() == (2, 1)
        assert_outputs_close(off(x), build(expedit_config(**REDUCING))(x), atol=0)
        off.expedite.enabled = False
        assert_outputs_close(off(x), plain, atol=0)


@pytest.mark.parametrize(
    "change",
    [dict(grid=3), dict(location=8), dict(location=2, grid=5, k=3), dict(implementation="official")],
)
def test_changing_settings_on_a_built_model_equals_a_fresh_build(change):
    x = images(1, 3, 96, 80)
    model = build(expedit_config(**REDUCING))
    with torch.no_grad():
        before = model(x)
        for key, value in change.items():
            set_expedit(model.expedite, key, value)
        after = model(x)
        assert_outputs_close(after, build(expedit_config(**{**REDUCING, **change}))(x), atol=0)
    assert not torch.equal(after["res5"], before["res5"])


def test_bad_assignment_on_a_built_model_is_refused_at_once():
    model = build(expedit_config(**REDUCING))
    with pytest.raises(ValueError, match=r"^expedite\.location=True \(bool\) is not allowed: "):
        model.expedite.location = True
    with pytest.raises(ValueError, match=r"^expedite\.expedit\.implementation='Official' \(str\) is not allowed: "):
        model.expedite.expedit.implementation = "Official"
    assert model.expedite.location == 5 and model.expedite.expedit.implementation == "default"


def test_state_dict_is_the_same_with_reduction_on_or_off():
    on, off = build(expedit_config(**REDUCING)), build()
    assert on.state_dict().keys() == off.state_dict().keys()
    from expedite import TokenClusteringLayer, TokenReconstructionLayer

    for model in (on, off):
        kinds = [type(m) for m in model.modules()]
        assert kinds.count(TokenClusteringLayer) == kinds.count(TokenReconstructionLayer) == 1
