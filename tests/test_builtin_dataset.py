"""Tests of the built-in expedite_scenes dataset: generation, annotation consistency, registration."""

import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from expedite_vit.data import (
    CATEGORIES,
    THING_CATEGORIES,
    ensure_expedite_scenes,
    expedite_scenes_dataset_names,
    generate_expedite_scenes,
    is_expedite_scenes_complete,
    register_expedite_scenes,
)
from expedite_vit.data.synthetic_scenes import COMPLETE_MARKER, default_expedite_scenes_root

TINY = {"num_train": 6, "num_val": 3}
SPLIT_SIZES = {"train": TINY["num_train"], "val": TINY["num_val"]}
CONTIGUOUS_ID = {c["id"]: i for i, c in enumerate(CATEGORIES)}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return ensure_expedite_scenes(str(tmp_path_factory.mktemp("expedite_scenes")), seed=0, **TINY)


@pytest.fixture
def registered(dataset_root):
    yield register_expedite_scenes(dataset_root)
    register_expedite_scenes()  # point the names back at the default root for other tests


def _all_files(root):
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def _panoptic(root, split):
    with open(os.path.join(root, "annotations", f"panoptic_{split}.json")) as f:
        return json.load(f)


def _read_png(path):
    return np.asarray(Image.open(path))


def test_same_seed_same_bytes_other_seed_differs(dataset_root, tmp_path):
    again = generate_expedite_scenes(str(tmp_path / "again"), seed=0, **TINY)
    assert _all_files(again) == _all_files(dataset_root)

    other = _all_files(generate_expedite_scenes(str(tmp_path / "other"), seed=1, num_train=2, num_val=1))
    reference = _all_files(dataset_root)
    for name in ("train/000001.jpg", "val/000001.jpg", "panoptic_train/000001.png"):
        assert other[name] != reference[name]


def test_layout_and_completion_marker(dataset_root):
    for split, count in SPLIT_SIZES.items():
        for folder, ext in ((split, ".jpg"), (f"panoptic_{split}", ".png"), (f"semantic_{split}", ".png")):
            names = sorted(os.listdir(os.path.join(dataset_root, folder)))
            assert names == [f"{i:06d}{ext}" for i in range(1, count + 1)]
            if ext == ".jpg":
                image = Image.open(os.path.join(dataset_root, folder, names[0]))
                assert image.mode == "RGB" and image.size == (256, 256)
    with open(os.path.join(dataset_root, COMPLETE_MARKER)) as f:
        assert json.load(f)["seed"] == 0


@pytest.mark.parametrize("split", ["train", "val"])
def test_instance_masks_match_recorded_area_and_box(dataset_root, split):
    coco = COCO(os.path.join(dataset_root, "annotations", f"instances_{split}.json"))
    assert sorted(coco.getCatIds()) == [c["id"] for c in THING_CATEGORIES]
    assert len(coco.getImgIds()) == SPLIT_SIZES[split]
    annotations = coco.loadAnns(coco.getAnnIds())
    assert len(annotations) >= SPLIT_SIZES[split]  # at least one object per image on average
    for annotation in annotations:
        mask = coco.annToMask(annotation).astype(bool)
        x, y, w, h = annotation["bbox"]
        assert annotation["iscrowd"] == 0
        assert mask.sum() == annotation["area"] > 0
        assert mask[y:y + h, x:x + w].sum() == annotation["area"]  # inside the box ...
        assert mask[y, x:x + w].any() and mask[y + h - 1, x:x + w].any()  # ... which is tight
        assert mask[y:y + h, x].any() and mask[y:y + h, x + w - 1].any()


@pytest.mark.parametrize("split", ["train", "val"])
def test_panoptic_matches_instances_and_semantic(dataset_root, split):
    coco = COCO(os.path.join(dataset_root, "annotations", f"instances_{split}.json"))
    panoptic = _panoptic(dataset_root, split)
    assert panoptic["categories"] == CATEGORIES
    assert len(panoptic["annotations"]) == SPLIT_SIZES[split]
    for entry in panoptic["annotations"]:
        segment_ids = rgb2id(_read_png(os.path.join(dataset_root, f"panoptic_{split}", entry["file_name"])))
        labels = _read_png(os.path.join(dataset_root, f"semantic_{split}", entry["file_name"]))
        segments = entry["segments_info"]
        assert set(np.unique(segment_ids)) - {0} == {s["id"] for s in segments}
        assert np.all(labels[segment_ids == 0] == 255)  # VOID is ignored in semantic labels

        thing_masks = []
        for segment in segments:
            mask = segment_ids == segment["id"]
            x, y, w, h = segment["bbox"]
            assert mask.sum() == segment["area"] == mask[y:y + h, x:x + w].sum()
            assert np.all(labels[mask] == CONTIGUOUS_ID[segment["category_id"]])
            if segment["category_id"] in coco.cats:
                thing_masks.append((segment["category_id"], mask))

        instances = coco.loadAnns(coco.getAnnIds(imgIds=entry["image_id"]))
        assert len(instances) == len(thing_masks)
        for annotation, (category_id, mask) in zip(instances, thing_masks):
            assert annotation["category_id"] == category_id
            assert np.array_equal(coco.annToMask(annotation).astype(bool), mask)


