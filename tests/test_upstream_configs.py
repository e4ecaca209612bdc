"""Our ViTDet COCO configs against detectron2's own (projects/ViTDet/configs/COCO), field by field.

The upstream side is a fixture, tests/fixtures/upstream_vitdet_configs.json, flattened from a
detectron2 snapshot by tools/upstream_vitdet_configs.py (its "source" says which commit and how).
Ours may differ in two places only: the backbone class (ExpeditedViT instead of ViT) and the
``expedite`` node it adds.
"""
import functools
import json
from pathlib import Path

import pytest
from omegaconf import DictConfig

from detectron2.config import LazyConfig
from detectron2.layers import ShapeSpec
from detectron2.modeling import ViT

from expedite import ExpediteConfig, ExpeditSettings
from expedite_vit.modeling import ExpeditedViT
from expedite_vit.runtime.config import load_config
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "upstream_vitdet_configs.json"
UPSTREAM_DIR = "projects/ViTDet/configs/COCO"
OURS_DIR = REPO / "configs" / "ViTDet" / "COCO"
CONFIGS = [
    "mask_rcnn_vitdet_b_100ep.py",
    "mask_rcnn_vitdet_l_100ep.py",
    "mask_rcnn_vitdet_h_75ep.py",
    "cascade_mask_rcnn_vitdet_b_100ep.py",
    "cascade_mask_rcnn_vitdet_l_100ep.py",
    "cascade_mask_rcnn_vitdet_h_75ep.py",
]
BACKBONE = "model.backbone.net._target_"
EXPEDITE = "model.backbone.net.expedite."


def _load_tool():
    path = REPO / "tools" / "upstream_vitdet_configs.py"
    return load_script(path)


tool = _load_tool()


@pytest.fixture(scope="module")
def upstream():
    return json.loads(FIXTURE.read_text())


def test_fixture_covers_every_config(upstream):
    assert upstream["source"]["commit"] and upstream["source"]["repo"].endswith("detectron2")
    assert sorted(upstream["configs"]) == sorted(f"{UPSTREAM_DIR}/{name}" for name in CONFIGS)
    assert sorted(p.name for p in OURS_DIR.glob("*.py")) == sorted(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_equals_upstream(upstream, name):
    theirs = dict(upstream["configs"][f"{UPSTREAM_DIR}/{name}"])
    ours = tool.flatten(load_config(str(OURS_DIR / name)))

    assert theirs.pop(BACKBONE) == tool.import_path(ViT)
    assert ours.pop(BACKBONE) == tool.import_path(ExpeditedViT)
    expedite = {k for k in ours if k.startswith(EXPEDITE)}
    assert expedite, "the expedite node is missing"
    for key in expedite:
        del ours[key]

    differences = [f"only ours: {k} = {ours[k]!r}" for k in sorted(ours.keys() - theirs.keys())]
    differences += [f"only upstream: {k} = {theirs[k]!r}" for k in sorted(theirs.keys() - ours.keys())]
    differences += [
        f"{k}: ours {ours[k]!r}, upstream {theirs[k]!r}"
        for k in sorted(ours.keys() & theirs.keys())
        if ours[k] != theirs[k] or type(ours[k]) is not type(theirs[k])
    ]
    assert not differences, "\n".join(differences)


def test_vitdet_presets_are_complete_expedite_configs():
    # One home, one style: each preset names every common ExpediteConfig field and every
    # setting of its method (Expedit); the other methods' presets, where measured, are partial
    # (their other settings keep their defaults) and reach the configs unchanged.
    presets = LazyConfig.load(str(REPO / "configs" / "common" / "vitdet.py")).VITDET_EXPEDITE_PRESETS
    common = ("enabled", "method", "location")
    expedit_fields = set(ExpeditSettings.setting_names())
    assert set(presets) == {"base", "large", "huge"}
    for name, preset in presets.items():
        assert {*common, "expedit"} <= set(preset) <= {*common, "expedit", "ailurus", "tome", "itpn"}, name
        assert preset["method"] == "expedit", name
        assert set(preset["expedit"]) == expedit_fields, name
        ExpediteConfig(**preset)
    for name in CONFIGS:
        size = {"b": "base", "l": "large", "h": "huge"}[name.split("_")[-2]]
        expedite = load_config(str(OURS_DIR / name)).model.backbone.net.expedite
        assert {f: expedite[f] for f in common} == {f: presets[size][f] for f in common}, name
        assert {f: expedite.expedit[f] for f in expedit_fields} == presets[size]["expedit"], name
        for method in ("ailurus", "tome", "itpn"):
            for field, value in presets[size].get(method, {}).items():
                assert expedite[method][field] == value, (name, method, field)


def test_flatten():
    def f(x, *, y):
        return x + y

    config = DictConfig(
        {
            "a": {
                "_target_": ViT,
                "shape": ShapeSpec(channels=3),
                "num": "${..n}",
                "items": [1, (2.5, None)],
                "empty": {},
            },
            "p": functools.partial(f, 1, y=2),
            "n": True,
        },
        flags={"allow_objects": True},  # as LazyConfig.load makes them
    )
    flat = tool.flatten(config)
    assert flat == {
        "a._target_": "detectron2.modeling.ViT",
        "a.shape._type_": "detectron2.layers.ShapeSpec",
        "a.shape.channels": 3,
        "a.shape.height": None,
        "a.shape.width": None,
        "a.shape.stride": None,
        "a.num": "${..n}",
        "a.items.0": 1,
        "a.items.1.0": 2.5,
        "a.items.1.1": None,
        "a.empty": {},
        "p.func": f"{__name__}.test_flatten.<locals>.f",
        "p.args.0": 1,
        "p.keywords.y": 2,
        "n": True,
    }
    with pytest.raises(TypeError, match="a.bad"):
        tool.flatten({"a": {"bad": object()}})
