"""ExpeditedViT against detectron2's own ViTDet, the official checkpoint layout, and bad input."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import ViT

from conftest import REPO, expedit_config, set_expedit, skip_weight_init
from expedite import ExpediteConfig
from expedite_vit.runtime.checkpoint import CheckpointMismatchError, load_checkpoint
from expedite_vit.modeling import ExpeditedViT

TINY_VIT = dict(
    img_size=128, patch_size=16, embed_dim=64, depth=4, num_heads=4, window_size=4,
    window_block_indexes=[0, 2], use_rel_pos=True, rel_pos_zero_init=False,
)


def tiny_pair(**expedite):
    """detectron2's ViT and an ExpeditedViT with the same (non-trivial) weights."""
    torch.manual_seed(0)
    plain = ViT(**TINY_VIT).eval()
    with torch.no_grad():
        for block in plain.blocks:  # random relative positions, so their resizing matters
            block.attn.rel_pos_h.normal_(std=0.5)
            block.attn.rel_pos_w.normal_(std=0.5)
    fast = ExpeditedViT(expedite=expedit_config(**expedite), **TINY_VIT).eval()
    fast.load_state_dict(plain.state_dict())
    return plain, fast


@pytest.mark.parametrize("size", [(128, 128), (333 // 2, 517 // 2), (96, 160)])
def test_disabled_equals_detectron2_vit(size):
    plain, fast = tiny_pair(enabled=False)
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(fast(x)["last_feat"], plain(x)["last_feat"], rtol=0, atol=0)


def test_identity_settings_equal_detectron2_vit():
    # grid == window, no k-means rounds, k=1: clustering and reconstruction are the identity,
    # so this checks all the plumbing (windows, padding, block order, relative positions).
    plain, fast = tiny_pair(location=1, grid=4, n_iters=0, k=1)
    x = torch.randn(2, 3, 160, 112)
    torch.testing.assert_close(fast(x)["last_feat"], plain(x)["last_feat"], rtol=1e-5, atol=1e-5)


def test_reduction_changes_features_at_full_resolution():
    plain, fast = tiny_pair(location=2, grid=2, k=3)
    x = torch.randn(1, 3, 128, 128)
    ref, out = plain(x)["last_feat"], fast(x)["last_feat"]
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, ref)


def test_batch_of_two_equals_two_batches_of_one_and_is_deterministic():
    _, fast = tiny_pair(location=1, grid=3, k=4)
    x = torch.randn(2, 3, 144, 176)
    both = fast(x)["last_feat"]
    torch.testing.assert_close(both, fast(x)["last_feat"], rtol=0, atol=0)
    for i in range(2):
        torch.testing.assert_close(fast(x[i : i + 1])["last_feat"], both[i : i + 1], rtol=1e-5, atol=1e-5)


def test_autocast_runs_and_clustering_stays_float32():
    _, fast = tiny_pair(location=1, grid=2, k=2)
    x = torch.randn(1, 3, 128, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)["last_feat"]
    ref = fast(x)["last_feat"]
    assert torch.isfinite(out).all()
    assert torch.nn.functional.cosine_similarity(out.float(), ref, dim=1).mean() > 0.95


def test_training_through_the_layers():
    _, fast = tiny_pair(location=1, grid=2, k=2)
    fast.train()
    fast(torch.randn(1, 3, 64, 64))["last_feat"].square().mean().backward()
    assert fast.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0
    assert fast.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "expedite,message",
    [
        (
            dict(location=1, grid=5, k=1),
            r"^expedite\.expedit\.grid=\(5, 5\): grid 5x5 is larger than the 4x4 ViT window",
        ),
        (dict(location=4, grid=2, k=1), r"^expedite\.location=4 is past the last ViT block: .*\[0, 3\]"),
        (dict(location=1, grid=2, k=5), r"^expedite\.expedit\.k=5 is above the cluster count 4"),
        (dict(location=1, grid=(2, 3), k=1), r"^expedite\.expedit\.grid=\(2, 3\): grid 2x3 must be square"),
    ],
)
def test_bad_settings_are_named(expedite, message):
    with pytest.raises(ValueError, match=message):
        ExpeditedViT(expedite=expedit_config(**expedite), **TINY_VIT)
    # The same settings made on a built model fail at the next forward, with the same message.
    _, fast = tiny_pair(enabled=False)
    for key, value in expedite.items():
        set_expedit(fast.expedite, key, value)
    fast.expedite.enabled = True
    with pytest.raises(ValueError, match=message):
        fast(torch.randn(1, 3, 64, 64))


def test_windowless_vit_is_refused_only_when_enabled():
    kwargs = {**TINY_VIT, "window_size": 0, "window_block_indexes": []}
    # location 1 fits the 4 blocks: the location is checked before the (Expedit-only) windows.
    model = ExpeditedViT(expedite=ExpediteConfig(enabled=False, location=1), **kwargs)
    model.expedite.enabled = True
    with pytest.raises(ValueError, match="this ViT has no windowed attention"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="this ViT has no windowed attention"):
        ExpeditedViT(expedite=ExpediteConfig(location=1, expedit=dict(grid=2, k=1)), **kwargs)


# --- Settings changed on a built model ----------------------------------------------------------


def test_switching_on_a_model_built_with_reduction_off():
    _, built_off = tiny_pair(enabled=False)
    _, built_on = tiny_pair(location=1, grid=3, k=4)
    x = torch.randn(1, 3, 128, 112)
    with torch.no_grad():
        plain = built_off(x)["last_feat"]
        built_off.expedite.location, built_off.expedite.expedit.grid, built_off.expedite.expedit.k = 1, 3, 4
        torch.testing.assert_close(built_off(x)["last_feat"], plain, rtol=0, atol=0)  # still off
        built_off.expedite.enabled = True
        torch.testing.assert_close(built_off(x)["last_feat"], built_on(x)["last_feat"], rtol=0, atol=0)
        built_on.expedite.enabled = False
        torch.testing.assert_close(built_on(x)["last_feat"], plain, rtol=0, atol=0)


@pytest.mark.parametrize(
    "change",
    [dict(grid=2), dict(location=2), dict(grid=2, location=3, k=2, n_iters=1), dict(implementation="official")],
)
def test_changing_settings_on_a_built_model_equals_a_fresh_build(change):
    start = dict(location=1, grid=3, k=4)
    _, model = tiny_pair(**start)
    _, fresh = tiny_pair(**{**start, **change})
    x = torch.randn(2, 3, 112, 144)
    with torch.no_grad():
        before = model(x)["last_feat"]
        for key, value in change.items():
            set_expedit(model.expedite, key, value)
        after = model(x)["last_feat"]
        torch.testing.assert_close(after, fresh(x)["last_feat"], rtol=0, atol=0)
    assert not torch.allclose(after, before)
    # A whole new config object works too, and the layers follow it.
    _, other = tiny_pair(**start)
    other.expedite = expedit_config(**{**start, **change})
    reduction = other.token_reduction
    assert reduction.clustering.config is reduction.reconstruction.config is other.expedite
    with torch.no_grad():
        torch.testing.assert_close(other(x)["last_feat"], after, rtol=0, atol=0)


def test_bad_assignment_on_a_built_model_is_refused_at_once():
    _, model = tiny_pair(location=1, grid=3, k=4)
    with pytest.raises(ValueError, match=r"^expedite\.expedit\.grid=8\.0 \(float\) is not allowed: "):
        model.expedite.expedit.grid = 8.0
    with pytest.raises(ValueError, match=r"^expedite\.enabled='no' \(str\) is not allowed: "):
        model.expedite.enabled = "no"
    with pytest.raises(TypeError, match="ExpediteConfig"):
        model.expedite = {"grid": 2}
    assert model.expedite.expedit.grid == (3, 3) and model.expedite.enabled is True


def test_layers_exist_and_hold_no_tensors_either_way():
    from expedite import TokenClusteringLayer, TokenReconstructionLayer

    for settings in (dict(enabled=False), dict(location=1, grid=2, k=2)):
        _, model = tiny_pair(**settings)
        kinds = {type(m) for m in model.modules()}
        assert {TokenClusteringLayer, TokenReconstructionLayer} <= kinds
        assert not any(k.startswith("token_") for k in model.state_dict())


def test_image_smaller_than_a_patch_is_named():
    _, fast = tiny_pair(location=1, grid=2, k=2)
    with pytest.raises(ValueError, match="8x40 pixels is smaller than one 16x16 ViT patch"):
        fast(torch.randn(1, 3, 8, 40))


CONFIGS = [
    "mask_rcnn_vitdet_b_100ep", "mask_rcnn_vitdet_l_100ep", "mask_rcnn_vitdet_h_75ep",
    "cascade_mask_rcnn_vitdet_b_100ep", "cascade_mask_rcnn_vitdet_l_100ep",
    "cascade_mask_rcnn_vitdet_h_75ep",
]


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("enabled", [True, False])
def test_state_dict_equals_the_official_checkpoint(fixtures_dir, name, enabled):
    official = json.load(open(os.path.join(fixtures_dir, "vitdet_official.json")))["models"]
    expected = official[f"projects/ViTDet/configs/COCO/{name}.py"]
    cfg = LazyConfig.load(os.path.join(REPO, "configs", "ViTDet", "COCO", f"{name}.py"))
    assert cfg.model.backbone.net.expedite.enabled  # every shipped config carries a preset
    cfg.model.backbone.net.expedite.enabled = enabled
    with skip_weight_init():
        model = instantiate(cfg.model)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(got) ^ set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}


