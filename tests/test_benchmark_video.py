"""tools/benchmark.py on a video model, per clip: the built-in Mask2Former-VIS config with random
weights, 3-frame clips (CPU, about 20 s)."""
import json

import numpy as np
import pytest
import torch
from detectron2.config import instantiate

from expedite_vit.benchmark.fidelity import PredictionAgreement, match_tracks
from expedite_vit.benchmark.flops import count_flops
from expedite_vit.benchmark.video import clip_backbone_input, generated_clips
from expedite_vit.data import ensure_expedite_videos, register_expedite_videos
from expedite_vit.runtime.cli import load_checked_config
from expedite_vit.runtime.models import with_expedite_disabled
from test_benchmark import load_tool
from test_train_net import REPO_ROOT, TINY_CONFIG as TINY_IMAGE_CONFIG

VIDEO_CONFIG = REPO_ROOT / "configs" / "Mask2Former-VIS" / "builtin" / "video_maskformer2_swin_tiny_videos.py"
RANDOM_WEIGHTS = "train.init_checkpoint="  # the shipped checkpoint may not exist yet; speed needs none

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def videos_root(tmp_path_factory):
    """A 1 + 2 video expedite_videos dataset, named by $EXPEDITE_VIDEOS (the config registers the
    names from it when loaded)."""
    root = ensure_expedite_videos(str(tmp_path_factory.mktemp("videos") / "expedite_videos"), num_train=1, num_val=2)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("EXPEDITE_VIDEOS", root)
        register_expedite_videos(root)
        yield root
    register_expedite_videos()  # the names point back at the default root for other tests


def run_tool(argv, out):
    # Options first: config overrides take the rest of the command line.
    argv = ["--output-json", str(out / "results.json"), "--output-md", str(out / "results.md"), *argv]
    assert load_tool().main(argv) == 0
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    """Generated clips, reduction on (the config's preset): (results, markdown)."""
    argv = ["--config-file", str(VIDEO_CONFIG), "--num-clips", "2", "--frames", "3", "--warmup", "0",
            "--iters", "1", RANDOM_WEIGHTS]
    return run_tool(argv, tmp_path_factory.mktemp("video_benchmark"))


def test_report_is_per_clip_and_per_frame(video_run):
    results, markdown = video_run
    for key in ("flops", "latency_ms", "token_reduction_time", "memory", "fidelity", "targets"):
        assert key in results, key
    assert results["inputs"]["num_clips"] == 2 and results["inputs"]["frames"] == [3, 3]
    latency = results["latency_ms"]
    assert latency["per"] == "frame"
    for name in ("baseline", "expedited"):
        for part in ("backbone", "model"):
            assert latency[name][part]["median_ms"] > 0 and latency[name][part]["p90_ms"] > 0
    assert set(latency["speedup"]) == {"backbone", "model"}
    memory = results["memory"]
    assert memory["baseline_mib"] > 0 and memory["expedited_mib"] > 0
    assert memory["rss_baseline_mib"] is not None and memory["rss_method"]
    assert "latency ms per frame, backbone" in markdown and "GFLOPs per clip, backbone" in markdown
    assert "clips: 2" in markdown and "of 3 frames" in markdown


def test_flops_per_clip_are_the_direct_count_of_the_clip(video_run):
    """The tool counts one frame and multiplies; fvcore on the whole 3-frame clip gives the same."""
    results, _ = video_run
    flops = results["flops"]
    assert flops["per"] == "clip" and flops["frames"] == [3]
    cfg = load_checked_config(str(VIDEO_CONFIG), [RANDOM_WEIGHTS])
    clip = generated_clips(cfg, 1, 3, None)[0]
    for name, model_cfg in (("baseline", with_expedite_disabled(cfg.model)), ("expedited", cfg.model)):
        model = instantiate(model_cfg).eval()
        x = clip_backbone_input(model, clip)
        assert tuple(x.shape[:2]) == (3, 3)
        direct = count_flops(model.backbone, x)["total"] / 1e9
        assert flops[name]["backbone"] == pytest.approx(direct, rel=1e-6)
        assert flops[name]["backbone"] == pytest.approx(3 * flops[name]["backbone_per_frame"], rel=1e-9)
        assert flops[name]["model"] > flops[name]["backbone"]
    assert flops["ratio"]["backbone"] > 1.0 and flops["ratio"]["model"] > 1.0
    assert flops["ratio"]["backbone"] == pytest.approx(flops["baseline"]["backbone"] / flops["expedited"]["backbone"])


