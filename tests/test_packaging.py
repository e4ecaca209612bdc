"""setup.cfg lists exactly the project's packages: a package missing there is left out of a
(non-editable) install, and one listed but gone makes every install fail."""
import configparser
import os

from conftest import REPO

PACKAGE_ROOTS = {"expedite": "expedite", "expedite_vit": os.path.join("projects", "ExpediteViT", "expedite_vit")}


def _packages_on_disk():
    found = set()
    for name, root in PACKAGE_ROOTS.items():
        for folder, dirs, files in os.walk(os.path.join(REPO, root)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            if "__init__.py" in files:
                relative = os.path.relpath(folder, os.path.join(REPO, root))
                found.add(name if relative == "." else f"{name}.{relative.replace(os.sep, '.')}")
    return found


def test_setup_cfg_lists_every_package_and_only_those():
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    listed = set(config["options"]["packages"].split())
    assert listed == _packages_on_disk()