def tiny_model_cfg(enabled):
    cfg = LazyConfig.load(os.path.join(REPO, "tests", "configs_tiny", "tiny_vitdet_mask_rcnn.py"))
    assert cfg.model.backbone.net._target_ is ExpeditedViT
    cfg.model.backbone.net.expedite.enabled = enabled
    return cfg.model


def test_checkpoint_round_trip_model_zoo_pkl(tmp_path):
    torch.manual_seed(0)
    source = instantiate(tiny_model_cfg(enabled=False)).eval()
    state = {k: v.numpy() for k, v in source.state_dict().items()}
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)

    torch.manual_seed(1)
    target = instantiate(tiny_model_cfg(enabled=True)).eval()
    load_checkpoint(target, str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    image = torch.from_numpy(np.random.RandomState(0).randint(0, 255, (3, 96, 120)).astype("float32"))
    with torch.no_grad():
        out = target([{"image": image, "height": 96, "width": 120}])
    assert "instances" in out[0]


def test_checkpoint_with_missing_or_extra_keys_is_listed(tmp_path):
    model = instantiate(tiny_model_cfg(enabled=True))
    state = model.state_dict()
    state.pop("backbone.net.blocks.0.attn.qkv.weight")
    state["backbone.net.blocks.9.attn.qkv.weight"] = torch.zeros(3)
    state["roi_heads.box_predictor.cls_score.bias"] = torch.zeros(81)
    path = tmp_path / "other.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, str(path))
    text = str(err.value)
    assert "backbone.net.blocks.0.attn.qkv.weight" in text
    assert "backbone.net.blocks.9.attn.qkv.weight" in text
    assert "roi_heads.box_predictor.cls_score.bias: checkpoint (81,)" in text
