"""
YouTube-VIS format video datasets: the json loader and the registered datasets.

Registered on import (nothing is read until a dataset is loaded):

* ``ytvis_2019_{train,val}`` and ``ytvis_2021_{train,val}`` under ``$DETECTRON2_DATASETS`` (default
  ``datasets``), laid out as Mask2Former-VIS expects: ``ytvis_2019/train/JPEGImages`` with
  ``ytvis_2019/train.json``, ``ytvis_2019/valid/JPEGImages`` with ``ytvis_2019/valid.json``, the same
  under ``ytvis_2021/``. The valid jsons have no annotations: evaluating on them only writes a
  results file for the evaluation server.
* ``expedite_videos_{train,val}``: the project's synthetic videos (:mod:`.synthetic_videos`), both
  splits labelled, at :func:`default_expedite_videos_root`.

All have ``evaluator_type="ytvis"`` (:class:`expedite_vit.evaluation.YTVISEvaluator`).
"""

import json
import logging
import os

import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.colormap import colormap
from detectron2.utils.file_io import PathManager
from fvcore.common.timer import Timer
from PIL import Image

from .availability import DatasetMissingError
from .synthetic_scenes import THING_CATEGORIES
from .synthetic_videos import SPLITS, default_expedite_videos_root, is_expedite_videos_complete

__all__ = [
    "YTVIS_2019_CATEGORY_NAMES",
    "YTVIS_2021_CATEGORY_NAMES",
    "expedite_videos_metadata",
    "load_ytvis_json",
    "register_all_ytvis",
    "register_expedite_videos",
    "register_ytvis_instances",
    "ytvis_metadata",
]

logger = logging.getLogger(__name__)

# Category names in id order (ids 1..40). The two years number their categories differently.
YTVIS_2019_CATEGORY_NAMES = (
    "person", "giant_panda", "lizard", "parrot", "skateboard", "sedan", "ape", "dog", "snake", "monkey",
    "hand", "rabbit", "duck", "cat", "cow", "fish", "train", "horse", "turtle", "bear",
    "motorbike", "giraffe", "leopard", "fox", "deer", "owl", "surfboard", "airplane", "truck", "zebra",
    "tiger", "elephant", "snowboard", "boat", "shark", "mouse", "frog", "eagle", "earless_seal",
    "tennis_racket",
)
YTVIS_2021_CATEGORY_NAMES = (
    "airplane", "bear", "bird", "boat", "car", "cat", "cow", "deer", "dog", "duck",
    "earless_seal", "elephant", "fish", "flying_disc", "fox", "frog", "giant_panda", "giraffe", "horse",
    "leopard", "lizard", "monkey", "motorbike", "mouse", "parrot", "person", "rabbit", "shark",
    "skateboard", "snake", "snowboard", "squirrel", "surfboard", "tennis_racket", "tiger", "train",
    "truck", "turtle", "whale", "zebra",
)

# name -> (category names, image root, json file), relative to the datasets root.
_PREDEFINED_YTVIS = {
    "ytvis_2019_train": (YTVIS_2019_CATEGORY_NAMES, "ytvis_2019/train/JPEGImages", "ytvis_2019/train.json"),
    "ytvis_2019_val": (YTVIS_2019_CATEGORY_NAMES, "ytvis_2019/valid/JPEGImages", "ytvis_2019/valid.json"),
    "ytvis_2021_train": (YTVIS_2021_CATEGORY_NAMES, "ytvis_2021/train/JPEGImages", "ytvis_2021/train.json"),
    "ytvis_2021_val": (YTVIS_2021_CATEGORY_NAMES, "ytvis_2021/valid/JPEGImages", "ytvis_2021/valid.json"),
}


def ytvis_metadata(category_names):
    """thing_classes / thing_colors / thing_dataset_id_to_contiguous_id for categories with ids
    1..K given in id order."""
    colors = colormap(rgb=True, maximum=255)
    return {
        "thing_classes": list(category_names),
        "thing_colors": [[int(c) for c in colors[i % len(colors)]] for i in range(len(category_names))],
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(category_names))},
    }


def expedite_videos_metadata():
    """Metadata of the expedite_videos datasets: the six thing classes of expedite_scenes."""
    return {
        "thing_classes": [c["name"] for c in THING_CATEGORIES],
        "thing_colors": [c["color"] for c in THING_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(THING_CATEGORIES)},
    }


