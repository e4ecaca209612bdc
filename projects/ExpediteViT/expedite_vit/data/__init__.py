"""Datasets of ExpediteViT. Importing this package registers the built-in expedite_scenes datasets
and coco_2017_{train,val}_panoptic_with_sem_seg."""
# It also registers the video datasets expedite_videos_{train,val} and ytvis_{2019,2021}_{train,val}.
from .availability import DatasetMissingError, check_datasets_present, dataset_names
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
from .synthetic_videos import (
    default_expedite_videos_root,
    ensure_expedite_videos,
    generate_expedite_videos,
    is_expedite_videos_complete,
    render_video,
)
from .ytvis import (
    YTVIS_2019_CATEGORY_NAMES,
    YTVIS_2021_CATEGORY_NAMES,
    expedite_videos_metadata,
    load_ytvis_json,
    register_all_ytvis,
    register_expedite_videos,
    register_ytvis_instances,
    ytvis_metadata,
)

__all__ = [
    "CATEGORIES",
    "DatasetMissingError",
    "STUFF_CATEGORIES",
    "THING_CATEGORIES",
    "YTVIS_2019_CATEGORY_NAMES",
    "YTVIS_2021_CATEGORY_NAMES",
    "check_datasets_present",
    "dataset_names",
    "default_expedite_scenes_root",
    "default_expedite_videos_root",
    "ensure_expedite_scenes",
    "ensure_expedite_videos",
    "expedite_scenes_dataset_names",
    "expedite_scenes_metadata",
    "expedite_videos_metadata",
    "generate_expedite_scenes",
    "generate_expedite_videos",
    "is_expedite_scenes_complete",
    "is_expedite_videos_complete",
    "load_ytvis_json",
    "panoptic_to_semantic",
    "prepare_panoptic_semantic",
    "register_all_ytvis",
    "register_coco_panoptic_with_sem_seg",
    "register_expedite_scenes",
    "register_expedite_videos",
    "register_panoptic_with_sem_seg",
    "register_ytvis_instances",
    "render_scene",
    "render_video",
    "ytvis_metadata",
]
