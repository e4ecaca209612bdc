"""Datasets of ExpediteViT. Importing this package registers the built-in expedite_scenes datasets
and coco_2017_{train,val}_panoptic_with_sem_seg."""
from .builtin import expedite_scenes_dataset_names, expedite_scenes_metadata, register_expedite_scenes
from .panoptic_semantic import (
    panoptic_to_semantic,
    prepare_panoptic_semantic,
    register_coco_panoptic_with_sem_seg,
    register_panoptic_with_sem_seg,
)
from .synthetic_scenes import (
    CATEGORIES,
    STUFF_CATEGORIES,
    THING_CATEGORIES,
    default_expedite_scenes_root,
    ensure_expedite_scenes,
    generate_expedite_scenes,
    is_expedite_scenes_complete,
    render_scene,
)

__all__ = [
    "CATEGORIES",
    "STUFF_CATEGORIES",
    "THING_CATEGORIES",
    "default_expedite_scenes_root",
    "ensure_expedite_scenes",
    "expedite_scenes_dataset_names",
    "expedite_scenes_metadata",
    "generate_expedite_scenes",
    "is_expedite_scenes_complete",
    "panoptic_to_semantic",
    "prepare_panoptic_semantic",
    "register_coco_panoptic_with_sem_seg",
    "register_expedite_scenes",
    "register_panoptic_with_sem_seg",
    "render_scene",
]