def load_ytvis_json(json_file, image_root, dataset_name=None):
    """
    Load a YouTube-VIS format json into detectron2 dataset dicts, one per video, checking every
    frame file on the way.

    Args:
        json_file: the YouTube-VIS json ("videos", "categories" and, in labelled splits,
            "annotations": one per object track, with per-frame "segmentations" and "bboxes").
        image_root: the folder the videos' "file_names" are relative to.
        dataset_name: if given, its metadata gets ``thing_classes`` and
            ``thing_dataset_id_to_contiguous_id`` from the json's categories (sorted by id); a dataset
            registered with other classes is an error.

    Returns:
        list[dict]: per video ``file_names`` (T paths), ``height``, ``width``, ``length``, ``video_id``
        and, if the json has annotations, ``annotations``: T lists, one per frame, of the objects with
        a mask in that frame: {"id" (track id), "category_id" (contiguous), "iscrowd", "bbox",
        "bbox_mode" (XYWH_ABS), "segmentation" (compressed RLE or polygons)}.
    """
    timer = Timer()
    with PathManager.open(json_file) as f:
        dataset = json.load(f)
    categories = sorted(dataset["categories"], key=lambda c: c["id"])
    contiguous_id = {c["id"]: i for i, c in enumerate(categories)}
    if dataset_name is not None:
        _set_category_metadata(dataset_name, categories, contiguous_id)

    labelled = "annotations" in dataset
    tracks_of = {video["id"]: [] for video in dataset["videos"]}
    for annotation in dataset.get("annotations", []):
        if annotation["video_id"] not in tracks_of:
            raise ValueError(
                f"{json_file}: annotation {annotation['id']}: 'video_id' {annotation['video_id']} is not a "
                f"video of the json"
            )
        tracks_of[annotation["video_id"]].append(annotation)

    records = []
    for video in dataset["videos"]:
        record = _video_record(video, image_root, json_file)
        if labelled:
            tracks = tracks_of[video["id"]]
            record["annotations"] = _frame_annotations(video, tracks, contiguous_id, json_file)
        records.append(record)
    logger.info(
        f"Loaded {len(records)} videos in YouTube-VIS format from {json_file} in {timer.seconds():.2f} s"
    )
    return records


def _set_category_metadata(dataset_name, categories, contiguous_id):
    metadata = MetadataCatalog.get(dataset_name)
    names = [c["name"] for c in categories]
    registered = metadata.get("thing_classes")
    if registered is not None and list(registered) != names:
        raise ValueError(
            f"the json of dataset {dataset_name!r} has categories {names}, but the dataset is "
            f"registered with thing_classes {list(registered)}"
        )
    if registered is None:
        metadata.set(thing_classes=names)
    if metadata.get("thing_dataset_id_to_contiguous_id") is None:
        metadata.set(thing_dataset_id_to_contiguous_id=contiguous_id)


def _video_record(video, image_root, json_file):
    """The dataset dict of one video without annotations; checks every frame file exists and has
    the video's size."""
    video_id, length = video["id"], video["length"]
    height, width = video["height"], video["width"]
    if len(video["file_names"]) != length:
        raise ValueError(
            f"{json_file}: video {video_id}: 'file_names' has {len(video['file_names'])} entries, "
            f"'length' is {length}"
        )
    file_names = [os.path.join(image_root, name) for name in video["file_names"]]
    for t, path in enumerate(file_names):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{json_file}: video {video_id}: frame {t} ('file_names'[{t}]) {path} is missing"
            )
        with Image.open(path) as image:  # reads the header only
            frame_width, frame_height = image.size
        if (frame_height, frame_width) != (height, width):
            raise ValueError(
                f"{json_file}: video {video_id}: frame {t} ({path}) is {frame_height}x{frame_width}, the "
                f"video's 'height'x'width' is {height}x{width}; all frames of a video must share it"
            )
    return {
        "file_names": file_names, "height": height, "width": width, "length": length, "video_id": video_id
    }


