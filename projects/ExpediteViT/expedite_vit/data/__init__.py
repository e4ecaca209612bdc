"""Datasets of ExpediteViT. Importing this package registers the built-in expedite_scenes datasets."""
from .builtin import expedite_scenes_dataset_names, expedite_scenes_metadata, register_expedite_scenes
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
    "register_expedite_scenes",
    "render_scene",
]
