"""The built-in models, evaluated end to end through train_net.py on a generated split.

The generator seeds every image from (seed, split, index), so a 6-image val split holds the
first 6 images of the full val split: a small, real regression test of the trained checkpoints.
Both are shipped in checkpoints/ (float16 weights).
"""
import json
import os
import subprocess
import sys

import pytest
from detectron2.config import LazyConfig
from omegaconf import OmegaConf

from conftest import REPO, load_script
from expedite_vit.data import generate_expedite_scenes


def _load_main_job():
    return load_script(os.path.join(REPO, "tools", "main_job.py"))


BUILTIN_MODELS = _load_main_job().BUILTIN_MODELS
# Floors sit well under what the trained checkpoints score on these 6 images with reduction on
# and off (Mask2Former: PQ 32.5, PQ_th 14-15, mask AP50 15-16, mIoU 26),
# and far above an untrained model's ~0.
FLOORS = {
    "vitdet": {("bbox", "AP50"): 15, ("segm", "AP50"): 10},
    "mask2former": {("panoptic_seg", "PQ"): 20, ("panoptic_seg", "PQ_th"): 5, ("segm", "AP50"): 8,
                    ("sem_seg", "mIoU"): 15},
}


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_expedite_scenes(root, seed=0, num_train=1, num_val=6)
    return root


@pytest.mark.parametrize("enabled", [False, True])
@pytest.mark.parametrize("name", sorted(FLOORS))
def test_eval_only_on_generated_split(scenes_root, tmp_path, name, enabled):
    model = BUILTIN_MODELS[name]
    checkpoint = model.shipped_checkpoint
    assert checkpoint.is_file(), f"the shipped checkpoint {checkpoint} is missing"
    switch = model.disable.rsplit("=", 1)[0]
    env = dict(os.environ, EXPEDITE_DATASETS=str(scenes_root))
    command = [
        sys.executable, os.path.join(REPO, "train_net.py"), "--eval-only", "--config-file", str(model.config),
        f"train.init_checkpoint={checkpoint}", f"train.output_dir={tmp_path}", f"{switch}={enabled}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics_eval.json").read_text())
    for (task, metric), floor in FLOORS[name].items():
        assert metrics[task][metric] > floor, (task, metrics[task])
    saved = LazyConfig.load(str(tmp_path / "config.yaml"))
    assert OmegaConf.select(saved, switch) is enabled


def test_main_job_runs_a_model_without_checkpoint_only_when_asked_to_train(tmp_path):
    unshipped = [key for key, model in BUILTIN_MODELS.items() if not model.shipped]
    for key in unshipped:
        assert not BUILTIN_MODELS[key].shipped_checkpoint.exists(), f"{key} has a checkpoint: mark it shipped"
    output = tmp_path / "job"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "main_job.py"), "--models", "video", "--output", str(output)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 2
    assert "no checkpoint of mask2former_swin_tiny_videos is shipped yet" in result.stderr
    assert "--models video --train" in result.stderr
    assert not output.exists()
    assert BUILTIN_MODELS["video"].video and not BUILTIN_MODELS["vitdet"].video
