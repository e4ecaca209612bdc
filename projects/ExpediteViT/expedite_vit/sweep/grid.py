"""What a sweep varies: points of token-reduction settings, the default grid of each method,
``--grid`` parsing, and applying a point to a config.

A point is a dict of settings named relative to the model's ``expedite`` nodes (dotted for nested
settings), e.g. ``{"location": 6, "grid": 5}``, applied to every node that
:func:`expedite_nodes` finds. Which names exist is asked of the nodes themselves (their keys and
the arguments of their ``_target_``): the table below is the only place that names settings.
"""
from __future__ import annotations

import copy
import inspect
import itertools
import json
import logging
from typing import Any, Dict, List, Mapping, Sequence

from detectron2.config import LazyConfig
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..runtime.config import ConfigError, check_expedite_settings, check_model_settings, expedite_nodes

__all__ = [
    "DEFAULT_GRIDS",
    "DEFAULT_METHOD",
    "apply_point",
    "build_points",
    "check_setting_names",
    "default_points",
    "expand_grid",
    "expedite_settings",
    "format_point",
    "node_settings",
    "parse_grid",
    "point_overrides",
    "setting_names",
]

logger = logging.getLogger(__name__)

# Settings the sweep tries by default, per method: the cartesian product of the lists. Values a
# model cannot take (a location past its last block, a grid larger than its windows, a budget
# above a window's tokens) are skipped for that model, so one table serves ViTDet-B/L/H, Swin
# and the small built-in models.
_LOCATIONS = [1, 2, 3, 4, 6, 8, 10, 12, 16]
DEFAULT_GRIDS = {
    "expedit": {"location": _LOCATIONS, "expedit.grid": [2, 3, 4, 5, 6, 7, 8, 10]},
    "ailurus": {"location": _LOCATIONS, "ailurus.budget": [4, 8, 16, 32, 64]},
    "tome": {"location": _LOCATIONS, "tome.r": [2, 4, 8, 16, 32]},
    "itpn": {"location": _LOCATIONS, "itpn.keep": [0.25, 0.4, 0.5, 0.6, 0.75]},
}
METHOD = "method"  # the setting that picks the method; a node without it runs DEFAULT_METHOD
DEFAULT_METHOD = "expedit"
ENABLED = "enabled"  # every point runs with token reduction on, whatever the config says


def _target_defaults(node: DictConfig) -> Dict[str, Any]:
    """Keyword arguments of a LazyCall node's ``_target_`` with their defaults (None when the
    argument has none): a node lists only what its author set, its target takes more."""
    target = node.get("_target_")
    if target is None:
        return {}
    target = locate(target) if isinstance(target, str) else target
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # builtins without an introspectable signature
        return {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        p.name: None if p.default is inspect.Parameter.empty else p.default for p in parameters if p.kind in kinds
    }


def node_settings(node: DictConfig, prefix: str = "") -> Dict[str, Any]:
    """Every setting of an ``expedite`` node by dotted name, with its value: the node's keys
    (nested nodes walked) and the arguments its target takes with their defaults."""
    found = {f"{prefix}{name}": value for name, value in _target_defaults(node).items()}
    for key in node.keys():
        if key == "_target_":
            continue
        name = f"{prefix}{key}"
        value = node.get(key)
        if isinstance(value, DictConfig):
            found.pop(name, None)  # a nested node is walked, not a setting itself
            found.update(node_settings(value, f"{name}."))
        else:
            found[name] = OmegaConf.to_object(value) if isinstance(value, ListConfig) else value
    return found


def expedite_settings(cfg: DictConfig) -> Dict[str, Dict[str, Any]]:
    """{path of each ``expedite`` node: its settings}, for the model of ``cfg``."""
    return {path: node_settings(node) for path, node in expedite_nodes(cfg.model)}


def setting_names(cfg: DictConfig) -> List[str]:
    """The settings a point may name: those of every ``expedite`` node of the model."""
    nodes = expedite_settings(cfg)
    if not nodes:
        raise ConfigError("the config's model has no 'expedite' node (e.g. model.backbone.net.expedite) to sweep")
    names = set.intersection(*(set(settings) for settings in nodes.values()))
    return sorted(names)


def check_setting_names(cfg: DictConfig, names: Sequence[str]) -> None:
    """Raise a one-line ConfigError for a name that is not a setting, listing the valid ones."""
    valid = setting_names(cfg)
    for name in names:
        if name not in valid:
            raise ConfigError(f"unknown setting {name!r} in the grid; the settings are: {', '.join(valid)}")


def parse_value(text: str) -> Any:
    """A value as a command-line override would give it (``5`` an int, ``0.1`` a float, ``sum``
    a string), so that the printed overrides reproduce the point exactly."""
    return LazyConfig.apply_overrides(OmegaConf.create(), [f"value={text}"])["value"]


