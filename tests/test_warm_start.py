"""Temporal warm start of Expedit's clustering (``expedite.expedit.warm_start``, opt-in, video only).

Off (the default) nothing changes; on, inside a video model's frame sequence each frame's soft
k-means starts from the previous frame's final centres, across frame chunks too; image models
ignore it (their batches are independent images).
"""
from pathlib import Path

import pytest
import torch

from expedite import ExpediteConfig, cluster_tokens, cluster_windows
from expedite.clustering import _initial_centres
from expedite.windows import cluster_frames
from expedite_vit.runtime.cli import load_checked_config
from detectron2.config import instantiate

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs" / "Mask2Former-VIS" / "builtin" / "video_maskformer2_swin_tiny_videos.py"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_cfg():
    return load_checked_config(str(TINY_CONFIG), [])


def video_model(cfg, warm_start=False, **overrides):
    node = cfg.model.copy()
    node.update(overrides)
    torch.manual_seed(0)
    model = instantiate(node).eval()
    model.backbone.expedite.expedit.warm_start = warm_start
    return model


def frames(num, size=(96, 128), seed=0, same=False):
    generator = torch.Generator().manual_seed(seed)
    out = [torch.randint(0, 256, (3, *size), generator=generator).float() for _ in range(1 if same else num)]
    return out * num if same else out


def backbone_input(model, clip):
    return model._normalized_chunk(clip, model._padded_size(clip))


def assert_features_close(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol), (name, (a[name] - b[name]).abs().max())


# ---- Settings ----------------------------------------------------------------------------------


def test_setting_is_off_by_default_and_strictly_a_bool():
    assert ExpediteConfig().expedit.warm_start is False
    assert ExpediteConfig(expedit={"warm_start": True}).expedit.warm_start is True
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=r"expedite\.expedit\.warm_start="):
            ExpediteConfig(expedit={"warm_start": bad})


# ---- Functional core ---------------------------------------------------------------------------


def test_initial_centres_equal_to_the_pooled_ones_give_the_default():
    x = torch.randn(3, 12, 10, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 12, 10, dtype=torch.bool)
    mask[1, 9:] = False
    pooled, _ = _initial_centres(x, mask, (4, 5))  # (G, M, C)
    default, ctx_a = cluster_tokens(x, (4, 5), 3, 0.5, 1, token_mask=mask)
    warm, ctx_b = cluster_tokens(x, (4, 5), 3, 0.5, 1, token_mask=mask, initial_centres=pooled.reshape(3, 4, 5, 8))
    assert torch.equal(default, warm)
    assert torch.equal(ctx_a.centres, ctx_b.centres)
    with pytest.raises(ValueError, match="initial_centres of shape"):
        cluster_tokens(x, (4, 5), 3, 0.5, 1, initial_centres=pooled)


def test_cluster_windows_initial_centres_replace_pooling_and_n_iters_zero_keeps_them():
    x = torch.randn(2, 13, 11, 6, generator=torch.Generator().manual_seed(1))  # partial windows
    reduced, state = cluster_windows(x, 8, (4, 4), 4, 0.5, 1)
    # Restarting from the converged centres with no rounds gives the same reduced map.
    again, state_again = cluster_windows(x, 8, (4, 4), 0, 0.5, 1, initial_centres=state.centres)
    assert torch.equal(reduced, again)
    assert torch.equal(state.context.centres, state_again.context.centres)
    plain, _ = cluster_windows(x, 8, (4, 4), 0, 0.5, 1)
    assert not torch.allclose(plain, reduced)


def test_cluster_frames_chains_each_frame_to_the_previous_and_chunks_compose():
    x = torch.randn(4, 16, 16, 6, generator=torch.Generator().manual_seed(2))
    args = (8, (4, 4), 2, 0.5, 1)
    reduced, state = cluster_frames(x, *args)
    # Frame 0 pools; frame t starts from frame t-1's final centres.
    first, first_state = cluster_windows(x[:1], *args)
    assert torch.equal(reduced[:1], first)
    second, _ = cluster_windows(x[1:2], *args, initial_centres=first_state.centres)
    assert torch.equal(reduced[1:2], second)
    # Two chunks, the second starting from the first's last frame, equal one pass.
    a, state_a = cluster_frames(x[:3], *args)
    b, state_b = cluster_frames(x[3:], *args, initial_centres=state_a.centres[-4:])
    assert torch.equal(torch.cat([a, b]), reduced)
    assert torch.equal(torch.cat([state_a.context.centres, state_b.context.centres]), state.context.centres)


