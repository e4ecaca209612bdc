"""demo/demo.py and expedite_vit.visualization on the tiny ViTDet config with random weights."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from skimage import data

from expedite import cluster_windows
from expedite_vit.runtime.config import load_config
from expedite_vit.visualization import cluster_labels, draw_token_clusters, side_by_side
from test_train_net import REPO_ROOT, TINY_CONFIG
from conftest import load_script

DEMO = REPO_ROOT / "demo" / "demo.py"


@pytest.fixture(scope="module")
def demo():
    return load_script(DEMO)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Random weights of the tiny model, saved as a detectron2 checkpoint."""
    torch.manual_seed(0)
    model = instantiate(load_config(str(TINY_CONFIG)).model)
    path = tmp_path_factory.mktemp("weights") / "random.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A colour photograph (JPEG) and a grayscale one (single-channel PNG)."""
    folder = tmp_path_factory.mktemp("images")
    colour, gray = folder / "astronaut.jpg", folder / "camera.png"
    cv2.imwrite(str(colour), cv2.resize(data.astronaut(), (160, 120))[:, :, ::-1])
    cv2.imwrite(str(gray), cv2.resize(data.camera(), (96, 128)))
    return colour, gray


def demo_args(checkpoint, *args):
    # Threshold 0: random weights score low, and the drawing must show something.
    return ["--config-file", str(TINY_CONFIG), "--device", "cpu", "--confidence-threshold", "0", *args,
            f"train.init_checkpoint={checkpoint}"]


def read_rgb(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} was not written as an image"
    return image[:, :, ::-1].astype(np.float32)


def test_draws_on_colour_and_grayscale_images(demo, checkpoint, images, tmp_path):
    colour, gray = images
    out = tmp_path / "out"
    assert demo.main(demo_args(checkpoint, "--input", str(colour), str(gray), "--output", str(out))) == 0
    for source in (colour, gray):
        drawn, original = read_rgb(out / source.name), read_rgb(source)
        assert drawn.shape == original.shape  # grayscale comes back with 3 channels
        assert np.abs(drawn - original).mean() > 1.0  # predictions were drawn


@pytest.mark.parametrize("method", ["expedit", "tome"])  # reduced map / merged token set
def test_compare_draws_three_panels(demo, checkpoint, images, tmp_path, method):
    colour, _ = images
    out = tmp_path / "compare.png"
    override = f"model.backbone.net.expedite.method={method}"
    assert demo.main(demo_args(checkpoint, "--compare", "--input", str(colour), "--output", str(out), override)) == 0
    panels, original = read_rgb(out), read_rgb(colour)
    height, width = original.shape[:2]
    assert panels.shape == (height, 3 * width, 3)
    clusters = panels[:, 2 * width :]
    # The cluster panel is the photo recoloured, not a copy of either prediction panel.
    assert np.abs(clusters - panels[:, :width]).mean() > 5.0
    assert np.abs(clusters - original).mean() > 5.0


def test_existing_output_is_kept_without_overwrite(demo, checkpoint, images, tmp_path, capsys):
    colour, _ = images
    out = tmp_path / "drawn.jpg"
    out.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as exit_info:
        demo.main(demo_args(checkpoint, "--input", str(colour), "--output", str(out)))
    assert exit_info.value.code != 0
    assert f"{str(out)!r} exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert demo.main(demo_args(checkpoint, "--input", str(colour), "--output", str(out), "--overwrite")) == 0
    assert read_rgb(out).shape == read_rgb(colour).shape


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: ["--input", str(d / "missing.jpg")], "image file '{d}/missing.jpg' does not exist"),
        (lambda d: ["--input", str(d / "*.jpeg")], "no image file matches '{d}/*.jpeg'"),
        (lambda d: ["--video-input", str(d / "clip.mp4")], "video file '{d}/clip.mp4' does not exist"),
    ],
)
def test_missing_inputs_are_named(demo, checkpoint, tmp_path, capsys, make_args, message):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(demo_args(checkpoint, *make_args(tmp_path), "--output", str(tmp_path / "out")))
    assert exit_info.value.code != 0
    assert message.format(d=tmp_path) in capsys.readouterr().err