def parse_grid(text: str) -> Dict[str, List[Any]]:
    """``"location=4,6,8 grid=5,7"`` -> ``{"location": [4, 6, 8], "grid": [5, 7]}``.

    Raises:
        ConfigError: for an empty grid, a term that is not ``name=v1,v2,...``, a setting given
            twice or without values.
    """
    grid: Dict[str, List[Any]] = {}
    for term in text.split():
        name, equals, values = term.partition("=")
        if not equals or not name:
            raise ConfigError(f"grid term {term!r} is not of the form name=value1,value2,...")
        if name in grid:
            raise ConfigError(f"setting {name!r} is given twice in the grid {text!r}")
        listed = [v for v in values.split(",") if v]
        if not listed:
            raise ConfigError(f"setting {name!r} has no values in the grid {text!r}")
        grid[name] = [parse_value(v) for v in listed]
    if not grid:
        raise ConfigError(f"the grid {text!r} is empty; give settings as 'name=value1,value2 name2=...'")
    return grid


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> List[Dict[str, Any]]:
    """The points of a grid: the cartesian product of its value lists, in the order given."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def config_method(cfg: DictConfig) -> str:
    """The method the config's ``expedite`` nodes run (all must run the same one)."""
    methods = {settings.get(METHOD) or DEFAULT_METHOD for settings in expedite_settings(cfg).values()}
    if len(methods) != 1:
        raise ConfigError(f"the model's expedite nodes run different methods ({sorted(methods)}); give --grid")
    return methods.pop()


def default_points(cfg: DictConfig, method: str) -> List[Dict[str, Any]]:
    """The points of the default grid of ``method`` (see ``DEFAULT_GRIDS``), each naming the
    method when it is not the config's own."""
    if method not in DEFAULT_GRIDS:
        raise ConfigError(f"there is no default grid for method {method!r}; the methods are: {', '.join(DEFAULT_GRIDS)}")
    switch = {} if method == config_method(cfg) else {METHOD: method}
    return [{**switch, **point} for point in expand_grid(DEFAULT_GRIDS[method])]


def apply_point(cfg: DictConfig, point: Mapping[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with token reduction on and ``point`` set in every ``expedite`` node,
    checked as a loaded config is (types and ranges, then the fit with the host)."""
    check_setting_names(cfg, list(point))
    point_cfg = copy.deepcopy(cfg)
    for _, node in expedite_nodes(point_cfg.model):
        node[ENABLED] = True
        for name, value in point.items():
            OmegaConf.update(node, name, value, merge=False, force_add=True)
    try:
        check_expedite_settings(point_cfg)
        check_model_settings(point_cfg)
    except ConfigError as error:
        raise ConfigError(f"point {format_point(point)}: {error}") from None
    return point_cfg


def point_overrides(cfg: DictConfig, point: Mapping[str, Any]) -> List[str]:
    """Command-line overrides that turn ``cfg`` into the point (reduction switched on where the
    config has it off)."""
    overrides = []
    for path, settings in expedite_settings(cfg).items():
        if settings.get(ENABLED) is not True:
            overrides.append(f"{path}.{ENABLED}=True")
        overrides.extend(f"{path}.{name}={value}" for name, value in point.items())
    return overrides


def format_point(point: Mapping[str, Any]) -> str:
    """``location=6 grid=5``, or ``(the config's settings)`` for the empty point."""
    return " ".join(f"{name}={value}" for name, value in point.items()) or "(the config's settings)"


def _settings_key(cfg: DictConfig) -> str:
    return json.dumps(expedite_settings(cfg), sort_keys=True, default=str)


def build_points(
    cfg: DictConfig, grids: Sequence[Mapping[str, Sequence[Any]]] = (), methods: Sequence[str] = ()
) -> List[Dict]:
    """The points of a sweep: those of the given grids and of the default grids of ``methods``,
    or with neither, of the config's method's default grid; then the config's own settings (its
    preset), unless a point already has them. Points with the same effective settings are
    measured once.

    Every point of a given grid must fit the model (else a ConfigError naming it); points of
    default grids that do not fit are skipped, with a log line.
    """
    given = [p for grid in grids for p in expand_grid(grid)]
    if not given and not methods:
        methods = [config_method(cfg)]
    defaults = [p for method in methods for p in default_points(cfg, method)]
    check_setting_names(cfg, sorted({name for point in given + defaults for name in point}))
    points, seen, skipped = [], set(), []
    for point, strict in [*((p, True) for p in given), *((p, False) for p in defaults), ({}, True)]:
        try:
            key = _settings_key(apply_point(cfg, point))
        except ConfigError as error:
            if strict:
                raise
            skipped.append(f"{format_point(point)} ({error})")
            continue
        if key not in seen:
            seen.add(key)
            points.append(point)
    if skipped:
        logger.info(f"{len(skipped)} points of the default grid do not fit this model and are skipped, "
                    f"e.g. {skipped[0]}")
    return points
