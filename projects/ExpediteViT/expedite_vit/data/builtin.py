"""
Registers the built-in "expedite_scenes" dataset (see :mod:`.synthetic_scenes`) with detectron2.

For split in (train, val):

* ``expedite_scenes_{split}``: instance detection / segmentation (COCO json, evaluator "coco").
  Masks are compressed RLE, so train with ``INPUT.MASK_FORMAT = "bitmask"``.
* ``expedite_scenes_{split}_panoptic``: COCO panoptic, detectron2's standard (non-separated) format.
* ``expedite_scenes_{split}_sem_seg``: semantic segmentation over all thing and stuff classes.

Importing this module registers them at :func:`default_expedite_scenes_root` (resolved then; call
:func:`register_expedite_scenes` again to point them elsewhere). Registering only records paths;
nothing is read or generated until a dataset is loaded, and loading a dataset that has not been
generated raises FileNotFoundError saying how to create it.
"""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg, register_coco_instances, register_coco_panoptic

from .availability import DatasetMissingError
from .synthetic_scenes import (
    CATEGORIES,
    SEMANTIC_IGNORE_LABEL,
    SPLITS,
    THING_CATEGORIES,
    default_expedite_scenes_root,
    is_expedite_scenes_complete,
)

__all__ = ["expedite_scenes_metadata", "expedite_scenes_dataset_names", "register_expedite_scenes"]


def expedite_scenes_metadata():
    """
    Category metadata shared by all expedite_scenes datasets.

    Contiguous ids index CATEGORIES (things first), so a thing has the same contiguous id in the
    instance, panoptic and semantic datasets. As in Mask2Former's COCO panoptic registration,
    ``stuff_classes`` / ``stuff_dataset_id_to_contiguous_id`` cover every category (a semantic head
    predicts all of them) while the ``thing_*`` entries cover the things only.
    """
    return {
        "thing_classes": [c["name"] for c in THING_CATEGORIES],
        "thing_colors": [c["color"] for c in THING_CATEGORIES],
        "stuff_classes": [c["name"] for c in CATEGORIES],
        "stuff_colors": [c["color"] for c in CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(CATEGORIES) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(CATEGORIES)},
    }


def expedite_scenes_dataset_names(split):
    """The (instances, panoptic, sem_seg) dataset names of one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown expedite_scenes split {split!r}; expected one of {SPLITS}")
    base = f"expedite_scenes_{split}"
    return base, f"{base}_panoptic", f"{base}_sem_seg"


def register_expedite_scenes(root=None):
    """
    Register every expedite_scenes dataset, reading from `root` (default:
    :func:`default_expedite_scenes_root`). Calling it again re-registers, pointing the names at the
    new root.

    Returns:
        list[str]: the registered dataset names.
    """
    root = default_expedite_scenes_root() if root is None else os.path.expanduser(root)
    metadata = expedite_scenes_metadata()
    thing_metadata = {
        key: metadata[key] for key in ("thing_classes", "thing_colors", "thing_dataset_id_to_contiguous_id")
    }
    registered = []
    for split in SPLITS:
        instances_name, panoptic_name, sem_seg_name = expedite_scenes_dataset_names(split)
        image_root = os.path.join(root, split)
        instances_json = os.path.join(root, "annotations", f"instances_{split}.json")
        semantic_root = os.path.join(root, f"semantic_{split}")

        _register_checked(
            instances_name, root,
            lambda: register_coco_instances(instances_name, thing_metadata, instances_json, image_root),
        )
        _register_checked(
            panoptic_name, root,
            lambda: register_coco_panoptic(
                panoptic_name, metadata, image_root,
                panoptic_root=os.path.join(root, f"panoptic_{split}"),
                panoptic_json=os.path.join(root, "annotations", f"panoptic_{split}.json"),
                instances_json=instances_json,
            ),
        )
        _register_checked(
            sem_seg_name, root,
            lambda: _register_sem_seg(sem_seg_name, metadata, image_root, semantic_root),
        )
        registered += [instances_name, panoptic_name, sem_seg_name]
    return registered


def _register_sem_seg(name, metadata, image_root, semantic_root):
    # detectron2 has no register_* helper for semantic segmentation; this mirrors its builtin ones.
    DatasetCatalog.register(
        name, lambda: load_sem_seg(semantic_root, image_root, gt_ext="png", image_ext="jpg")
    )
    MetadataCatalog.get(name).set(
        image_root=image_root,
        sem_seg_root=semantic_root,
        evaluator_type="sem_seg",
        ignore_label=SEMANTIC_IGNORE_LABEL,
        **{k: v for k, v in metadata.items() if k.startswith("stuff_")},
    )


def _register_checked(name, root, register):
    """
    Run a detectron2 `register` call for `name` (dropping an earlier registration of that name), then
    wrap the loader it registered so loading first checks that the dataset was generated: the stock
    loaders would otherwise fail on a missing json with no hint of how to create it.
    """
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    if name in MetadataCatalog:
        MetadataCatalog.remove(name)
    register()
    MetadataCatalog.get(name).set(missing_hint=_generation_hint(root))
    load = DatasetCatalog[name]
    DatasetCatalog.remove(name)

    def load_checked():
        _require_generated(root)
        return load()

    DatasetCatalog.register(name, load_checked)


def _generation_hint(root):
    return (
        f"create it with `python tools/make_builtin_dataset.py --root {root}` or, in Python, "
        f"`expedite_vit.data.ensure_expedite_scenes({root!r})`; or point $EXPEDITE_DATASETS at an existing copy"
    )


def _require_generated(root):
    if not is_expedite_scenes_complete(root):
        state = "is incomplete (no completion marker)" if os.path.isdir(root) else "does not exist"
        raise DatasetMissingError(f"The expedite_scenes dataset folder {root} {state}; {_generation_hint(root)}.")


register_expedite_scenes()
