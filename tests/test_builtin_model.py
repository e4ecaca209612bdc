"""The built-in models, evaluated end to end through train_net.py on a generated split.

The generators seed every image and video from (seed, split, index), so a 6-image val split holds
the first 6 images of the full val split (the video model is evaluated on all 12 val videos): a
small, real regression test of the trained checkpoints, all shipped in checkpoints/ (float16
weights).
"""
import json
import os
import subprocess
import sys

import pytest
from detectron2.config import LazyConfig
from omegaconf import OmegaConf

from conftest import REPO, load_script
from expedite_vit.data import generate_expedite_scenes, generate_expedite_videos


def _load_main_job():
    return load_script(os.path.join(REPO, "tools", "main_job.py"))


BUILTIN_MODELS = _load_main_job().BUILTIN_MODELS
# Floors sit well under what the trained checkpoints score on these 6 images (12 videos) with
# reduction on and off (Mask2Former: PQ 32.5, PQ_th 14-15, mask AP50 15-16, mIoU 26; video: AP
# 22-25, AP50 44-49), and far above an untrained model's ~0 (video: AP 2.3 from the image weights).
FLOORS = {
    "vitdet": {("bbox", "AP50"): 15, ("segm", "AP50"): 10},
    "mask2former": {("panoptic_seg", "PQ"): 20, ("panoptic_seg", "PQ_th"): 5, ("segm", "AP50"): 8,
                    ("sem_seg", "mIoU"): 15},
    "video": {("segm", "AP"): 15, ("segm", "AP50"): 25},
}


@pytest.fixture(scope="module")
def datasets_env(tmp_path_factory):
    """The environment of a train_net.py process that reads the generated splits."""
    scenes = tmp_path_factory.mktemp("scenes")
    generate_expedite_scenes(scenes, seed=0, num_train=1, num_val=6)
    videos = tmp_path_factory.mktemp("videos")
    generate_expedite_videos(videos, seed=0, num_train=1, num_val=12)
    return dict(os.environ, EXPEDITE_DATASETS=str(scenes), EXPEDITE_VIDEOS=str(videos))


@pytest.mark.parametrize("enabled", [False, True])
@pytest.mark.parametrize("name", sorted(FLOORS))
def test_eval_only_on_generated_split(datasets_env, tmp_path, name, enabled):
    model = BUILTIN_MODELS[name]
    checkpoint = model.shipped_checkpoint
    assert checkpoint.is_file(), f"the shipped checkpoint {checkpoint} is missing"
    switch = model.disable.rsplit("=", 1)[0]
    command = [
        sys.executable, os.path.join(REPO, "train_net.py"), "--eval-only", "--config-file", str(model.config),
        f"train.init_checkpoint={checkpoint}", f"train.output_dir={tmp_path}", f"{switch}={enabled}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=datasets_env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics_eval.json").read_text())
    for (task, metric), floor in FLOORS[name].items():
        assert metrics[task][metric] > floor, (task, metrics[task])
    saved = LazyConfig.load(str(tmp_path / "config.yaml"))
    assert OmegaConf.select(saved, switch) is enabled


def test_every_builtin_model_has_a_checkpoint_and_a_floor():
    for key, model in BUILTIN_MODELS.items():
        assert model.shipped_checkpoint.is_file(), key
        assert key in FLOORS, key
    video = BUILTIN_MODELS["video"]
    assert video.video and video.video_from in BUILTIN_MODELS and not BUILTIN_MODELS[video.video_from].video


@pytest.mark.parametrize("flag, value, message", [
    ("--benchmark-clips", "0", "--benchmark-clips must be at least 1, got 0"),
    ("--sweep-images", "-1", "--sweep-images must be 0 (no sweep) or more, got -1"),
])
def test_main_job_refuses_bad_settings_before_writing(tmp_path, flag, value, message):
    output = tmp_path / "job"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "main_job.py"), flag, value, "--output", str(output)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(message)
    assert not output.exists()
