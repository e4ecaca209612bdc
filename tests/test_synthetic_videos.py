"""Tests of the built-in expedite_videos dataset (generation, YouTube-VIS json validity, registration),
the YouTube-VIS loader's checks, and the evaluator on the dataset's own ground truth."""

import json
import os
import shutil

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from expedite_vit.data import (
    THING_CATEGORIES,
    YTVIS_2019_CATEGORY_NAMES,
    YTVIS_2021_CATEGORY_NAMES,
    ensure_expedite_videos,
    generate_expedite_videos,
    is_expedite_videos_complete,
    load_ytvis_json,
    register_expedite_videos,
)
from expedite_vit.data.synthetic_videos import COMPLETE_MARKER, DEFAULT_FRAME_SIZE
from expedite_vit.evaluation import YTVISEvaluator

TINY = {"num_train": 4, "num_val": 3}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return ensure_expedite_videos(str(tmp_path_factory.mktemp("expedite_videos")), seed=0, **TINY)


@pytest.fixture
def registered(dataset_root):
    yield register_expedite_videos(dataset_root)
    register_expedite_videos()  # point the names back at the default root for other tests


def _json(root, split):
    with open(os.path.join(root, f"{split}.json")) as f:
        return json.load(f)


def _all_files(root):
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def test_same_seed_same_bytes_other_seed_differs(dataset_root, tmp_path):
    again = generate_expedite_videos(str(tmp_path / "again"), seed=0, **TINY)
    assert _all_files(again) == _all_files(dataset_root)
    other = _all_files(generate_expedite_videos(str(tmp_path / "other"), seed=1, num_train=1, num_val=1))
    reference = _all_files(dataset_root)
    for name in ("train/JPEGImages/video_0001/00000.jpg", "val/JPEGImages/video_0001/00000.jpg", "val.json"):
        assert other[name] != reference[name]


def test_completion_marker_and_cache(dataset_root, tmp_path):
    assert is_expedite_videos_complete(dataset_root)
    with open(os.path.join(dataset_root, COMPLETE_MARKER)) as f:
        assert json.load(f)["seed"] == 0
    assert ensure_expedite_videos(dataset_root, seed=0, **TINY) == dataset_root  # cached: no regeneration
    with pytest.raises(FileExistsError, match="made with"):
        ensure_expedite_videos(dataset_root, seed=1, **TINY)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        generate_expedite_videos(str(tmp_path / "foreign"), **TINY)


def test_older_generator_version_is_replaced(tmp_path):
    wanted = _all_files(ensure_expedite_videos(str(tmp_path / "wanted"), seed=0, num_train=1, num_val=1))
    root = ensure_expedite_videos(str(tmp_path / "videos"), seed=0, num_train=2, num_val=1)
    marker = os.path.join(root, COMPLETE_MARKER)
    with open(marker) as f:
        spec = json.load(f)
    spec["generator_version"] -= 1
    with open(marker, "w") as f:
        json.dump(spec, f)
    # Other parameters too: an older generator's dataset is replaced even then, without force.
    assert ensure_expedite_videos(root, seed=0, num_train=1, num_val=1) == root
    assert _all_files(root) == wanted


