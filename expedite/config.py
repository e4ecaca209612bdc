"""Settings of token reduction, as one plain object a LazyConfig node instantiates.

In a model config it lives in a node named ``expedite`` (for ViTDet ``model.backbone.net.expedite``)
so every field can be overridden from the command line, e.g.
``model.backbone.net.expedite.enabled=False`` or ``model.backbone.net.expedite.grid=8``.

Every field is checked, strictly, when the object is built *and* whenever a field is assigned
later (``model.backbone.net.expedite.grid = 8`` on a built model): a command-line value that
OmegaConf parsed into something else (``enabled=no`` is the string ``"no"``, ``grid=4.0`` a float)
is refused, not misread. Errors are one-line :class:`ValueError`s that name the key
(``expedite.<field>``), the value, its type and what is allowed. What depends on the host (the
number of blocks, the window size) is checked by :meth:`ExpediteConfig.check_host`, which every
host calls when it is built with reduction on and again at each forward.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence as _SequenceABC
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Sequence, Tuple, Union

__all__ = ["ExpediteConfig", "IMPLEMENTATIONS", "NORMALIZATIONS"]

IMPLEMENTATIONS = ("default", "official")
NORMALIZATIONS = ("sum", "l2")


def _describe(name: str, value: Any) -> str:
    return f"expedite.{name}={value!r} ({type(value).__name__})"


def _refuse(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{_describe(name, value)} is not allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _refuse(
        name, value, "it must be True or False (a bool; strings such as 'no' or 'true' are refused)"
    )


def _int_check(minimum: int, odd: bool = False) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if _is_int(value) and value >= minimum and (not odd or value % 2 == 1):
            return int(value)
        need = "an odd int >= 1 (a square centred on the token's own cell)" if odd else f"an int >= {minimum}"
        raise _refuse(name, value, f"it must be {need} (not a bool, float or string)")

    return check


def _check_temperature(name: str, value: Any) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value_f = float(value)
        if math.isfinite(value_f) and value_f > 0:
            return value_f
    raise _refuse(
        name, value, "it must be a finite number > 0 (an int or float; not a bool, string, inf or nan)"
    )


def _check_grid(name: str, value: Any) -> Tuple[int, int]:
    if _is_int(value) and value >= 1:
        return (int(value), int(value))
    # Any sequence but a string: a tuple, a list, or an OmegaConf ListConfig from a config file.
    if isinstance(value, _SequenceABC) and not isinstance(value, (str, bytes)) and len(value) == 2:
        if all(_is_int(g) and g >= 1 for g in value):
            return (int(value[0]), int(value[1]))
    raise _refuse(
        name, value, "it must be an int >= 1 or a pair of them (cells per window, e.g. 7 or (7, 7))"
    )


def _choice_check(choices: Tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise _refuse(name, value, "it must be one of " + ", ".join(repr(c) for c in choices))

    return check


# One check per field; construction and later assignments both go through these.
_FIELD_CHECKS: Dict[str, Callable[[str, Any], Any]] = {
    "enabled": _check_bool,
    "location": _int_check(0),
    "grid": _check_grid,
    "n_iters": _int_check(0),
    "cluster_temperature": _check_temperature,
    "locality_window": _int_check(1, odd=True),
    "k": _int_check(1),
    "reconstruct_temperature": _check_temperature,
    "normalize": _choice_check(NORMALIZATIONS),
    "implementation": _choice_check(IMPLEMENTATIONS),
}


@dataclass
class ExpediteConfig:
    """Expedit token clustering + reconstruction settings.

    Attributes:
        enabled: off gives exactly the host model.
        location: alpha, the number of blocks that run at full resolution; clustering runs
            before block ``location`` (0-based), reconstruction after the last reduced block.
        grid: cluster grid per attention window (an int for a square grid), e.g. 7 for 14x14
            windows -> 7x7. Stored as an ``(h, w)`` tuple.
        n_iters: rounds of soft k-means.
        cluster_temperature: multiplier t of softmax(-t * squared distance); 0.01 means tau=100.
        locality_window: odd side of the square of centres a token may join (radius = side // 2).
        k: clusters mixed to rebuild each token.
        reconstruct_temperature: multiplier t' of the reconstruction weights exp(-t' * distance).
        normalize: "sum" (weights sum to one, our default) or "l2" (the official code's choice).
        implementation: "default" (ours) or "official", which reproduces the official Expedit
            code exactly (its token cells, top-k ties, unshifted reconstruction weights, padding
            clustered and the reduced map not cropped, and on Swin its bilinear bias resize and
            old-shift mask). It does not change ``normalize``: set ``normalize="l2"`` as well to
            reproduce published numbers.

    Every field is validated on construction and on each later assignment (one-line
    ValueError naming ``expedite.<field>``, the value, its type and what is allowed).
    """

    enabled: bool = True
    location: int = 8
    grid: Union[int, Sequence[int]] = 7
    n_iters: int = 5
    cluster_temperature: float = 0.01
    locality_window: int = 5
    k: int = 16
    reconstruct_temperature: float = 0.01
    normalize: str = "sum"
    implementation: str = "default"

    def __setattr__(self, name: str, value: Any) -> None:
        check = _FIELD_CHECKS.get(name)
        if check is None:
            known = ", ".join(f.name for f in fields(self))
            raise AttributeError(f"expedite.{name} is not a setting; the settings are: {known}")
        object.__setattr__(self, name, check(name, value))

    @property
    def radius(self) -> int:
        return self.locality_window // 2

    @property
    def num_clusters(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def official(self) -> bool:
        """True when reproducing the official implementation."""
        return self.implementation == "official"

    def check_host(self, *, num_blocks: int, window: int, host: str = "host", layout: str = "") -> None:
        """Raise a one-line ValueError (naming the key, the value and the allowed range) if
        these settings cannot run on a host.

        The one host check every host shares; hosts call it at construction (when enabled) and
        at each forward, so a setting changed on a built model is checked before it is used.

        Args:
            num_blocks: blocks of the host, counted as ``location`` counts them.
            window: side of the square attention windows that are clustered (0: none).
            host: the host's name for the messages ("ViT", "Swin").
            layout: optional description of the blocks for the location message.
        """
        if not self.enabled:
            return
        if window <= 0:
            raise ValueError(
                f"expedite.enabled={self.enabled!r}: this {host} has no windowed attention "
                f"(window_size={window}) and clustering runs per attention window; allowed: False"
            )
        if self.location >= num_blocks:
            detail = f"{layout}, so " if layout else ""
            raise ValueError(
                f"expedite.location={self.location!r} is past the last {host} block: "
                f"{detail}location must lie in [0, {num_blocks - 1}] (the host has {num_blocks} blocks)"
            )
        grid_h, grid_w = self.grid
        if grid_h != grid_w:
            raise ValueError(
                f"expedite.grid={self.grid!r}: grid {grid_h}x{grid_w} must be square for the "
                f"{host}'s square windows; allowed: an int, or a pair of equal ints, from 1 to {window}"
            )
        if grid_h > window:
            raise ValueError(
                f"expedite.grid={self.grid!r}: grid {grid_h}x{grid_w} is larger than the "
                f"{window}x{window} {host} window it clusters; allowed: 1 to {window}"
            )
        if self.k > self.num_clusters:
            raise ValueError(
                f"expedite.k={self.k!r} is above the cluster count {self.num_clusters} "
                f"({grid_h}x{grid_w} per window); allowed: 1 to {self.num_clusters}"
            )
