"""Loading LazyConfig files with command-line overrides that must name existing keys.

detectron2's ``LazyConfig.apply_overrides`` creates any key it is given, so a misspelt
override (``expedite.locaton=3``) is silently ignored by the model and the run measures
something other than what was asked. ``load_config`` checks every override key first.
"""
import difflib
import inspect
import os
from typing import List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from detectron2.config import LazyConfig, instantiate
from expedite import METHODS, ExpediteConfig

try:
    from hydra.errors import OverrideParseException
except ImportError:  # without hydra, detectron2 splits key=value itself and cannot fail to parse
    OverrideParseException = ()
from detectron2.utils.registry import locate

__all__ = [
    "ConfigError",
    "check_device",
    "check_expedite_settings",
    "check_method_overrides",
    "check_model_settings",
    "check_override_keys",
    "default_evaluator_output_dir",
    "load_config",
    "split_override",
]

# Hydra's syntax for "this key is new on purpose" (``+key=value`` and ``++key=value``).
_ADD_PREFIX = "+"


class ConfigError(ValueError):
    """A config (or an override of it) that cannot be used as given."""


def split_override(override: str) -> Tuple[str, str, bool]:
    """Split ``"a.b=value"`` into ``("a.b", "value", adds_key)``.

    ``adds_key`` is True for ``+a.b=value``: the key may be new, and is not checked.
    """
    key, equals, value = override.partition("=")
    if not equals or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form key=value")
    key = key.strip()
    adds_key = key.startswith(_ADD_PREFIX)
    return key.lstrip(_ADD_PREFIX), value, adds_key