def test_object_colours_carry_the_class_hue(dataset_root):
    """Every object's visible pixels have, at the median, its class's hue and no other class's."""
    hues = {category["id"]: index / len(THING_CATEGORIES) for index, category in enumerate(THING_CATEGORIES)}
    data = _json(dataset_root, "val")
    videos = {video["id"]: video for video in data["videos"]}
    checked = 0
    for annotation in data["annotations"]:
        video = videos[annotation["video_id"]]
        for name, rle in zip(video["file_names"], annotation["segmentations"]):
            if rle is None or mask_util.area(rle) < 40:
                continue
            frame = Image.open(os.path.join(dataset_root, "val", "JPEGImages", name)).convert("HSV")
            hue = np.asarray(frame)[mask_util.decode(rle).astype(bool), 0] / 256.0
            # The median of the hue's circular distance from each class hue: the class's is smallest.
            distance = {c: np.median(np.abs((hue - h + 0.5) % 1.0 - 0.5)) for c, h in hues.items()}
            assert min(distance, key=distance.get) == annotation["category_id"], (name, distance)
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("split", ["train", "val"])
def test_json_is_valid_youtube_vis(dataset_root, split):
    content = _json(dataset_root, split)
    assert [c["id"] for c in content["categories"]] == [c["id"] for c in THING_CATEGORIES]
    assert len(content["videos"]) == TINY[f"num_{split}"]
    assert "annotations" in content  # the val split is labelled too
    videos = {v["id"]: v for v in content["videos"]}
    track_ids = [a["id"] for a in content["annotations"]]
    assert min(track_ids) >= 1 and len(set(track_ids)) == len(track_ids)
    for annotation in content["annotations"]:
        video = videos[annotation["video_id"]]
        height, width, length = video["height"], video["width"], video["length"]
        assert length >= 5
        for field in ("segmentations", "bboxes", "areas"):
            assert len(annotation[field]) == length, field
        present = [s is not None for s in annotation["segmentations"]]
        assert any(present)
        frames = zip(annotation["segmentations"], annotation["bboxes"], annotation["areas"])
        for segmentation, bbox, area in frames:
            assert (segmentation is None) == (bbox is None) == (area is None)
            if segmentation is not None:
                assert segmentation["size"] == [height, width]
                assert area == mask_util.area(segmentation) >= 16
                assert bbox == mask_util.toBbox(segmentation).tolist()
    for video in content["videos"]:
        assert len(video["file_names"]) == video["length"]
        for name in video["file_names"]:
            with Image.open(os.path.join(dataset_root, split, "JPEGImages", name)) as frame:
                assert frame.size == (video["width"], video["height"]) == DEFAULT_FRAME_SIZE[::-1]
    if split == "val":
        assert {v["length"] for v in content["videos"]} == {6}


def test_every_video_has_a_track_that_leaves_and_comes_back(dataset_root):
    for split in ("train", "val"):
        content = _json(dataset_root, split)
        records = {r["video_id"]: r for r in load_ytvis_json(
            os.path.join(dataset_root, f"{split}.json"), os.path.join(dataset_root, split, "JPEGImages")
        )}
        for video in content["videos"]:
            returning = []
            for annotation in content["annotations"]:
                present = [t for t, s in enumerate(annotation["segmentations"]) if s is not None]
                if annotation["video_id"] == video["id"] and present[-1] - present[0] + 1 > len(present):
                    returning.append((annotation["id"], present))
            assert returning, f"{split} video {video['id']}"
            # Through the loader: the same track id before and after the frames it is missing from.
            frames = records[video["id"]]["annotations"]
            for track_id, present in returning:
                ids_per_frame = [{obj["id"] for obj in frame} for frame in frames]
                assert [t for t, ids in enumerate(ids_per_frame) if track_id in ids] == present


def test_every_video_has_two_tracks_of_one_class(dataset_root):
    # Two objects of one class cross paths: telling them apart takes tracking.
    for split in ("train", "val"):
        content = _json(dataset_root, split)
        for video in content["videos"]:
            categories = [a["category_id"] for a in content["annotations"] if a["video_id"] == video["id"]]
            assert len(categories) > len(set(categories)), f"{split} video {video['id']}"


def test_loader_gives_per_frame_objects(dataset_root):
    records = load_ytvis_json(
        os.path.join(dataset_root, "val.json"), os.path.join(dataset_root, "val", "JPEGImages")
    )
    content = _json(dataset_root, "val")
    assert [r["video_id"] for r in records] == [v["id"] for v in content["videos"]]
    for record in records:
        assert record["length"] == len(record["file_names"]) == len(record["annotations"])
        assert all(os.path.isfile(name) for name in record["file_names"])
        tracks = [a for a in content["annotations"] if a["video_id"] == record["video_id"]]
        for t, objects in enumerate(record["annotations"]):
            assert len(objects) == sum(a["segmentations"][t] is not None for a in tracks)
            for obj in objects:
                assert 0 <= obj["category_id"] < len(THING_CATEGORIES)  # contiguous
                assert obj["segmentation"]["size"] == [record["height"], record["width"]]


def _broken_copy(dataset_root, tmp_path, edit):
    """A copy of the val split whose json went through `edit` (which may also touch the frames)."""
    root = tmp_path / "broken"
    shutil.copytree(os.path.join(dataset_root, "val"), root / "val")
    content = _json(dataset_root, "val")
    edit(content, root / "val" / "JPEGImages")
    json_file = root / "val.json"
    json_file.write_text(json.dumps(content))
    return str(json_file), str(root / "val" / "JPEGImages")


