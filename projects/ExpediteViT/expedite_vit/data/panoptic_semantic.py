"""Semantic-segmentation ground truth derived from a panoptic dataset.

A Mask2Former panoptic model also predicts semantic segmentation, and upstream reports its mIoU on
COCO panoptic through "coco_2017_val_panoptic_with_sem_seg": the panoptic dataset with, for every
image, a PNG of per-pixel category labels made from the panoptic PNG. detectron2 registers no
such dataset. Here:

* :func:`panoptic_to_semantic` turns one panoptic annotation into labels;
* :func:`prepare_panoptic_semantic` writes the PNGs of a registered panoptic dataset
  (``tools/prepare_panoptic_semantic.py`` on the command line);
* :func:`register_panoptic_with_sem_seg` registers ``<panoptic name>_with_sem_seg``, the panoptic
  dicts plus ``sem_seg_file_name``, so SemSegEvaluator can score it;
* importing this module registers ``coco_2017_{train,val}_panoptic_with_sem_seg`` with the PNGs in
  ``$DETECTRON2_DATASETS/coco/panoptic_semseg_{split}2017``, upstream's layout.
"""
import os
from typing import Dict, List, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image

__all__ = [
    "IGNORE_LABEL",
    "panoptic_to_semantic",
    "prepare_panoptic_semantic",
    "register_coco_panoptic_with_sem_seg",
    "register_panoptic_with_sem_seg",
]

IGNORE_LABEL = 255  # void pixels (no segment), as in detectron2's semantic datasets
SUFFIX = "_with_sem_seg"


def panoptic_to_semantic(segment_ids: np.ndarray, segments_info: Sequence[Dict]) -> np.ndarray:
    """
    Args:
        segment_ids: (H, W) segment id of every pixel (``rgb2id`` of a panoptic PNG).
        segments_info: the segments of the image, each with "id" and a contiguous "category_id"
            (as detectron2's panoptic dicts hold them).

    Returns:
        (H, W) uint8: the category of each pixel's segment, IGNORE_LABEL where no segment is.
    """
    labels = np.full(segment_ids.shape, IGNORE_LABEL, dtype=np.uint8)
    for segment in segments_info:
        category = segment["category_id"]
        if not 0 <= category < IGNORE_LABEL:
            raise ValueError(f"category id {category} of segment {segment['id']} does not fit a label PNG")
        labels[segment_ids == segment["id"]] = category
    return labels


def _semantic_file_name(record: Dict, sem_seg_root: str) -> str:
    return os.path.join(sem_seg_root, os.path.basename(record["pan_seg_file_name"]))


def prepare_panoptic_semantic(panoptic_name: str, sem_seg_root: str, overwrite: bool = False) -> List[str]:
    """Write the semantic PNG of every image of the registered panoptic dataset ``panoptic_name``
    into ``sem_seg_root``, named as its panoptic PNG. Existing PNGs are kept unless
    ``overwrite``. Returns the paths written."""
    records = DatasetCatalog.get(panoptic_name)
    if not records or "pan_seg_file_name" not in records[0]:
        raise ValueError(f"dataset {panoptic_name!r} is not a panoptic dataset (no 'pan_seg_file_name')")
    os.makedirs(sem_seg_root, exist_ok=True)
    written = []
    for record in records:
        path = _semantic_file_name(record, sem_seg_root)
        if os.path.exists(path) and not overwrite:
            continue
        segment_ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
        labels = panoptic_to_semantic(segment_ids, record["segments_info"])
        # Written under a temporary name first: an interrupted run leaves no truncated PNG behind.
        partial = path + ".partial.png"
        Image.fromarray(labels).save(partial)
        os.replace(partial, path)
        written.append(path)
    return written


def register_panoptic_with_sem_seg(panoptic_name: str, sem_seg_root: str) -> str:
    """Register ``<panoptic_name>_with_sem_seg``: the dicts of ``panoptic_name`` with a
    ``sem_seg_file_name`` in ``sem_seg_root`` each, and its metadata plus ``sem_seg_root`` and
    ``ignore_label``. Returns the new name; an earlier registration of it is replaced."""
    name = panoptic_name + SUFFIX

    def load():
        if not os.path.isdir(sem_seg_root):
            raise FileNotFoundError(
                f"{name}: semantic PNGs folder {sem_seg_root} does not exist; make it with "
                f"`python tools/prepare_panoptic_semantic.py {panoptic_name} --output {sem_seg_root}`"
            )
        records = [dict(r) for r in DatasetCatalog.get(panoptic_name)]
        for record in records:
            record["sem_seg_file_name"] = _semantic_file_name(record, sem_seg_root)
        missing = [r["sem_seg_file_name"] for r in records if not os.path.isfile(r["sem_seg_file_name"])]
        if missing:
            raise FileNotFoundError(
                f"{name}: {len(missing)} of {len(records)} semantic PNGs are missing (e.g. {missing[0]}); "
                f"complete them with `python tools/prepare_panoptic_semantic.py {panoptic_name} "
                f"--output {sem_seg_root}`"
            )
        return records

    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    if name in MetadataCatalog:
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, load)
    metadata = MetadataCatalog.get(panoptic_name).as_dict()
    metadata.pop("name")
    metadata.update(sem_seg_root=sem_seg_root, ignore_label=IGNORE_LABEL)
    MetadataCatalog.get(name).set(**metadata)
    return name


def register_coco_panoptic_with_sem_seg(root: str = None) -> List[str]:
    """Register coco_2017_{train,val}_panoptic_with_sem_seg, upstream Mask2Former's names, over
    detectron2's coco_2017_{train,val}_panoptic, with the PNGs in
    ``<root>/coco/panoptic_semseg_{split}2017`` (root: $DETECTRON2_DATASETS, default "datasets")."""
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")) if root is None else root
    return [
        register_panoptic_with_sem_seg(
            f"coco_2017_{split}_panoptic", os.path.join(root, "coco", f"panoptic_semseg_{split}2017")
        )
        for split in ("train", "val")
    ]


register_coco_panoptic_with_sem_seg()
