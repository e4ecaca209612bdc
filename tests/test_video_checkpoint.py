"""The built-in video Mask2Former's starting weights, made from the built-in image Mask2Former
(tools/init_video_from_image.py: class rows mapped by name), from which the shipped video checkpoint
was trained (BENCHMARKS.md, "Built-in video model")."""

from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate

from expedite_vit.runtime.cli import load_checked_config
from conftest import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "Mask2Former-VIS" / "builtin" / "video_maskformer2_swin_tiny_videos.py"
IMAGE_CHECKPOINT = REPO_ROOT / "checkpoints" / "mask2former_swin_tiny_scenes.pth"
THINGS = ["disc", "ring", "triangle", "square", "star", "cross"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def init_tool():
    return load_script(REPO_ROOT / "tools" / "init_video_from_image.py")


@pytest.fixture(scope="module")
def cfg():
    return load_checked_config(str(CONFIG), [])


def weights_of(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint.get("model", checkpoint)


# ---- Class rows ---------------------------------------------------------------------------------


def test_class_rows_follow_the_names_and_keep_no_object_last(init_tool):
    image = ["backdrop", "ring", "disc", "ground", "star"]
    assert init_tool.class_rows(image, ["disc", "ring"]) == [2, 1, 5]
    assert init_tool.class_rows(image, ["star", "disc", "ring"]) == [4, 2, 1, 5]
    # The built-in models: the panoptic image model scores 6 things then 2 stuff classes.
    assert init_tool.class_rows(THINGS + ["backdrop", "ground"], THINGS) == [0, 1, 2, 3, 4, 5, 8]


def test_class_rows_refuse_unknown_or_repeated_names(init_tool):
    with pytest.raises(ValueError, match="hexagon"):
        init_tool.class_rows(THINGS, ["disc", "hexagon"])
    with pytest.raises(ValueError, match="repeat"):
        init_tool.class_rows(["disc", "disc"], ["disc"])


def test_slice_class_rows_moves_each_row_to_its_class(init_tool):
    weights = {
        "sem_seg_head.predictor.class_embed.weight": torch.arange(12.0).reshape(4, 3),
        "sem_seg_head.predictor.class_embed.bias": torch.tensor([10.0, 11.0, 12.0, 13.0]),
        "criterion.empty_weight": torch.tensor([1.0, 1.0, 1.0, 0.1]),
        "other": torch.ones(2),
    }
    out = init_tool.slice_class_rows(weights, ["a", "b", "c"], ["c", "a"])
    assert out["sem_seg_head.predictor.class_embed.weight"].tolist() == [[6, 7, 8], [0, 1, 2], [9, 10, 11]]
    assert out["sem_seg_head.predictor.class_embed.bias"].tolist() == [12, 10, 13]
    assert out["criterion.empty_weight"].tolist() == pytest.approx([1.0, 1.0, 0.1])
    assert out["other"] is weights["other"]
    with pytest.raises(ValueError, match="rows"):
        init_tool.slice_class_rows(weights, ["a", "b"], ["a"])


def test_image_checkpoint_becomes_a_strict_fit_for_the_video_model(init_tool, cfg):
    """The built-in classes, from the datasets' metadata; every other weight is the image model's."""
    image_classes = init_tool.dataset_classes("expedite_scenes_train_panoptic", "image")
    video_classes = init_tool.dataset_classes("expedite_videos_train", "video")
    assert image_classes == THINGS + ["backdrop", "ground"] and video_classes == THINGS
    image = weights_of(IMAGE_CHECKPOINT)
    video = init_tool.slice_class_rows(image, image_classes, video_classes)
    key = "sem_seg_head.predictor.class_embed.weight"
    assert torch.equal(video[key], image[key][[0, 1, 2, 3, 4, 5, 8]])
    assert all(torch.equal(video[k], image[k]) for k in image if k not in init_tool.CLASS_ROW_KEYS)
    with torch.device("meta"):
        model = instantiate(cfg.model)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in video.items()} == shapes

