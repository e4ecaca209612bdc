"""The output folder of a sweep: what the sweep is (its manifest) and every finished point.

A point is saved as soon as it is measured, as one JSON file named by a hash of everything its
numbers depend on: the config file and its overrides, the checkpoint, the images, the
measurement settings, the machine, and the point's effective settings. A sweep that was
interrupted resumes from them; a sweep with another grid in the same folder reuses the points
the two grids share. A folder holding another sweep (or other files) is refused unless the
caller asks to overwrite it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig

from ..benchmark.report import environment_info, write_json
from ..benchmark.runner import BenchmarkSettings
from ..runtime.inputs import expand_image_paths
from ..runtime.models import checkpoint_path
from ..runtime.output import OutputFolderError
from .grid import expedite_settings

__all__ = ["MANIFEST", "PointCache", "prepare_output_folder", "sweep_identity"]

logger = logging.getLogger(__name__)

MANIFEST = "sweep.json"
CACHE_FOLDER = "cache"


def _sha256_of_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_identity(cfg: DictConfig) -> Dict:
    """The checkpoint's path, and its size and modification time when it is a local file (a
    new file at the same path must not reuse the old one's points; hashing gigabytes would
    take longer than it saves)."""
    path = checkpoint_path(cfg)
    if path and os.path.isfile(path):
        stat = os.stat(path)
        return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"path": path}


def sweep_identity(
    config_file: str, overrides: Sequence[str], cfg: DictConfig, settings: BenchmarkSettings
) -> Dict:
    """What every point of a sweep depends on besides its own settings. ``settings`` must have
    its ``num_images`` resolved (:func:`~expedite_vit.benchmark.runner.resolve_num_images`)."""
    measurement = dataclasses.asdict(settings)
    measurement["inputs"] = [os.path.abspath(p) for p in expand_image_paths(settings.inputs)]
    environment = environment_info(torch.device(settings.device))
    return {
        "config_file": os.path.abspath(config_file),
        "config_sha256": _sha256_of_file(config_file),
        "overrides": list(overrides),
        "checkpoint": _checkpoint_identity(cfg),
        "settings": measurement,
        "machine": {key: environment[key] for key in ("device_name", "torch", "threads")},
    }


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class PointCache:
    """Finished points of one sweep identity, one JSON file each under ``folder``."""

    def __init__(self, folder: str, identity: Mapping):
        self.folder = Path(folder)
        self.identity = dict(identity)

    def key(self, point_cfg: DictConfig) -> str:
        """The cache key of the config of a point (:func:`~.grid.apply_point`)."""
        return _hash({"identity": self.identity, "expedite": expedite_settings(point_cfg)})[:24]

    def load(self, key: str) -> Optional[Dict]:
        path = self.folder / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:  # damaged (it is written atomically, so only by hand): measure again
            logger.warning(f"Ignoring the unreadable cached point {path}")
            return None

    def save(self, key: str, result: Mapping) -> None:
        """Write atomically: an interrupted write never leaves a half point to be reused."""
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".{key}.json.tmp"
        write_json(result, str(temporary))
        os.replace(temporary, self.folder / f"{key}.json")


def _differences(old: Mapping, new: Mapping, prefix: str = "") -> List[str]:
    """Dotted names of the entries where two identities differ."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            names += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key}")
    return names


def _check_writable(folder: Path) -> None:
    """Raise OutputFolderError unless ``folder`` exists as a writable folder or can be made."""
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"--output {str(folder)!r} is a file; give a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputFolderError(f"--output {str(folder)!r} cannot be written: {str(existing)!r} is not writable")


def prepare_output_folder(folder: str, identity: Mapping, owned: Sequence[str], overwrite: bool) -> PointCache:
    """Check ``folder`` for this sweep, before anything is measured, and return its cache.

    A new or empty folder starts a sweep; one holding the same sweep (same identity) resumes it.
    One holding another sweep or other files is refused (OutputFolderError saying why), unless
    ``overwrite``: then the cached points and the ``owned`` output files of the earlier sweep
    are removed. The manifest is written last, so a refused folder is left as it was.
    """
    path = Path(folder).expanduser()
    _check_writable(path)
    manifest = path / MANIFEST
    contents = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if contents and not overwrite:
        if not manifest.is_file():
            shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
            raise OutputFolderError(
                f"--output {folder!r} holds files that are not a sweep ({shown}); choose another folder "
                f"or pass --overwrite"
            )
        try:
            previous = json.loads(manifest.read_text())["identity"]
        except (ValueError, KeyError):
            raise OutputFolderError(
                f"--output {folder!r} holds an unreadable {MANIFEST}; choose another folder or pass --overwrite"
            ) from None
        differences = _differences(previous, json.loads(json.dumps(identity, default=str)))
        if differences:
            raise OutputFolderError(
                f"--output {folder!r} holds another sweep (it differs in {', '.join(differences)}); "
                f"choose another folder or pass --overwrite to replace it"
            )
    elif overwrite:
        shutil.rmtree(path / CACHE_FOLDER, ignore_errors=True)
        for name in owned:
            (path / name).unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    write_json({"identity": identity}, str(manifest))
    return PointCache(str(path / CACHE_FOLDER), identity)
