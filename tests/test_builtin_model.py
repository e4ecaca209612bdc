"""The shipped built-in models, evaluated end to end through train_net.py on a generated split.

The generator seeds every image from (seed, split, index), so a 6-image val split holds the
first 6 images of the full val split: a small, real regression test of the shipped checkpoint.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from expedite_vit.data import generate_expedite_scenes

# name -> (config, checkpoint, the override switching token reduction, {(task, metric): floor}).
# Floors sit well under what the shipped checkpoints score on these 6 images with reduction on and
# off, and far above an untrained model's ~0.
MODELS = {
    "vitdet": (
        os.path.join(REPO, "configs", "ViTDet", "builtin", "mask_rcnn_vitdet_scenes.py"),
        os.path.join(REPO, "checkpoints", "mask_rcnn_vitdet_scenes.pth"),
        "model.backbone.net.expedite.enabled",
        {("bbox", "AP50"): 15, ("segm", "AP50"): 10},
    ),
    "mask2former": (
        os.path.join(REPO, "configs", "Mask2Former", "builtin", "maskformer2_swin_tiny_scenes_panoptic.py"),
        os.path.join(REPO, "checkpoints", "mask2former_swin_tiny_scenes.pth"),
        "model.backbone.expedite.enabled",
        {("panoptic_seg", "PQ"): 20, ("panoptic_seg", "PQ_th"): 5, ("segm", "AP50"): 8, ("sem_seg", "mIoU"): 15},
    ),
}


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_expedite_scenes(root, seed=0, num_train=1, num_val=6)
    return root


@pytest.mark.parametrize("enabled", [False, True])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_eval_only_on_generated_split(scenes_root, tmp_path, model, enabled):
    config, checkpoint, switch, floors = MODELS[model]
    env = dict(os.environ, EXPEDITE_DATASETS=str(scenes_root))
    command = [
        sys.executable, os.path.join(REPO, "train_net.py"), "--eval-only", "--config-file", config,
        f"train.init_checkpoint={checkpoint}", f"train.output_dir={tmp_path}", f"{switch}={enabled}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics_eval.json").read_text())
    for (task, metric), floor in floors.items():
        assert metrics[task][metric] > floor, (task, metrics[task])
    log = (tmp_path / "log.txt").read_text()
    assert ("TokenClusteringLayer" in log) == enabled
