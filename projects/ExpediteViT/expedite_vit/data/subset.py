"""A registered dataset cut down to some of its images, ground-truth files included.

detectron2's evaluators score the whole dataset they are given: COCOEvaluator counts an image
that was not run as all misses, and panopticapi's ``pq_compute`` refuses a prediction file that
lacks an image of the ground truth. Evaluating a model on the first N images of a dataset (as the
benchmark does) therefore needs a dataset of exactly those images, with its COCO instances json
and its panoptic json cut down to match.
"""
import copy
import json
import os
from typing import Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["register_image_subset"]

# Metadata keys naming a COCO-style json that lists the images of the dataset.
_IMAGE_LISTING_JSONS = ("json_file", "panoptic_json")


def _image_id_of_file(coco_json: dict) -> dict:
    return {os.path.basename(image["file_name"]): image["id"] for image in coco_json["images"]}


def _write_json_subset(path: str, file_names: set, output_path: str) -> None:
    """Keep, in the COCO json at ``path``, the images named in ``file_names`` (base names) and
    their annotations; write the result to ``output_path``."""
    with open(path) as f:
        coco_json = json.load(f)
    kept_ids = {image_id for name, image_id in _image_id_of_file(coco_json).items() if name in file_names}
    coco_json["images"] = [image for image in coco_json["images"] if image["id"] in kept_ids]
    coco_json["annotations"] = [a for a in coco_json.get("annotations", []) if a["image_id"] in kept_ids]
    with open(output_path, "w") as f:
        json.dump(coco_json, f)


def register_image_subset(dataset_name: str, file_names: Iterable[str], output_dir: str) -> str:
    """
    Register the images of ``dataset_name`` whose file names are in ``file_names`` as a dataset
    of their own, with the same metadata except that its ``json_file`` and ``panoptic_json``
    (where it has them) are copies, in ``output_dir``, holding those images only.

    Images are matched by base name, so a subset of one dataset (e.g. "coco_2017_val_panoptic")
    may name the images of another that describes the same pictures ("coco_2017_val").

    Returns:
        the new dataset's name, ``"{dataset_name}@{number of images}"``; an earlier registration
        of that name is replaced.
    """
    wanted = {os.path.basename(name) for name in file_names}
    dicts = [d for d in DatasetCatalog.get(dataset_name) if os.path.basename(d["file_name"]) in wanted]
    found = {os.path.basename(d["file_name"]) for d in dicts}
    if found != wanted:
        missing = sorted(wanted - found)
        raise ValueError(
            f"dataset {dataset_name!r} has no image named {missing[0]!r}"
            + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    metadata = MetadataCatalog.get(dataset_name).as_dict()
    metadata.pop("name")
    subset_name = f"{dataset_name}@{len(dicts)}"
    os.makedirs(output_dir, exist_ok=True)
    for key in _IMAGE_LISTING_JSONS:
        if metadata.get(key):
            subset_json = os.path.join(output_dir, f"{subset_name}.{key}.json")
            _write_json_subset(metadata[key], wanted, subset_json)
            metadata[key] = subset_json

    if subset_name in DatasetCatalog:
        DatasetCatalog.remove(subset_name)
    if subset_name in MetadataCatalog:
        MetadataCatalog.remove(subset_name)
    DatasetCatalog.register(subset_name, lambda: copy.deepcopy(dicts))
    MetadataCatalog.get(subset_name).set(**metadata)
    return subset_name