def test_unusable_outputs_are_refused(demo, checkpoint, images, tmp_path, capsys):
    colour, gray = images
    cases = [
        (["--input", str(colour), "--output", str(colour), "--overwrite"], "is the input itself"),
        (["--input", str(colour), str(gray), "--output", str(tmp_path / "x.png")], "to be a folder"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            demo.main(demo_args(checkpoint, *args))
        assert exit_info.value.code != 0
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_corrupt_image_is_named(demo, checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(SystemExit) as exit_info:
        demo.main(demo_args(checkpoint, "--input", str(broken), "--output", str(tmp_path / "out")))
    assert exit_info.value.code != 0
    assert f"cannot read image {str(broken)!r}" in capsys.readouterr().err


def test_missing_config_exits_with_an_error(tmp_path):
    """The script itself, as a user runs it: non-zero exit status and the file named."""
    result = subprocess.run(
        [sys.executable, str(DEMO), "--config-file", "no/such/config.py", "--input", "x.jpg",
         "--output", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert result.returncode != 0
    assert "config file 'no/such/config.py' does not exist" in result.stderr


def test_video_frames_are_drawn(demo, checkpoint, images, tmp_path):
    colour, _ = images
    frame = cv2.imread(str(colour))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (frame.shape[1], frame.shape[0]))
    for shift in (0, 8):
        writer.write(np.roll(frame, shift, axis=1))
    writer.release()
    out = tmp_path / "drawn.avi"
    assert demo.main(demo_args(checkpoint, "--video-input", str(video), "--output", str(out))) == 0
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    assert int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == frame.shape[1]
    capture.release()


# ---- drawing functions ---------------------------------------------------------------


def test_cluster_labels_follow_windows_and_content():
    # A 6x6 map in 4x4 windows (2x2 windows, the last ones padded), each window clustered to
    # 2x2: left and right halves of the map hold different constant features.
    x = torch.zeros(1, 6, 6, 8)
    x[:, :, 3:] = 5.0
    _, state = cluster_windows(x, window=4, grid=(2, 2), n_iters=2, temperature=0.01, radius=1)
    labels = cluster_labels(state)
    assert labels.shape == (6, 6)
    window_of = lambda r, c: (r // 4) * 2 + c // 4  # noqa: E731
    for r in range(6):
        for c in range(6):
            assert labels[r, c] // 4 == window_of(r, c)  # ids are unique per window
    # Within a window, tokens with the same feature share a cluster.
    assert len(np.unique(labels[:4, :3])) == 1 and len(np.unique(labels[:4, 3:4])) == 1


def test_draw_token_clusters_keeps_the_image_size():
    image = np.full((50, 70, 3), 128, dtype=np.uint8)
    labels = np.array([[0, 1], [2, 3]])
    drawn = draw_token_clusters(image, labels, model_input_size=(25, 35), padded_size=(32, 48))
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert len(np.unique(drawn.reshape(-1, 3), axis=0)) > 2  # colours and borders


def test_side_by_side_refuses_different_heights():
    with pytest.raises(ValueError, match="one height"):
        side_by_side([np.zeros((4, 4, 3)), np.zeros((5, 4, 3))])


# ---- What is drawn: panoptic, instances, semantic ----------------------------------------------


def segmentation_predictions():
    """Mask2Former-style outputs of a 48x64 image: two segments, one instance, class scores."""
    from detectron2.structures import Boxes, Instances

    segment_ids = torch.zeros(48, 64, dtype=torch.int32)
    segment_ids[:, 32:] = 1
    segment_ids[10:30, 5:25] = 2
    segments_info = [
        {"id": 1, "category_id": 2, "isthing": False},
        {"id": 2, "category_id": 0, "isthing": True, "score": 0.9},
    ]
    instances = Instances((48, 64))
    instances.pred_masks = (segment_ids == 2)[None]
    instances.pred_boxes = Boxes(torch.tensor([[5.0, 10.0, 25.0, 30.0]]))
    instances.scores = torch.tensor([0.9])
    instances.pred_classes = torch.tensor([1])
    sem_seg = torch.zeros(3, 48, 64)
    sem_seg[2, :, 32:] = 1.0
    sem_seg[0, 10:30, 5:25] = 2.0
    return {"panoptic_seg": (segment_ids, segments_info), "instances": instances, "sem_seg": sem_seg}


@pytest.fixture
def drawing_metadata():
    from detectron2.data import MetadataCatalog

    metadata = MetadataCatalog.get("__test_demo_drawing")
    if not metadata.get("thing_classes"):
        metadata.set(thing_classes=["disc", "ring"], stuff_classes=["disc", "ring", "ground"])
    return metadata


@pytest.mark.parametrize("kind", ["panoptic_seg", "instances", "sem_seg"])
def test_each_kind_of_prediction_is_drawn_as_detectron2_draws_it(kind, drawing_metadata):
    from detectron2.utils.visualizer import Visualizer

    from expedite_vit.visualization import draw_predictions

    image = np.full((48, 64, 3), 128, dtype=np.uint8)
    predictions = segmentation_predictions()
    np.random.seed(0)  # the Visualizer picks random colours for classes without one
    reference = Visualizer(image, drawing_metadata)
    if kind == "panoptic_seg":
        expected = reference.draw_panoptic_seg(*predictions["panoptic_seg"])
    elif kind == "instances":
        expected = reference.draw_instance_predictions(predictions["instances"])
    else:
        expected = reference.draw_sem_seg(predictions["sem_seg"].argmax(0))
    np.random.seed(0)
    drawn = draw_predictions(image, predictions, drawing_metadata, 0.5, kind)
    np.testing.assert_array_equal(drawn, expected.get_image())
    assert not np.array_equal(drawn, image)  # something was drawn
    if kind != "panoptic_seg":  # "auto" draws the panoptic segmentation when there is one
        assert not np.array_equal(drawn, draw_predictions(image, predictions, drawing_metadata, 0.5))


def test_asking_for_predictions_the_model_does_not_give_names_the_switch(drawing_metadata):
    from expedite_vit.visualization import PredictionKindError, draw_predictions

    image = np.zeros((48, 64, 3), dtype=np.uint8)
    predictions = {"instances": segmentation_predictions()["instances"]}
    with pytest.raises(PredictionKindError, match=r"no 'sem_seg' predictions, only \['instances'\].*semantic_on"):
        draw_predictions(image, predictions, drawing_metadata, 0.5, "sem_seg")
    with pytest.raises(PredictionKindError, match="unknown prediction kind 'masks'"):
        draw_predictions(image, predictions, drawing_metadata, 0.5, "masks")


def test_demo_task_the_model_lacks_is_a_clear_error(demo, checkpoint, images, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(demo_args(checkpoint, "--input", str(images[0]), "--output", str(tmp_path), "--task", "sem_seg"))
    assert exit_info.value.code == 1
    assert "the model gives no 'sem_seg' predictions" in capsys.readouterr().err


# ---- Inputs a user may give: 16-bit, corrupt, tiny and very large images -----------------------


def _model_input(path, cfg):
    from expedite_vit.runtime.inputs import inference_augmentations, load_image, predictor_input

    return predictor_input(load_image(str(path), "BGR"), inference_augmentations(cfg))["image"]


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_gives_the_model_input_of_its_8_bit_version(tmp_path, channels):
    """A 16-bit PNG (as cv2.imwrite writes a uint16 array) and the same picture in 8 bits give the
    model the same input, within one grey level: 16 bits are scaled by 1/257, not clipped."""
    from detectron2.data.detection_utils import read_image

    rgb = cv2.resize(data.astronaut(), (96, 80))
    eight = rgb[:, :, ::-1] if channels == 3 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rng = np.random.default_rng(0)
    # Each 8-bit level v stands for 16-bit values around v * 257 (noise below half a level).
    sixteen = np.clip(eight.astype(np.int64) * 257 + rng.integers(-128, 129, eight.shape), 0, 65535)
    cv2.imwrite(str(tmp_path / "8.png"), eight)
    cv2.imwrite(str(tmp_path / "16.png"), sixteen.astype(np.uint16))
    assert cv2.imread(str(tmp_path / "16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16

    cfg = load_config(str(TINY_CONFIG))
    reference, scaled = _model_input(tmp_path / "8.png", cfg), _model_input(tmp_path / "16.png", cfg)
    assert reference.shape == scaled.shape
    assert float((reference - scaled).abs().max()) <= 1.0
    if channels == 1:  # the failure this guards against: PIL's conversion clips grey to white
        clipped = read_image(str(tmp_path / "16.png"), format="BGR").astype(np.float32)
        assert np.abs(clipped - read_image(str(tmp_path / "8.png"), format="BGR")).mean() > 50


def test_16_bit_image_is_drawn_like_its_8_bit_version(demo, checkpoint, tmp_path):
    eight = cv2.resize(data.astronaut(), (160, 120))[:, :, ::-1]
    cv2.imwrite(str(tmp_path / "eight.png"), eight)
    cv2.imwrite(str(tmp_path / "sixteen.png"), eight.astype(np.uint16) * 257)
    for name in ("eight", "sixteen"):
        np.random.seed(0)  # the Visualizer's colours are random
        assert demo.main(demo_args(checkpoint, "--input", str(tmp_path / f"{name}.png"),
                                   "--output", str(tmp_path / f"{name}_drawn.png"))) == 0
    drawn16, drawn8 = read_rgb(tmp_path / "sixteen_drawn.png"), read_rgb(tmp_path / "eight_drawn.png")
    np.testing.assert_array_equal(drawn16, drawn8)
    assert np.abs(drawn8 - eight[:, :, ::-1]).mean() > 1.0  # and something was drawn on it


def test_bad_images_in_a_list_are_skipped_and_reported_at_the_end(demo, checkpoint, images, tmp_path, capsys):
    colour, gray = images
    broken, dot, tiny = tmp_path / "broken.jpg", tmp_path / "dot.png", tmp_path / "tiny.png"
    broken.write_bytes(b"\xff\xd8\xff not really a JPEG")
    cv2.imwrite(str(dot), np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(tiny), np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        demo.main(demo_args(checkpoint, "--input", str(broken), str(colour), str(dot), str(tiny), str(gray),
                            "--output", str(out)))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "3 of 5 images could not be drawn:" in err
    failure_lines = err.split("could not be drawn:\n", 1)[1].splitlines()
    assert len(failure_lines) == 3  # one line each, in input order
    assert f"cannot read image {str(broken)!r}" in failure_lines[0]
    assert f"image {str(dot)!r} is 1x1 pixels, too small" in failure_lines[1]
    assert f"image {str(tiny)!r} is 8x8 pixels, too small" in failure_lines[2]
    # The good images after the bad ones were drawn all the same.
    assert sorted(p.name for p in out.iterdir()) == sorted([colour.name, gray.name])
    for source in (colour, gray):
        assert read_rgb(out / source.name).shape == read_rgb(source).shape


def test_minimum_image_side_is_32_pixels(tmp_path):
    from expedite_vit.runtime.inputs import ImageInputError, load_image

    cv2.imwrite(str(tmp_path / "ok.png"), np.zeros((32, 40, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "thin.png"), np.zeros((31, 400, 3), np.uint8))
    assert load_image(str(tmp_path / "ok.png"), "BGR").shape == (32, 40, 3)
    with pytest.raises(ImageInputError, match=r"is 400x31 pixels, too small: at least 32 pixels"):
        load_image(str(tmp_path / "thin.png"), "BGR")


def test_drawing_size_is_bounded(demo):
    assert demo.drawing_size(3000, 4000, 1600) == (1200, 1600)
    assert demo.drawing_size(4000, 300, 1600) == (1600, 120)
    assert demo.drawing_size(1200, 1600, 1600) == (1200, 1600)
    assert demo.drawing_size(3000, 4000, 0) == (3000, 4000)


def test_large_image_is_drawn_scaled_down_with_predictions_aligned(demo, checkpoint, tmp_path):
    """A 2000x1500 image: drawn at 1600x1200, and the model's predictions for the drawing are its
    full-resolution predictions scaled by 0.8 (the same boxes, masks at the drawing's size)."""
    large = cv2.resize(data.astronaut(), (2000, 1500))[:, :, ::-1].copy()
    cfg = load_config(str(TINY_CONFIG), [f"train.init_checkpoint={checkpoint}"])
    renderer = demo.DemoRenderer(cfg, "cpu", compare=False, confidence_threshold=0.0)
    small, small_rgb = renderer.predict(large)
    renderer.max_draw_size = 0  # the old behaviour: everything at full resolution
    full, full_rgb = renderer.predict(large)
    small, full = small["instances"], full["instances"]
    assert small_rgb.shape == (1200, 1600, 3) and full_rgb.shape == (1500, 2000, 3)
    assert small.image_size == (1200, 1600) and small.pred_masks.shape[-2:] == (1200, 1600)
    assert len(full) > 0 and torch.equal(small.scores, full.scores)
    np.testing.assert_allclose(small.pred_boxes.tensor.numpy() / 0.8, full.pred_boxes.tensor.numpy(),
                               rtol=1e-4, atol=0.05)
    # Masks lie in their boxes and cover the full-resolution masks' area, scaled by 0.8 ** 2.
    rows, cols = torch.arange(1200)[None, :, None], torch.arange(1600)[None, None, :]
    x0, y0, x1, y1 = small.pred_boxes.tensor.T[:, :, None, None]
    in_columns = (cols >= x0.floor() - 1) & (cols <= x1.ceil() + 1)
    in_box = in_columns & (rows >= y0.floor() - 1) & (rows <= y1.ceil() + 1)
    assert not (small.pred_masks & ~in_box).any()
    area_small, area_full = float(small.pred_masks.sum()), float(full.pred_masks.sum())
    assert area_small / 0.64 == pytest.approx(area_full, rel=0.1)

    out = tmp_path / "large.jpg"
    cv2.imwrite(str(tmp_path / "in.jpg"), large)
    assert demo.main(demo_args(checkpoint, "--input", str(tmp_path / "in.jpg"), "--output", str(out))) == 0
    assert read_rgb(out).shape == (1200, 1600, 3)


def test_demo_needs_the_runtime_not_the_benchmark():
    # The demo is a client of expedite_vit.runtime, like the benchmark; it must not import the
    # benchmark package (which pulls in fvcore's FLOP counting and the evaluators' plumbing).
    import ast

    tree = ast.parse((REPO_ROOT / "demo" / "demo.py").read_text())
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m.startswith("expedite_vit.benchmark")], modules
    assert any(m.startswith("expedite_vit.runtime") for m in modules)
