"""Mask2Former-VIS: official YouTube-VIS checkpoint layouts and Expedit presets, the video model's
inference and training on small clips, per-frame equivalence of the (expedited) backbone, frame
chunking, the video dataset mapper, and train_net.py --eval-only through the YouTube-VIS evaluator.

The official Swin-L models are only built on the meta device; running models are the built-in tiny
video Mask2Former, on a 2 + 2 video expedite_videos split generated per module.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog

from expedite_vit.data import ensure_expedite_videos, register_expedite_videos
from expedite_vit.data.video_mapper import YTVISDatasetMapper
from expedite_vit.modeling.mask2former import PositionEmbeddingSine
from expedite_vit.modeling.mask2former_video import PositionEmbeddingSine3D
from expedite_vit.runtime.cli import load_checked_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs" / "Mask2Former-VIS"
TINY_CONFIG = CONFIGS / "builtin" / "video_maskformer2_swin_tiny_videos.py"
TRAIN_NET = REPO_ROOT / "train_net.py"
FIXTURE = "mask2former_official.json"  # in the conftest's fixtures_dir
# Our config -> the official YAML whose checkpoint it must load, and the preset's n_iters.
OFFICIAL = {
    "video_maskformer2_swin_large_IN21k_384_bs16_8ep_2019.py": (
        "configs/youtubevis_2019/swin/video_maskformer2_swin_large_IN21k_384_bs16_8ep.yaml", 4
    ),
    "video_maskformer2_swin_large_IN21k_384_bs16_8ep_2021.py": (
        "configs/youtubevis_2021/swin/video_maskformer2_swin_large_IN21k_384_bs16_8ep.yaml", 5
    ),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def videos_root(tmp_path_factory):
    """A 2 + 2 video expedite_videos dataset, registered under the expedite_videos names and named by
    $EXPEDITE_VIDEOS (the tiny config registers the names when loaded; subprocesses inherit it)."""
    root = ensure_expedite_videos(str(tmp_path_factory.mktemp("videos") / "expedite_videos"),
                                  num_train=2, num_val=2)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("EXPEDITE_VIDEOS", root)
        register_expedite_videos(root)
        yield root
    register_expedite_videos()  # the names point back at the default root for other tests


@pytest.fixture(scope="module")
def tiny_cfg():
    return load_checked_config(str(TINY_CONFIG), [])


def tiny_model(cfg, **overrides):
    node = cfg.model.copy()
    node.update(overrides)
    torch.manual_seed(0)
    return instantiate(node).eval()


def clip(num_frames, size=(96, 128), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator)
        for _ in range(num_frames)
    ]


# ---- Official configs ------------------------------------------------------------------------


@pytest.mark.parametrize("config", sorted(OFFICIAL))
def test_official_config_state_dict_is_the_checkpoints(fixtures_dir, config):
    yaml, n_iters = OFFICIAL[config]
    official = json.loads((Path(fixtures_dir) / FIXTURE).read_text())["models"][yaml]
    cfg = load_checked_config(str(CONFIGS / config), [], device="cpu")
    with torch.device("meta"):
        model = instantiate(cfg.model)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(ours) == sorted(official)
    assert ours == official

    # The released Expedit-Mask2Former YouTube-VIS preset: alpha 14 (stage 3), 12x12 -> 8x8.
    expedite = model.backbone.expedite
    assert (expedite.enabled, expedite.method, expedite.location) == (True, "expedit", 14)
    settings = expedite.expedit
    assert (settings.grid, settings.n_iters, settings.cluster_temperature, settings.locality_window,
            settings.k, settings.reconstruct_temperature) == ((8, 8), n_iters, 0.01, 7, 49, 0.01)
    assert model.backbone.reduction_point() == (2, 10)
    assert model.num_queries == 200 and model.test_topk_per_video == 10


def test_tiny_video_model_has_the_builtin_image_models_layout(tiny_cfg):
    """Every key of the built-in image Mask2Former's checkpoint fits, except the class rows: the
    video model has the 6 thing classes, the image model 6 things + 2 stuff."""
    checkpoint = torch.load(REPO_ROOT / "checkpoints" / "mask2former_swin_tiny_scenes.pth",
                            map_location="cpu", weights_only=False)
    image = {k: tuple(v.shape) for k, v in checkpoint.get("model", checkpoint).items()}
    with torch.device("meta"):
        video = {k: tuple(v.shape) for k, v in instantiate(tiny_cfg.model).state_dict().items()}
    assert sorted(video) == sorted(image)
    differ = {k: (video[k], image[k]) for k in video if video[k] != image[k]}
    assert differ == {
        "sem_seg_head.predictor.class_embed.weight": ((7, 96), (9, 96)),
        "sem_seg_head.predictor.class_embed.bias": ((7,), (9,)),
        "criterion.empty_weight": ((7,), (9,)),
    }


# ---- Position encoding and decoder -------------------------------------------------------------


def test_3d_position_encoding_is_the_2d_one_plus_a_time_term():
    t, h, w = 4, 5, 7
    pos = PositionEmbeddingSine3D(16)(torch.zeros(2, t, 1, h, w))
    assert pos.shape == (2, t, 32, h, w)
    pos2d = PositionEmbeddingSine(16)(torch.zeros(1, 1, h, w))[0]
    time_term = pos[0] - pos2d  # (T, C, H, W): constant over space
    assert torch.allclose(time_term, time_term[:, :, :1, :1].expand_as(time_term), atol=1e-5)
    # Time is normalized by the clip length: the last frame's term is that of t/T = 1.
    last = time_term[-1, :, 0, 0]
    freqs = 10000.0 ** (2 * (torch.arange(32) // 2) / 32)
    angles = 2 * math.pi / freqs
    expected = torch.stack((angles[0::2].sin(), angles[1::2].cos()), dim=-1).flatten()
    assert torch.allclose(last, expected, atol=1e-5)


def test_decoder_memory_and_attention_mask_are_frame_major(tiny_cfg):
    """The first round's memory, its position encoding and its attention mask, against a per-frame
    loop: all three list frame 0's tokens first, then frame 1's, ..., each frame row-major."""
    model = tiny_model(tiny_cfg)
    decoder = model.sem_seg_head.predictor
    torch.manual_seed(1)
    t, sizes, mask_size = 3, [(3, 4), (6, 7), (12, 13)], (24, 26)
    levels = [torch.randn(t, decoder.in_channels, *s) for s in sizes]
    mask_features = torch.randn(t, decoder.mask_dim, *mask_size)
    captured = {}

    def capture(module, args, kwargs):
        captured.update(memory=args[1], **kwargs)

    hook = decoder.transformer_cross_attention_layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            out = decoder.train()(levels, mask_features, num_videos=1)  # keeps every round's tubes
            last = decoder.eval()(levels, mask_features, num_videos=1)
    finally:
        hook.remove()
    q = decoder.num_queries
    assert out["pred_masks"].shape == (1, q, t, *mask_size)
    assert len(out["aux_outputs"]) == decoder.num_layers and last["aux_outputs"] == []
    assert torch.allclose(last["pred_masks"], out["pred_masks"]) and torch.allclose(
        last["pred_logits"], out["pred_logits"]
    )

    level = levels[0]  # round 0 attends to the coarsest level; input_proj is the identity here
    memory = torch.cat([level[i].flatten(1).T + decoder.level_embed.weight[0] for i in range(t)])
    assert torch.allclose(captured["memory"][:, 0], memory, atol=1e-6)
    pe = decoder.pe_layer(level[None])[0]  # (T, C, h, w)
    pos = torch.cat([pe[i].flatten(1).T for i in range(t)])
    assert torch.allclose(captured["pos"][:, 0], pos, atol=1e-6)

    initial = out["aux_outputs"][0]["pred_masks"][0]  # (Q, T, H_m, W_m)
    blocked = torch.cat(
        [
            torch.nn.functional.interpolate(initial[:, i : i + 1], size=sizes[0], mode="bilinear",
                                            align_corners=False).flatten(1).sigmoid() < 0.5
            for i in range(t)
        ],
        dim=1,
    )
    blocked[blocked.all(-1)] = False
    assert captured["memory_mask"].shape == (decoder.num_heads, q, t * sizes[0][0] * sizes[0][1])
    for head in range(decoder.num_heads):
        assert torch.equal(captured["memory_mask"][head], blocked)


# ---- The video model ---------------------------------------------------------------------------


def test_three_frame_clip_gives_ten_tubes_at_the_original_size(tiny_cfg):
    model = tiny_model(tiny_cfg)
    video = {"image": clip(3), "height": 120, "width": 150, "video_id": 7}
    with torch.no_grad():
        (output,) = model([video])
    assert output["image_size"] == (120, 150)
    assert len(output["pred_scores"]) == len(output["pred_labels"]) == len(output["pred_masks"]) == 10
    for mask in output["pred_masks"]:
        assert mask.shape == (3, 120, 150) and mask.dtype == torch.bool and mask.device.type == "cpu"
    assert all(0 <= label < 6 for label in output["pred_labels"])
    assert output["pred_scores"] == sorted(output["pred_scores"], reverse=True)


def test_a_batch_of_two_videos_is_refused(tiny_cfg):
    model = tiny_model(tiny_cfg)
    with pytest.raises(ValueError, match="one video per call, got a batch of 2"):
        model([{"image": clip(2)}, {"image": clip(2, seed=1)}])


def test_expedited_backbone_frames_together_equal_frames_one_at_a_time(tiny_cfg):
    model = tiny_model(tiny_cfg)
    assert model.backbone.reduction_point() is not None  # the tiny config clusters
    frames = torch.stack([f.float() for f in clip(3, size=(128, 160))])
    with torch.no_grad():
        together = model.backbone(frames)
        alone = [model.backbone(frame[None]) for frame in frames]
    for name, features in together.items():
        assert torch.allclose(features, torch.cat([a[name] for a in alone]), atol=1e-5), name


def test_chunked_equals_unchunked(tiny_cfg):
    chunked, whole = tiny_model(tiny_cfg, frame_chunk=1), tiny_model(tiny_cfg, frame_chunk=None)
    video = {"image": clip(4), "video_id": 1}
    with torch.no_grad():
        (a,), (b,) = chunked([video]), whole([video])
        frames = video["image"]
        size = chunked._padded_size(frames)
        mask_a, levels_a = chunked.frame_features(frames, size)
        mask_b, levels_b = whole.frame_features(frames, size)
    assert torch.allclose(mask_a, mask_b, atol=1e-5)
    for level_a, level_b in zip(levels_a, levels_b):
        assert torch.allclose(level_a, level_b, atol=1e-5)
    assert a["pred_labels"] == b["pred_labels"]
    assert a["pred_scores"] == pytest.approx(b["pred_scores"], abs=1e-5)
    assert [m.float().mean().item() for m in a["pred_masks"]] == pytest.approx(
        [m.float().mean().item() for m in b["pred_masks"]], abs=1e-3
    )


@pytest.mark.parametrize("frame_chunk", [0, 2.5, True])
def test_bad_frame_chunk_is_refused(tiny_cfg, frame_chunk):
    with pytest.raises(ValueError, match="frame_chunk"):
        tiny_model(tiny_cfg, frame_chunk=frame_chunk)


def test_nan_video_predictions_name_the_video():
    from expedite_vit.evaluation import FiniteOutputs, NonFiniteError

    prediction = {"image_size": (8, 8), "pred_scores": [0.5, float("nan")], "pred_labels": [0, 1],
                  "pred_masks": [torch.zeros(3, 8, 8, dtype=torch.bool)] * 2}
    model = FiniteOutputs(lambda inputs: [prediction])
    video = {"video_id": 7, "file_names": ["video_0007/00000.jpg", "video_0007/00001.jpg"]}
    with pytest.raises(NonFiniteError, match=r"predictions for video 7 \(first frame "
                                             r"video_0007/00000\.jpg\) hold NaN or inf \(pred_scores\[1\]\)"):
        model([video])
    with pytest.raises(NonFiniteError, match=r"predictions for the video \(first frame a/0\.jpg\)"):
        model([{"file_names": ["a/0.jpg"]}])
    with pytest.raises(NonFiniteError, match=r"predictions for video 7 hold"):
        model([{"video_id": 7}])
    model = FiniteOutputs(lambda inputs: [dict(prediction, pred_scores=[0.5, 0.25])])
    assert model([video]) == [dict(prediction, pred_scores=[0.5, 0.25])]


# ---- Mapper and training -----------------------------------------------------------------------


def test_mapper_reads_every_frame_at_test_and_samples_a_clip_for_training(videos_root):
    video = DatasetCatalog.get("expedite_videos_val")[0]
    test = YTVISDatasetMapper(is_train=False, augmentations=[])(video)
    assert len(test["image"]) == video["length"] and test["length"] == video["length"]
    assert all(frame.shape == (3, video["height"], video["width"]) for frame in test["image"])
    assert "instances" not in test

    train_video = DatasetCatalog.get("expedite_videos_train")[0]
    mapper = YTVISDatasetMapper(is_train=True, augmentations=[], sampling_frame_num=3)
    sample = mapper(train_video)
    assert len(sample["image"]) == 3
    instances = sample["instances"]
    assert instances.gt_masks.shape[1:] == (3, train_video["height"], train_video["width"])
    assert len(instances) > 0 and instances.gt_masks.flatten(1).any(1).all()
    assert (instances.gt_ids >= 1).all() and len(set(instances.gt_ids.tolist())) == len(instances)


def test_training_step_gives_finite_losses_and_gradients(videos_root, tiny_cfg):
    model = tiny_model(tiny_cfg).train()
    mapper = YTVISDatasetMapper(is_train=True, augmentations=[], sampling_frame_num=2)
    batch = [mapper(v) for v in DatasetCatalog.get("expedite_videos_train")[:2]]
    losses = model(batch)
    assert "loss_mask" in losses and "loss_dice_0" in losses
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.sem_seg_head.predictor.query_feat.weight.grad.abs().sum() > 0


# ---- train_net.py ------------------------------------------------------------------------------


def test_train_net_eval_only_through_the_ytvis_evaluator(videos_root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", EXPEDITE_VIDEOS=videos_root)
    result = subprocess.run(
        [sys.executable, str(TRAIN_NET), "--config-file", str(TINY_CONFIG), "--eval-only",
         "--random-weights", f"train.output_dir={tmp_path}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics_eval.json").read_text())["segm"]
    for name in ("AP", "AP50", "AP75", "AR1", "AR10"):
        assert math.isfinite(metrics[name]), name
    # Every val video's 10 tracks, written for the evaluation server too.
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 10 * 2
    assert (tmp_path / "results.zip").exists()
