#!/usr/bin/env python
"""
Write tests/fixtures/upstream_vitdet_configs.json: detectron2's own ViTDet COCO configs,
flattened, which tests/test_upstream_configs.py compares ours with field by field.

upstream's config files are not installed by pip, so they are read from a git snapshot of
facebookresearch/detectron2 (a clone, or the bare git directory of a fetched snapshot):
projects/ViTDet/configs/ and the configs/common/ they load through model_zoo.get_config, both at
the same commit (the installed detectron2's copy of configs/common is not used).

Usage:
    python tools/upstream_vitdet_configs.py --git-dir /path/to/detectron2/.git \\
        [--commit HEAD] [--output tests/fixtures/upstream_vitdet_configs.json]

Flattening (``flatten``, used by the test as well): nested dicts and lists become dotted keys
("model.roi_heads.box_heads.0.fc_dims.0"); an empty dict or list is kept as a value; classes
and functions become their shortest import path (as LazyConfig.save writes them); functools.partial becomes ".func",
".args.N" and ".keywords.NAME"; dataclasses (ShapeSpec) become "._type_" and their fields;
interpolations ("${...num_classes}") stay unresolved strings; anything else is an error.
"""
import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from typing import Any, Dict

CONFIGS = [
    "projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py",
    "projects/ViTDet/configs/COCO/mask_rcnn_vitdet_l_100ep.py",
    "projects/ViTDet/configs/COCO/mask_rcnn_vitdet_h_75ep.py",
    "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_b_100ep.py",
    "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_l_100ep.py",
    "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_h_75ep.py",
]
FLATTENING = __doc__[__doc__.index("Flattening") :].replace("\n", " ").strip()


def import_path(obj) -> str:
    """The shortest import path of a class or function, as LazyConfig.save writes it
    ("torch.optim.AdamW", not "torch.optim.adamw.AdamW")."""
    from detectron2.config.instantiate import _convert_target_to_string

    return _convert_target_to_string(obj)


def flatten(config, prefix: str = "") -> Dict[str, Any]:
    """A LazyConfig (or any part of one) -> {dotted key: JSON value}; see the module docstring."""
    from omegaconf import DictConfig, ListConfig, OmegaConf, SCMode

    if isinstance(config, (DictConfig, ListConfig)):
        # Dataclass values (ShapeSpec) come back as themselves, not as plain dicts.
        config = OmegaConf.to_container(
            config, resolve=False, structured_config_mode=SCMode.INSTANTIATE
        )
    out: Dict[str, Any] = {}

    def visit(value, key):
        if isinstance(value, dict):
            if not value:
                out[key] = {}
            for k, v in value.items():
                visit(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            if not value:
                out[key] = []
            for i, v in enumerate(value):
                visit(v, f"{key}.{i}")
        elif isinstance(value, functools.partial):
            visit({"func": value.func, "args": list(value.args), "keywords": value.keywords}, key)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            visit({"_type_": type(value), **fields}, key)
        elif isinstance(value, type) or callable(value):
            out[key] = import_path(value)
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            raise TypeError(f"{key}: cannot flatten a {type(value).__name__} ({value!r})")

    visit(config, prefix)
    return out


def load_upstream(git_dir: str, commit: str) -> Dict[str, Any]:
    """Flattened configs of ``commit``, with the record of where they came from."""
    from detectron2.config import LazyConfig
    from detectron2.model_zoo import model_zoo

    sha = subprocess.run(
        ["git", "--git-dir", git_dir, "rev-parse", commit], check=True, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "--git-dir", git_dir, "archive", sha, "configs/common", "projects/ViTDet/configs"],
            check=True,
            capture_output=True,
        ).stdout
        with tempfile.TemporaryFile() as f:
            f.write(archive)
            f.seek(0)
            tarfile.open(fileobj=f).extractall(tmp, filter="data")

        def snapshot_config_file(config_path):  # model_zoo.get_config reads the snapshot's
            return os.path.join(tmp, "configs", config_path)

        installed = model_zoo.get_config_file
        model_zoo.get_config_file = snapshot_config_file
        try:
            configs = {
                path: dict(sorted(flatten(LazyConfig.load(os.path.join(tmp, path))).items()))
                for path in CONFIGS
            }
        finally:
            model_zoo.get_config_file = installed
    return {
        "source": {
            "repo": "https://github.com/facebookresearch/detectron2",
            "commit": sha,
            "files": CONFIGS + ["configs/common/** (through model_zoo.get_config)"],
            "loaded_with": "detectron2.config.LazyConfig.load, with model_zoo.get_config_file "
            "pointed at the snapshot's configs/",
            "flattening": FLATTENING,
            "made_by": "python tools/upstream_vitdet_configs.py --git-dir DETECTRON2_GIT_DIR "
            f"--commit {sha}",
        },
        "configs": configs,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--git-dir", required=True, help="detectron2's git directory (bare is fine)")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--output", default="tests/fixtures/upstream_vitdet_configs.json")
    args = parser.parse_args(argv)
    fixture = load_upstream(args.git_dir, args.commit)
    with open(args.output, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    print(f"wrote {args.output}: {len(fixture['configs'])} configs at {fixture['source']['commit']}")


if __name__ == "__main__":
    sys.exit(main())