def _target_parameters(node: DictConfig) -> List[str]:
    """Keyword names accepted by the ``_target_`` of a LazyCall node.

    A LazyCall node lists only the arguments its author set; the callable may take more
    (e.g. ``COCOEvaluator(output_dir=...)``), and overriding those is legitimate.
    """
    if "_target_" not in node:
        return []
    target = node._target_
    if isinstance(target, str):
        target = locate(target)
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # builtins without an introspectable signature
        return []
    return [
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def _unknown_key_error(key: str, parent: str, part: str, candidates: Sequence[str]) -> ConfigError:
    message = f"unknown config key {key!r}"
    if parent != key.rpartition(".")[0]:
        # The typo is not in the last component: say which one.
        message += f": {parent or 'the config root'!r} has no key {part!r}"
    close = difflib.get_close_matches(part, candidates, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    elif candidates:
        message += f" (keys there: {', '.join(sorted(candidates))})"
    return ConfigError(message + f"; write '+{key}=...' to add a new key on purpose")


def _check_key_exists(cfg: DictConfig, key: str) -> None:
    node = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        parent = ".".join(parts[:depth])
        if isinstance(node, ListConfig):
            if not (part.isdigit() and int(part) < len(node)):
                raise ConfigError(
                    f"unknown config key {key!r}: {parent!r} is a list of {len(node)} items, "
                    f"{part!r} is not an index into it"
                )
        elif isinstance(node, DictConfig):
            # keys() rather than `in`: `in` is False for mandatory "???" values.
            existing = [str(k) for k in node.keys()]
            is_last = depth == len(parts) - 1
            accepted = existing + [p for p in (_target_parameters(node) if is_last else []) if p not in existing]
            if part not in accepted:
                raise _unknown_key_error(key, parent, part, accepted)
            if is_last:
                return
        else:
            raise ConfigError(
                f"unknown config key {key!r}: {parent!r} is a value ({node!r}), not a config node"
            )
        # select() follows interpolations, so "${..x}" nodes are walked like the node they name.
        node = OmegaConf.select(node, part, throw_on_missing=False)


def check_override_keys(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Raise ``ConfigError`` naming the first override whose key is not in ``cfg``.

    A key exists if every component of its dotted path is a dict key or list index of the
    node before it, or if the last component is a keyword of that node's LazyCall target.
    Keys written as ``+a.b=value`` are taken as deliberately new and not checked.
    """
    for override in overrides:
        key, _, adds_key = split_override(override)
        if not adds_key:
            _check_key_exists(cfg, key)


def load_config(
    config_file: str, overrides: Optional[Sequence[str]] = None, methods: Sequence[str] = ()
) -> DictConfig:
    """``LazyConfig.load`` then ``LazyConfig.apply_overrides``, refusing unknown override keys,
    then :func:`check_expedite_settings`: every setting the user can get wrong is checked here,
    before any caller writes anything. ``methods``: as :func:`check_method_overrides`."""
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file {config_file!r} does not exist")
    cfg = LazyConfig.load(config_file)
    overrides = list(overrides or [])
    check_override_keys(cfg, overrides)
    # detectron2 without hydra would keep a leading "+" as part of the key; the check above
    # has already handled what "+" means, so hand over plain key=value pairs.
    for override in overrides:
        key, value, _ = split_override(override)
        try:
            cfg = LazyConfig.apply_overrides(cfg, [f"{key}={value}"])
        except OverrideParseException as error:
            raise ConfigError(
                f"cannot parse the override {override!r} ({str(error).splitlines()[0].split(':')[0]}): "
                f"quote a value holding special characters (key='value'), and write a path in full "
                f"(the shell does not expand '~' after '='; use $HOME)"
            ) from error
    check_expedite_settings(cfg)
    check_method_overrides(cfg, overrides, methods)
    return cfg


def check_method_overrides(cfg: DictConfig, overrides: Sequence[str], methods: Sequence[str] = ()) -> None:
    """Refuse an override of a method's settings when the node runs another method: it would be
    ignored (``expedite.expedit.grid=8`` with ``expedite.method=tome``). ``methods``: methods a
    tool runs besides the config's (``tools/benchmark.py --methods``), whose settings count."""
    nodes = dict(expedite_nodes(cfg.get("model")))
    for override in overrides:
        key, value, _ = split_override(override)
        for path, node in nodes.items():
            method, _, field = key[len(path) + 1 :].partition(".") if key.startswith(path + ".") else ("", "", "")
            chosen = node.get("method", "expedit")
            if field and method in METHODS and method != chosen and method not in methods:
                valid = ", ".join(f"{path}.{chosen}.{name}" for name in METHODS[chosen].setting_names())
                raise ConfigError(
                    f"{key}={value} is a setting of method {method!r}, but {path}.method={chosen!r}: "
                    f"it would be ignored; pick the method with {path}.method={method}, or set the "
                    f"settings of {chosen!r}: {valid}"
                )


def expedite_nodes(node, path: str = "model") -> List[Tuple[str, DictConfig]]:
    """Every ``expedite`` settings node under ``node``, with its dotted path."""
    found = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = node.get(key)
            child_path = f"{path}.{key}"
            if key == "expedite" and isinstance(child, DictConfig):
                found.append((child_path, child))
            else:
                found.extend(expedite_nodes(child, child_path))
    elif isinstance(node, ListConfig):
        for index, child in enumerate(node):
            found.extend(expedite_nodes(child, f"{path}.{index}"))
    return found


def _with_path(error: Exception, path: str) -> str:
    """The settings object names a field ``expedite.<field>``; the user wrote ``<path>.<field>``."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return path + message[len("expedite") :] if message.startswith("expedite.") else f"{path}: {message}"


def _build_settings(node: DictConfig) -> ExpediteConfig:
    return instantiate(node) if "_target_" in node else ExpediteConfig(**node)


def check_expedite_settings(cfg: DictConfig) -> None:
    """Build every ``expedite`` node of ``cfg.model`` (an :class:`expedite.ExpediteConfig`, whose
    constructor checks the type and range of every field) and raise a one-line ``ConfigError``
    naming the key, the value and what is allowed, e.g. for ``...expedite.enabled=no``."""
    for path, node in expedite_nodes(cfg.get("model")):
        try:
            _build_settings(node)
        except (TypeError, ValueError, AttributeError) as error:
            raise ConfigError(_with_path(error, path)) from None


def check_model_settings(cfg: DictConfig) -> None:
    """Check every ``expedite`` node against the host it sits in (``expedite.location`` past the
    last block, a grid larger than the window, a budget above a window's tokens, ...) without
    building the model: the host class's ``host_layout(**host_arguments)`` describes the host,
    and :meth:`expedite.ExpediteConfig.check_host` checks the settings against it. Raises a
    one-line ``ConfigError`` naming the key.
    """
    for path, node in expedite_nodes(cfg.get("model")):
        host_path = path.rpartition(".")[0]
        host = OmegaConf.select(cfg, host_path)
        target = host.get("_target_") if isinstance(host, DictConfig) else None
        host_class = locate(target) if isinstance(target, str) else target
        host_layout = getattr(host_class, "host_layout", None)
        if host_layout is None:
            continue
        arguments = {
            str(key): OmegaConf.to_object(value) if isinstance(value, (DictConfig, ListConfig)) else value
            for key, value in host.items()
            if key not in ("_target_", "expedite")
        }
        try:
            _build_settings(node).check_host(host_layout(**arguments))
        except ValueError as error:
            raise ConfigError(_with_path(error, path)) from None


def check_device(device: str, setting: str = "train.device") -> None:
    """Fail early, with the fix in the message, when a CUDA device is asked for but absent.
    ``setting``: how the user chose the device (a config key, or a flag such as ``--device``)."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ConfigError(f"{setting}={device!r} is not a device: use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        fix = "add the override train.device=cpu" if setting == "train.device" else f"use {setting} cpu"
        raise ConfigError(f"{setting}={device!r} but CUDA is not available on this machine; {fix}")


def default_evaluator_output_dir(cfg: DictConfig) -> None:
    """Point evaluators without an ``output_dir`` at ``cfg.train.output_dir``, in place.

    Evaluators such as COCOEvaluator write their predictions only when given a directory;
    keeping them next to the log and config makes each run self-contained.
    """
    evaluators = cfg.dataloader.evaluator
    for evaluator in evaluators if isinstance(evaluators, ListConfig) else [evaluators]:
        if "output_dir" in _target_parameters(evaluator) and evaluator.get("output_dir") is None:
            evaluator.output_dir = cfg.train.output_dir