def _shrink_frame(content, image_root):
    name = content["videos"][1]["file_names"][2]
    with Image.open(image_root / name) as frame:
        frame.resize((100, 80)).save(image_root / name)


def _remove_frame(content, image_root):
    os.remove(image_root / content["videos"][0]["file_names"][3])


def _zero_track_id(content, image_root):
    content["annotations"][0]["id"] = 0


def _unknown_category(content, image_root):
    content["annotations"][0]["category_id"] = 99


def _short_segmentations(content, image_root):
    content["annotations"][0]["segmentations"].pop()


@pytest.mark.parametrize("edit, error, message", [
    (_shrink_frame, ValueError,
     r"video 2: frame 2 \(.*00002.jpg\) is 80x100, the video's 'height'x'width' is 160x224"),
    (_remove_frame, FileNotFoundError, r"video 1: frame 3 \('file_names'\[3\]\) .*00003.jpg is missing"),
    (_zero_track_id, ValueError, r"video 1, annotation 0: track 'id' must be an integer >= 1"),
    (_unknown_category, ValueError,
     r"video 1, annotation 1: 'category_id' 99 is not in the json's categories"),
    (_short_segmentations, ValueError,
     r"video 1, annotation 1: 'segmentations' has 5 entries, the video's 'length' is 6"),
])
def test_loader_errors_name_video_and_field(dataset_root, tmp_path, edit, error, message):
    json_file, image_root = _broken_copy(dataset_root, tmp_path, edit)
    with pytest.raises(error, match=message):
        load_ytvis_json(json_file, image_root)


def test_registration(registered, tmp_path):
    assert registered == ["expedite_videos_train", "expedite_videos_val"]
    metadata = MetadataCatalog.get("expedite_videos_val")
    assert metadata.evaluator_type == "ytvis"
    assert metadata.thing_classes == [c["name"] for c in THING_CATEGORIES]
    assert len(DatasetCatalog.get("expedite_videos_train")) == TINY["num_train"]

    register_expedite_videos(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="ensure_expedite_videos"):
        DatasetCatalog.get("expedite_videos_val")


@pytest.mark.parametrize(
    "year, names", [("2019", YTVIS_2019_CATEGORY_NAMES), ("2021", YTVIS_2021_CATEGORY_NAMES)]
)
def test_youtube_vis_datasets_are_registered(year, names):
    assert len(names) == len(set(names)) == 40
    for split, folder in (("train", "train"), ("val", "valid")):
        metadata = MetadataCatalog.get(f"ytvis_{year}_{split}")
        assert metadata.evaluator_type == "ytvis"
        assert metadata.thing_classes == list(names)
        assert metadata.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(40)}
        assert metadata.json_file.endswith(os.path.join(f"ytvis_{year}", f"{folder}.json"))
        assert metadata.image_root.endswith(os.path.join(f"ytvis_{year}", folder, "JPEGImages"))


def test_ground_truth_as_predictions_scores_100(registered):
    evaluator = YTVISEvaluator("expedite_videos_val", distributed=False)
    evaluator.reset()
    for record in DatasetCatalog.get("expedite_videos_val"):
        # Rebuild every track's (T, H, W) mask tube from the loader's per-frame objects.
        tubes, labels = {}, {}
        for t, objects in enumerate(record["annotations"]):
            for obj in objects:
                shape = (record["length"], record["height"], record["width"])
                tube = tubes.setdefault(obj["id"], np.zeros(shape, dtype=bool))
                tube[t] = mask_util.decode(obj["segmentation"]).astype(bool)
                labels[obj["id"]] = obj["category_id"]
        inputs = [{key: record[key] for key in ("video_id", "length", "height", "width")}]
        output = {
            "image_size": (record["height"], record["width"]),
            "pred_scores": [1.0] * len(tubes),
            "pred_labels": [labels[track] for track in tubes],
            "pred_masks": [torch.from_numpy(tube) for tube in tubes.values()],
        }
        evaluator.process(inputs, output)
    metrics = evaluator.evaluate()["segm"]
    for key in ("AP", "AP50", "AP75", "AR10"):
        assert metrics[key] == pytest.approx(100.0), key