# ---- Video model -------------------------------------------------------------------------------


def test_off_by_default_the_video_backbone_is_frame_wise(tiny_cfg):
    model = video_model(tiny_cfg)
    assert model.warm_start_reductions() == []
    x = backbone_input(model, frames(3))
    with torch.no_grad():
        together = model.backbone(x)
        with model.backbone.token_reduction.frame_sequence():  # declared, but warm start is off
            declared = model.backbone(x)
        alone = [model.backbone(frame[None]) for frame in x]
    assert_features_close(together, {k: torch.cat([a[k] for a in alone]) for k in together})
    for name in together:
        assert torch.equal(together[name], declared[name])


def test_warm_start_carries_the_converged_centres_to_the_next_frame(tiny_cfg):
    model = video_model(tiny_cfg, warm_start=True)
    cfg = model.backbone.expedite.expedit
    assert cfg.n_iters > 0
    x = backbone_input(model, frames(2, same=True))
    with torch.no_grad():
        with model.backbone.token_reduction.frame_sequence() as sequence:
            frame0 = model.backbone(x[:1])  # pooled start, full n_iters
            cfg.n_iters = 0
            frame1 = model.backbone(x[1:])  # starts from frame 0's converged centres
            assert sequence.frames == 2
        assert model.backbone.token_reduction._frames is None
        cold = model.backbone(x[1:])  # no sequence: pooled start, 0 rounds
    for name in frame0:
        assert torch.equal(frame0[name], frame1[name]), name
    assert not torch.allclose(cold["res4"], frame0["res4"], atol=1e-4)


def test_warm_start_chunked_equals_unchunked_and_changes_the_features(tiny_cfg):
    clip = frames(5, seed=3)
    size = (96, 128)
    results = {}
    with torch.no_grad():
        for name, chunk, warm in (("chunked", 2, True), ("whole", None, True), ("off", None, False)):
            model = video_model(tiny_cfg, warm_start=warm, frame_chunk=chunk)
            model.backbone.expedite.expedit.n_iters = 1  # far from converged: the start matters
            results[name] = model.frame_features(clip, size)
    (mask_a, levels_a), (mask_b, levels_b), (mask_off, _) = results["chunked"], results["whole"], results["off"]
    assert torch.allclose(mask_a, mask_b, atol=1e-5)
    for level_a, level_b in zip(levels_a, levels_b):
        assert torch.allclose(level_a, level_b, atol=1e-5)
    assert torch.allclose(mask_a[:1], mask_off[:1], atol=1e-5)  # frame 0 pools either way
    assert not torch.allclose(mask_a[1:], mask_off[1:], atol=1e-4)


def test_warm_start_restarts_at_every_video_of_a_batch(tiny_cfg):
    model = video_model(tiny_cfg, warm_start=True, frame_chunk=3)
    clip_a, clip_b = frames(2, seed=4), frames(2, seed=5)
    size = (96, 128)
    with torch.no_grad():
        both, _ = model.frame_features(clip_a + clip_b, size, frames_per_video=2)
        alone = torch.cat([model.frame_features(c, size)[0] for c in (clip_a, clip_b)])
    assert torch.allclose(both, alone, atol=1e-5)


def test_frame_sequences_do_not_nest(tiny_cfg):
    reduction = video_model(tiny_cfg).backbone.token_reduction
    with reduction.frame_sequence():
        with pytest.raises(RuntimeError, match="already inside a frame sequence"):
            with reduction.frame_sequence():
                pass
    assert reduction._frames is None


# ---- Image models ------------------------------------------------------------------------------


def test_image_models_ignore_it_and_never_link_their_images(tiny_cfg):
    """Outside a frame sequence (every image model) warm_start changes nothing: a batch of two
    images equals two batches of one."""
    model = video_model(tiny_cfg)  # its backbone is the built-in image model's Swin
    x = backbone_input(model, frames(2, seed=6))
    with torch.no_grad():
        off = model.backbone(x)
        model.backbone.expedite.expedit.warm_start = True
        on = model.backbone(x)
        alone = [model.backbone(image[None]) for image in x]
    for name in off:
        assert torch.equal(off[name], on[name]), name
    assert_features_close(on, {k: torch.cat([a[k] for a in alone]) for k in on})