def test_ground_truth_scores_perfectly_with_coco_tools(dataset_root, tmp_path):
    """The files must be consumable by COCOeval and panopticapi, the tools detectron2's evaluators use."""
    from panopticapi.evaluation import pq_compute

    coco = COCO(os.path.join(dataset_root, "annotations", "instances_val.json"))
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
         "score": 1.0}
        for a in coco.loadAnns(coco.getAnnIds())
    ]
    evaluation = COCOeval(coco, coco.loadRes(results), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)

    json_file = os.path.join(dataset_root, "annotations", "panoptic_val.json")
    folder = os.path.join(dataset_root, "panoptic_val")
    assert pq_compute(json_file, json_file, folder, folder)["All"]["pq"] == pytest.approx(1.0)


def test_registered_datasets(registered, dataset_root):
    assert len(registered) == 6
    for split, count in SPLIT_SIZES.items():
        instances_name, panoptic_name, sem_seg_name = expedite_scenes_dataset_names(split)

        instances = DatasetCatalog.get(instances_name)
        assert len(instances) == count
        for record in instances:
            assert os.path.isfile(record["file_name"])
            assert (record["height"], record["width"]) == (256, 256)
            for annotation in record["annotations"]:
                assert 0 <= annotation["category_id"] < len(THING_CATEGORIES)
                assert mask_util.area(annotation["segmentation"]) > 0
        assert MetadataCatalog.get(instances_name).evaluator_type == "coco"

        panoptic = DatasetCatalog.get(panoptic_name)
        assert len(panoptic) == count
        metadata = MetadataCatalog.get(panoptic_name)
        assert metadata.evaluator_type == "coco_panoptic_seg"
        assert metadata.stuff_classes == [c["name"] for c in CATEGORIES]
        for record in panoptic:
            assert os.path.isfile(record["file_name"]) and os.path.isfile(record["pan_seg_file_name"])
            for segment in record["segments_info"]:
                assert segment["isthing"] == (segment["category_id"] < len(THING_CATEGORIES))

        sem_seg = DatasetCatalog.get(sem_seg_name)
        assert len(sem_seg) == count
        assert all(os.path.isfile(r["sem_seg_file_name"]) for r in sem_seg)
        metadata = MetadataCatalog.get(sem_seg_name)
        assert (metadata.evaluator_type, metadata.ignore_label) == ("sem_seg", 255)
        assert len(metadata.stuff_classes) == len(CATEGORIES)

    assert register_expedite_scenes(dataset_root) == registered  # registering again is fine


def test_missing_or_half_written_dataset_is_reported(tmp_path):
    missing = str(tmp_path / "missing")
    register_expedite_scenes(missing)
    try:
        with pytest.raises(FileNotFoundError, match="make_builtin_dataset.py"):
            DatasetCatalog.get("expedite_scenes_val")
        with pytest.raises(FileNotFoundError, match="ensure_expedite_scenes"):
            DatasetCatalog.get("expedite_scenes_train_panoptic")
    finally:
        register_expedite_scenes()
    assert not os.path.exists(missing)  # loading never generates data


def test_ensure_regenerates_half_written_and_guards_other_datasets(tmp_path):
    root = str(tmp_path / "scenes")
    ensure_expedite_scenes(root, seed=3, num_train=1, num_val=1)
    os.remove(os.path.join(root, COMPLETE_MARKER))  # as if interrupted before the end
    os.remove(os.path.join(root, "val", "000001.jpg"))
    assert not is_expedite_scenes_complete(root)
    ensure_expedite_scenes(root, seed=3, num_train=1, num_val=1)
    assert is_expedite_scenes_complete(root) and os.path.isfile(os.path.join(root, "val", "000001.jpg"))

    with pytest.raises(FileExistsError, match="force"):
        ensure_expedite_scenes(root, seed=4, num_train=1, num_val=1)
    ensure_expedite_scenes(root, seed=4, num_train=1, num_val=1, force=True)

    foreign = tmp_path / "not_a_dataset"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        ensure_expedite_scenes(str(foreign), num_train=1, num_val=1)
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("bad", [{"num_train": 0}, {"seed": -1}, {"num_val": 1.5}])
def test_bad_parameters_are_rejected(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ensure_expedite_scenes(str(tmp_path), **{"num_train": 1, "num_val": 1, **bad})


def test_default_root_follows_environment(monkeypatch):
    monkeypatch.setenv("EXPEDITE_DATASETS", "/data/scenes")
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/d2")
    assert default_expedite_scenes_root() == "/data/scenes"
    monkeypatch.delenv("EXPEDITE_DATASETS")
    assert default_expedite_scenes_root() == os.path.join("/data/d2", "expedite_scenes")
    monkeypatch.delenv("DETECTRON2_DATASETS")
    cache = os.path.join(".cache", "expedite_vit", "datasets", "expedite_scenes")
    assert default_expedite_scenes_root().endswith(cache)
