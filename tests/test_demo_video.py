"""demo/demo.py on a video model: the tracks of the tiny Mask2Former-VIS (random weights) drawn on
a short clip, one colour per track, baseline | expedited; and expedite_vit.video_visualization."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from expedite_vit.video_visualization import draw_video_tracks, matched_track_colours, select_tracks, track_colours
from conftest import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "demo" / "demo.py"
VIDEO_CONFIG = REPO_ROOT / "configs" / "Mask2Former-VIS" / "builtin" / "video_maskformer2_swin_tiny_videos.py"
IMAGE_CONFIG = REPO_ROOT / "tests" / "configs_tiny" / "tiny_vitdet_mask_rcnn.py"
HEIGHT, WIDTH, NUM_FRAMES = 64, 96, 4
RANDOM_WEIGHTS = ["train.init_checkpoint="]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    return load_script(DEMO)


def clip_frames():
    """NUM_FRAMES BGR frames: a red square moving right and a blue disc on a grey ground."""
    frames = []
    for t in range(NUM_FRAMES):
        frame = np.full((HEIGHT, WIDTH, 3), 110, np.uint8)
        cv2.rectangle(frame, (8 + 6 * t, 16), (32 + 6 * t, 40), (40, 40, 220), thickness=-1)
        cv2.circle(frame, (70, 30 + 2 * t), 12, (200, 80, 30), thickness=-1)
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """The clip as an MJPG .avi, written as the demo writes videos (OpenCV)."""
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (WIDTH, HEIGHT))
    for frame in clip_frames():
        writer.write(frame)
    writer.release()
    return path


def video_args(*args):
    # Random weights; threshold 0 so that every track is drawn; 3 tracks keep it fast.
    return ["--config-file", str(VIDEO_CONFIG), "--device", "cpu", "--confidence-threshold", "0", *args,
            *RANDOM_WEIGHTS, "model.test_topk_per_video=3"]


def read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def test_tracks_of_baseline_and_expedited_side_by_side(demo, clip_file, tmp_path):
    out = tmp_path / "tracks.avi"
    torch.manual_seed(0)
    assert demo.main(video_args("--compare", "--video-input", str(clip_file), "--output", str(out))) == 0
    drawn, original = read_video(out), clip_frames()
    assert len(drawn) == NUM_FRAMES
    assert all(frame.shape == (HEIGHT, 2 * WIDTH, 3) for frame in drawn)
    for frame, source in zip(drawn, original):
        for panel in (frame[:, :WIDTH], frame[:, WIDTH:]):  # tracks were drawn on both
            assert np.abs(panel.astype(np.float32) - source).mean() > 5.0


def test_frame_images_are_one_video_and_outputs_are_kept(demo, tmp_path, capsys):
    folder = tmp_path / "video_0003"
    folder.mkdir()
    for t, frame in enumerate(clip_frames()):
        cv2.imwrite(str(folder / f"{t:05d}.png"), frame)
    out = tmp_path / "out"
    torch.manual_seed(0)
    assert demo.main(video_args("--input", str(folder / "*.png"), "--output", str(out))) == 0
    written = out / "video_0003.mp4"
    drawn = read_video(written)
    assert len(drawn) == NUM_FRAMES and drawn[0].shape == (HEIGHT, WIDTH, 3)

    before = written.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        demo.main(video_args("--input", str(folder / "*.png"), "--output", str(out)))
    assert exit_info.value.code == 2
    assert f"{str(written)!r} exists; pass --overwrite" in capsys.readouterr().err
    assert written.read_bytes() == before


@pytest.mark.parametrize("config", [VIDEO_CONFIG, IMAGE_CONFIG], ids=["tracks", "frame by frame"])
def test_unreadable_or_missing_video_is_one_line_exit_2(demo, tmp_path, capsys, config):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    cases = [(broken, f"cannot open video {str(broken)!r}"),
             (tmp_path / "none.mp4", f"video file {str(tmp_path / 'none.mp4')!r} does not exist")]
    for video, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            demo.main(["--config-file", str(config), "--device", "cpu", "--video-input", str(video),
                       "--output", str(tmp_path / "out.mp4"), *RANDOM_WEIGHTS])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("error:") == 1
    assert not (tmp_path / "out.mp4").exists()


def test_frames_of_different_sizes_and_other_tasks_are_refused(demo, tmp_path, capsys):
    small, large = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(small), clip_frames()[0])
    cv2.imwrite(str(large), cv2.resize(clip_frames()[1], (2 * WIDTH, 2 * HEIGHT)))
    for args, message in [
        (["--input", str(small), str(large)], f"frame 1 ({str(large)!r}) is 192x128 pixels, frame 0 96x64"),
        (["--input", str(small), "--task", "sem_seg"], "a video model draws tracks (instances), not 'sem_seg'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            demo.main(video_args(*args, "--output", str(tmp_path / "out.mp4")))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_renderers_refuse_the_other_kind_of_model(demo):
    from expedite_vit.runtime.cli import load_checked_config

    video_cfg = load_checked_config(str(VIDEO_CONFIG), RANDOM_WEIGHTS)
    image_cfg = load_checked_config(str(IMAGE_CONFIG), RANDOM_WEIGHTS)
    assert demo.is_video_model(video_cfg) and not demo.is_video_model(image_cfg)
    with pytest.raises(demo.ModelKindError, match="GeneralizedRCNN is an image model: .* not tracks"):
        demo.TrackRenderer(image_cfg, "cpu", compare=False, confidence_threshold=0.5)
    with pytest.raises(demo.ModelKindError, match="VideoMaskFormer is a video model"):
        demo.DemoRenderer(video_cfg, "cpu", compare=False, confidence_threshold=0.5)


# ---- Drawing: one colour per track --------------------------------------------------------------


def test_track_colours_are_fixed_by_rank_and_distinct():
    colours = track_colours(5)
    assert len({tuple(np.round(c, 6)) for c in colours}) == 5
    for a, b in zip(track_colours(3), colours):  # a track's colour does not depend on the others
        np.testing.assert_array_equal(a, b)


def test_each_track_keeps_its_colour_on_every_frame_where_it_appears():
    from detectron2.data import MetadataCatalog

    metadata = MetadataCatalog.get("__test_demo_video_tracks")
    if not metadata.get("thing_classes"):
        metadata.set(thing_classes=["disc", "ring"])
    grey, frames_n, size = 128, 3, (96, 128)
    frames = [np.full((*size, 3), grey, np.uint8) for _ in range(frames_n)]
    masks = torch.zeros(2, frames_n, *size, dtype=torch.bool)
    for t in range(frames_n):
        masks[0, t, 10:50, 10 + 8 * t : 50 + 8 * t] = True  # moves right
    masks[1, 0, 50:90, 80:120] = True  # absent from frame 1
    masks[1, 2, 50:90, 80:120] = True
    prediction = {"pred_scores": [0.4, 0.9, 0.1], "pred_labels": [0, 1, 0],
                  "pred_masks": [masks[0], masks[1], masks[0]]}
    tracks = select_tracks(prediction, 0.3)
    assert tracks["scores"] == [0.9, 0.4] and tracks["labels"] == [1, 0]  # best first, 0.1 left out

    drawn = list(draw_video_tracks(frames, tracks, metadata))
    assert len(drawn) == frames_n and all(d.shape == (*size, 3) for d in drawn)
    # A patch near each mask's top-left corner, inside its edge and away from the caption in its middle.
    colour_0, colour_1 = track_colours(2)  # ring 90% is track 0, disc 40% track 1
    expected = {0: 0.5 * grey + 0.5 * 255 * colour_0, 1: 0.5 * grey + 0.5 * 255 * colour_1}
    for t in range(frames_n):
        disc = drawn[t][14:20, 14 + 8 * t : 20 + 8 * t].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(disc, expected[1], atol=3)
        ring = drawn[t][54:60, 84:90].reshape(-1, 3).mean(0)
        if t == 1:
            np.testing.assert_array_equal(ring, [grey] * 3)  # not in this frame: nothing drawn
        else:
            np.testing.assert_allclose(ring, expected[0], atol=3)
    assert np.abs(expected[0] - expected[1]).max() > 20  # two tracks, two colours


def test_second_panel_tracks_take_the_colour_of_the_first_panels_track_they_overlap():
    """baseline | expedited: one object, one colour in both, whatever its rank in each."""
    masks = np.zeros((3, 2, 20, 20), dtype=bool)
    masks[0, :, :8, :8] = masks[1, :, 10:, 10:] = masks[2, :, :8, 12:] = True
    reference = [masks[0], masks[1]]
    reference_colours = track_colours(2)
    shifted = np.roll(masks[1], 1, axis=-1)  # the second object, its mask a little off (IoU 0.8)
    colours = matched_track_colours(reference, reference_colours, [masks[2], shifted, masks[0]])
    np.testing.assert_array_equal(colours[1], reference_colours[1])
    np.testing.assert_array_equal(colours[2], reference_colours[0])
    # A track no reference track overlaps gets a colour no reference track has.
    assert all(not np.array_equal(colours[0], c) for c in reference_colours)
    # Below min_iou, no colour is shared.
    apart = matched_track_colours(reference, reference_colours, [shifted], min_iou=0.9)
    assert all(not np.array_equal(apart[0], c) for c in reference_colours)
