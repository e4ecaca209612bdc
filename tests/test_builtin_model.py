"""The shipped built-in model, evaluated end to end through train_net.py on a generated split.

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

CONFIG = os.path.join(REPO, "configs", "ViTDet", "builtin", "mask_rcnn_vitdet_scenes.py")
CHECKPOINT = os.path.join(REPO, "checkpoints", "mask_rcnn_vitdet_scenes.pth")


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_expedite_scenes(root, seed=0, num_train=1, num_val=6)
    return root


@pytest.mark.parametrize("enabled", [False, True])
def test_eval_only_on_generated_split(scenes_root, tmp_path, enabled):
    env = dict(os.environ, EXPEDITE_DATASETS=str(scenes_root))
    command = [
        sys.executable, os.path.join(REPO, "train_net.py"), "--eval-only", "--config-file", CONFIG,
        f"train.init_checkpoint={CHECKPOINT}", f"train.output_dir={tmp_path}",
        f"model.backbone.net.expedite.enabled={enabled}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics_eval.json").read_text())
    # The trained model finds the objects: far above an untrained model's ~0 AP.
    assert metrics["bbox"]["AP50"] > 15, metrics["bbox"]
    assert metrics["segm"]["AP50"] > 10, metrics["segm"]
    log = (tmp_path / "log.txt").read_text()
    assert ("TokenClusteringLayer" in log) == enabled