def _frame_annotations(video, tracks, contiguous_id, json_file):
    """Per frame, the objects of `tracks` (the video's annotations) that have a mask in it."""
    video_id, length = video["id"], video["length"]
    frames = [[] for _ in range(length)]
    for track in tracks:
        where = f"{json_file}: video {video_id}, annotation {track.get('id')}"
        if not isinstance(track.get("id"), int) or track["id"] < 1:
            raise ValueError(
                f"{where}: track 'id' must be an integer >= 1 (0 means 'unmatched' to the evaluator)"
            )
        if track["category_id"] not in contiguous_id:
            raise ValueError(
                f"{where}: 'category_id' {track['category_id']} is not in the json's categories "
                f"{sorted(contiguous_id)}"
            )
        for field in ("segmentations", "bboxes"):
            if len(track[field]) != length:
                raise ValueError(
                    f"{where}: '{field}' has {len(track[field])} entries, the video's 'length' is {length}"
                )
        for t, (segmentation, bbox) in enumerate(zip(track["segmentations"], track["bboxes"])):
            # Frames where the object is absent are None (or, in some jsons, empty).
            if not segmentation or not bbox:
                continue
            segmentation = _frame_segmentation(segmentation, video, f"{where}: 'segmentations'[{t}]")
            if segmentation is None:
                continue
            frames[t].append({
                "id": track["id"],
                "category_id": contiguous_id[track["category_id"]],
                "iscrowd": track.get("iscrowd", 0),
                "bbox": bbox,
                "bbox_mode": BoxMode.XYWH_ABS,
                "segmentation": segmentation,
            })
    return frames


def _frame_segmentation(segmentation, video, where):
    """A frame's mask as compressed RLE (from compressed or uncompressed RLE) or valid polygons;
    None if no valid polygon is left."""
    if isinstance(segmentation, dict):
        if isinstance(segmentation["counts"], list):  # uncompressed RLE, as in the official jsons
            segmentation = mask_util.frPyObjects(segmentation, *segmentation["size"])
        if list(segmentation["size"]) != [video["height"], video["width"]]:
            raise ValueError(
                f"{where} is a {segmentation['size'][0]}x{segmentation['size'][1]} mask, the video is "
                f"{video['height']}x{video['width']}"
            )
        return segmentation
    # As detectron2's COCO loader: drop polygons with fewer than 3 points.
    polygons = [p for p in segmentation if len(p) % 2 == 0 and len(p) >= 6]
    return polygons or None


def register_ytvis_instances(name, metadata, json_file, image_root):
    """
    Register a YouTube-VIS format dataset: `name` loads with :func:`load_ytvis_json`, and its metadata
    gets `metadata` plus ``json_file``, ``image_root`` and ``evaluator_type="ytvis"``.
    """
    DatasetCatalog.register(name, lambda: load_ytvis_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="ytvis", **metadata
    )


def register_all_ytvis(root=None):
    """Register ytvis_2019_{train,val} and ytvis_2021_{train,val} under `root` (default
    ``$DETECTRON2_DATASETS``, else ``datasets``)."""
    root = os.path.expanduser(root if root is not None else os.getenv("DETECTRON2_DATASETS", "datasets"))
    for name, (category_names, image_root, json_file) in _PREDEFINED_YTVIS.items():
        _remove(name)
        register_ytvis_instances(
            name, ytvis_metadata(category_names),
            os.path.join(root, json_file), os.path.join(root, image_root),
        )
    return list(_PREDEFINED_YTVIS)


def register_expedite_videos(root=None):
    """
    Register expedite_videos_{train,val} reading from `root` (default: :func:`default_expedite_videos_root`);
    calling it again points the names at the new root. Loading a dataset that was not generated raises
    FileNotFoundError saying how to generate it.

    Returns:
        list[str]: the registered names.
    """
    root = default_expedite_videos_root() if root is None else os.path.expanduser(root)
    names = []
    for split in SPLITS:
        name = f"expedite_videos_{split}"
        json_file = os.path.join(root, f"{split}.json")
        image_root = os.path.join(root, split, "JPEGImages")
        _remove(name)
        register_ytvis_instances(
            name, {**expedite_videos_metadata(), "missing_hint": _generation_hint(root)}, json_file, image_root
        )
        # Check first that the dataset was generated: the loader would fail on the missing json with
        # no hint of how to create it.
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, _checked_loader(root, json_file, image_root, name))
        names.append(name)
    return names


def _checked_loader(root, json_file, image_root, name):
    def load():
        _require_generated(root)
        return load_ytvis_json(json_file, image_root, name)

    return load


def _remove(name):
    """Forget an earlier registration of `name` so it can be registered again."""
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    if name in MetadataCatalog:
        MetadataCatalog.remove(name)


def _generation_hint(root):
    return (
        f"create it in Python with `expedite_vit.data.ensure_expedite_videos({root!r})`, or point "
        f"$EXPEDITE_VIDEOS at an existing copy"
    )


def _require_generated(root):
    if not is_expedite_videos_complete(root):
        state = "is incomplete (no completion marker)" if os.path.isdir(root) else "does not exist"
        raise DatasetMissingError(f"The expedite_videos dataset folder {root} {state}; {_generation_hint(root)}.")


register_all_ytvis()
register_expedite_videos()