def test_tracks_agree_fully_when_reduction_is_off_for_both(videos_root, tmp_path):
    """Clips of a registered video dataset; both models the baseline: every track found again."""
    argv = ["--config-file", str(VIDEO_CONFIG), "--dataset", "expedite_videos_val", "--num-clips", "1",
            "--frames", "3", "--warmup", "0", "--iters", "1", "--backbone-only", RANDOM_WEIGHTS,
            "model.backbone.expedite.enabled=False"]
    results, _ = run_tool(argv, tmp_path)
    assert results["inputs"]["source"] == "dataset" and results["inputs"]["frames"] == [3]
    tracks = results["fidelity"]["agreement"]["tracks"]
    assert tracks["baseline_tracks"] == tracks["expedited_tracks"] == 10
    assert tracks["recovered"] == 1.0 and tracks["mean_iou"] == pytest.approx(1.0)
    assert results["flops"]["ratio"]["backbone"] == pytest.approx(1.0)
    assert "model" not in results["latency_ms"]["speedup"]


def test_flops_only_at_a_given_frame_size(tmp_path):
    argv = ["--config-file", str(VIDEO_CONFIG), "--frames", "2", "--frame-size", "96x128", "--flops-only",
            "--backbone-only", RANDOM_WEIGHTS]
    results, markdown = run_tool(argv, tmp_path)
    assert results["inputs"]["num_clips"] == 1 and results["inputs"]["backbone_input_sizes"] == [[96, 128]]
    assert "latency_ms" not in results and "memory" not in results
    assert "GFLOPs per clip, backbone" in markdown and "latency" not in markdown


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config-file", str(VIDEO_CONFIG), "--frames", "0"], "frames (--frames) must be at least 1, got 0"),
        (["--config-file", str(VIDEO_CONFIG), "--num-clips", "0"], "num_clips (--num-clips) must be at least 1"),
        (["--config-file", str(VIDEO_CONFIG), "--frame-size", "480"], "--frame-size must be HxW"),
        (["--config-file", str(VIDEO_CONFIG), "--num-images", "2", RANDOM_WEIGHTS], "--num-images: not for a video model"),
        (["--config-file", str(TINY_IMAGE_CONFIG), "--frames", "3"], "--frames: only for a video model"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool().main(argv)
    assert exit_info.value.code != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert "Traceback" not in "\n".join(errors)


def test_more_frames_than_a_video_has_is_refused(videos_root, capsys):
    argv = ["--config-file", str(VIDEO_CONFIG), "--dataset", "expedite_videos_val", "--frames", "7", RANDOM_WEIGHTS]
    with pytest.raises(SystemExit):
        load_tool().main(argv)
    assert "--frames 7, but video 1 of dataset 'expedite_videos_val' has only 6 frames" in capsys.readouterr().err


def _output(scores, labels, masks):
    return {"pred_scores": scores, "pred_labels": labels, "pred_masks": [torch.as_tensor(m) for m in masks]}


def test_tracks_are_matched_by_tube_iou():
    a = np.zeros((2, 8, 8), dtype=bool)
    a[:, :4, :4] = True  # 16 pixels in each of 2 frames
    b = np.zeros_like(a)
    b[0, :4, :4] = True  # frame 0 the same, frame 1 empty: tube IoU 16 / 32
    empty = np.zeros_like(a)
    base = _output([0.9, 0.8], [1, 2], [a, empty])
    assert match_tracks(base, base, 0.0) == (2, 2, [1.0, 1.0])  # empty tubes agree too
    assert match_tracks(base, _output([0.9, 0.8], [1, 2], [b, empty]), 0.0, 0.5) == (2, 2, [0.5, 1.0])
    assert match_tracks(base, _output([0.9, 0.8], [1, 2], [b, empty]), 0.0, 0.6) == (2, 2, [1.0])
    assert match_tracks(base, _output([0.9, 0.8], [3, 2], [a, empty]), 0.0) == (2, 2, [1.0])  # label differs
    assert match_tracks(base, base, 0.85) == (1, 1, [1.0])  # below the score threshold: not compared
    agreement = PredictionAgreement(0.0)
    agreement.add(base, _output([0.9, 0.8], [1, 2], [b, empty]))
    summary = agreement.summary()["tracks"]
    assert summary["baseline_tracks"] == 2 and summary["matched"] == 2
    assert summary["recovered"] == 1.0 and summary["mean_iou"] == pytest.approx(0.75)
