"""Settings of token reduction: one plain object a LazyConfig node instantiates.

In a model config it lives in a node named ``expedite`` (for ViTDet ``model.backbone.net.expedite``).
It holds what every method shares (``enabled``, ``method``, ``location``) and one settings object
per method, so every field can be overridden from the command line::

    model.backbone.net.expedite.enabled=False
    model.backbone.net.expedite.expedit.grid=8
    model.backbone.net.expedite.method=tome model.backbone.net.expedite.tome.r=12

``method`` picks which one runs; the others keep their settings for when they are picked. Every
field is checked, strictly, when the object is built *and* whenever a field is assigned later
(``net.expedite.expedit.grid = 8`` on a built model): a command-line value that OmegaConf parsed
into something else (``enabled=no`` is the string ``"no"``, ``grid=4.0`` a float) is refused, not
misread. Errors are one-line ``ValueError``/``AttributeError``s that name the key
(``expedite.<field>`` or ``expedite.<method>.<field>``), the value, its type and what is allowed.
What depends on the host (its blocks and windows) is checked by :meth:`ExpediteConfig.check_host`
with the host's :class:`HostLayout`, the one place every host's settings are validated.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from collections.abc import Sequence as _SequenceABC
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Dict, Sequence, Tuple, Union

__all__ = [
    "AiluRusSettings",
    "ExpeditSettings",
    "ExpediteConfig",
    "HostLayout",
    "ITPNSettings",
    "IMPLEMENTATIONS",
    "InputSizeError",
    "METHODS",
    "NORMALIZATIONS",
    "ToMeSettings",
]

IMPLEMENTATIONS = ("default", "official")
NORMALIZATIONS = ("sum", "l2")
MIGRATION_SCORES = ("neighbour", "attention")


class InputSizeError(ValueError):
    """The settings fit the host but not this input: its token map is too small for them (found
    only when the input arrives, e.g. more gathering tokens per side than the map has rows). The
    message names the setting, the map and what is allowed."""


# ----------------------------------------------------------------------------------------------
# Field checks: each takes the full key (for the message) and the value, returns the value to store.


def _refuse(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{key}={value!r} ({type(value).__name__}) is not allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _refuse(
        key, value, "it must be True or False (a bool; strings such as 'no' or 'true' are refused)"
    )


def _int_check(minimum: int, odd: bool = False) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if _is_int(value) and value >= minimum and (not odd or value % 2 == 1):
            return int(value)
        need = "an odd int >= 1 (a square centred on the token's own cell)" if odd else f"an int >= {minimum}"
        raise _refuse(key, value, f"it must be {need} (not a bool, float or string)")

    return check


def _real_check(minimum: float, maximum: float, *, open_minimum: bool) -> Callable[[str, Any], float]:
    def check(key: str, value: Any) -> float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            value_f = float(value)
            above = value_f > minimum if open_minimum else value_f >= minimum
            if math.isfinite(value_f) and above and value_f <= maximum:
                return value_f
        low = f"> {minimum:g}" if open_minimum else f">= {minimum:g}"
        high = "" if math.isinf(maximum) else f" and <= {maximum:g}"
        raise _refuse(
            key, value, f"it must be a finite number {low}{high} (an int or float; not a bool, string, inf or nan)"
        )

    return check


_check_temperature = _real_check(0.0, math.inf, open_minimum=True)


def _check_grid(key: str, value: Any) -> Tuple[int, int]:
    if _is_int(value) and value >= 1:
        return (int(value), int(value))
    # Any sequence but a string: a tuple, a list, or an OmegaConf ListConfig from a config file.
    if isinstance(value, _SequenceABC) and not isinstance(value, (str, bytes)) and len(value) == 2:
        if all(_is_int(g) and g >= 1 for g in value):
            return (int(value[0]), int(value[1]))
    raise _refuse(
        key, value, "it must be an int >= 1 or a pair of them (cells per window, e.g. 7 or (7, 7))"
    )


def _choice_check(choices: Tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise _refuse(key, value, "it must be one of " + ", ".join(repr(c) for c in choices))

    return check


@dataclass(frozen=True)
class HostLayout:
    """What a host tells the settings check about itself.

    Attributes:
        name: the host's name in messages ("ViT", "Swin").
        num_blocks: blocks, counted as ``location`` counts them.
        window: side of the square attention windows the methods work in (Expedit clusters
            each, AiluRus and ToMe merge within each); 0 when the host has none.
        description: optional words on how blocks are counted (Swin: over all stages).
        conv_blocks: blocks that end in a convolution over the token map (ViTDet's residual
            blocks), which an irregular token set cannot take.
        global_blocks: blocks with global attention (ViTDet's), which token gathering replaces.
    """

    name: str
    num_blocks: int
    window: int
    description: str = ""
    conv_blocks: Tuple[int, ...] = ()
    global_blocks: Tuple[int, ...] = ()


class _Settings:
    """Strict per-field checks on construction and on every later assignment.

    A subclass is a dataclass that names its checks in ``_CHECKS`` and its key prefix in
    ``_KEY`` (``expedite.tome``): an unknown field is an ``AttributeError`` listing the valid ones.
    """

    _KEY: ClassVar[str]
    _TITLE: ClassVar[str]
    _CHECKS: ClassVar[Dict[str, Callable[[str, Any], Any]]]

    def __setattr__(self, name: str, value: Any) -> None:
        check = self._CHECKS.get(name)
        if check is None:
            raise AttributeError(
                f"{self._KEY}.{name} is not a{'n' if self._TITLE[0] in 'AEIOU' else ''} {self._TITLE} "
                f"setting; its settings are: {', '.join(self.setting_names())}"
            )
        object.__setattr__(self, name, check(f"{self._KEY}.{name}", value))

    @classmethod
    def setting_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_value(cls, value: Any):
        """An instance from an instance, a mapping of fields (a config node) or None (defaults);
        unknown fields are refused with the list of valid ones."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            settings = cls()
            for name, item in value.items():
                setattr(settings, str(name), item)
            return settings
        raise _refuse(cls._KEY, value, f"it must be a {cls.__name__} or a mapping of its settings")


@dataclass
class ExpeditSettings(_Settings):
    """Expedit token clustering + reconstruction (METHODS.md section 1).

    Attributes:
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
        gather: Fast-iTPN's token gathering on top of Expedit (see :class:`ITPNSettings`), in the
            global blocks that run on the clustered map; 0 (default) is off.
        warm_start: temporal warm start (video only, beyond the paper; off by default): inside a
            frame sequence that a video model declares
            (:meth:`expedite.TokenReduction.frame_sequence`, entered by ``VideoMaskFormer`` per
            video), each frame's soft k-means starts from the previous frame's final centres
            instead of average pooling (the first frame pools). Anywhere else, e.g. an image
            model's batch of independent images, it is ignored: images are never linked.
    """

    _KEY: ClassVar[str] = "expedite.expedit"
    _TITLE: ClassVar[str] = "Expedit"
    _CHECKS: ClassVar[Dict[str, Callable[[str, Any], Any]]] = {
        "grid": _check_grid,
        "n_iters": _int_check(0),
        "cluster_temperature": _check_temperature,
        "locality_window": _int_check(1, odd=True),
        "k": _int_check(1),
        "reconstruct_temperature": _check_temperature,
        "normalize": _choice_check(NORMALIZATIONS),
        "implementation": _choice_check(IMPLEMENTATIONS),
        "gather": _int_check(0),
        "warm_start": _check_bool,
    }

    grid: Union[int, Sequence[int]] = 7
    n_iters: int = 5
    cluster_temperature: float = 0.01
    locality_window: int = 5
    k: int = 16
    reconstruct_temperature: float = 0.01
    normalize: str = "sum"
    implementation: str = "default"
    gather: int = 0
    warm_start: bool = False

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

    def check_host(self, layout: HostLayout) -> None:
        window = layout.window
        if window <= 0:
            raise ValueError(
                f"expedite.method='expedit': this {layout.name} has no windowed attention "
                f"and Expedit clusters per attention window; allowed methods here: 'ailurus', 'tome'"
            )
        grid_h, grid_w = self.grid
        if grid_h != grid_w:
            raise ValueError(
                f"{self._KEY}.grid={self.grid!r}: grid {grid_h}x{grid_w} must be square for the "
                f"{layout.name}'s square windows; allowed: an int, or a pair of equal ints, from 1 to {window}"
            )
        if grid_h > window:
            raise ValueError(
                f"{self._KEY}.grid={self.grid!r}: grid {grid_h}x{grid_w} is larger than the "
                f"{window}x{window} {layout.name} window it clusters; allowed: 1 to {window}"
            )
        if self.k > self.num_clusters:
            raise ValueError(
                f"{self._KEY}.k={self.k!r} is above the cluster count {self.num_clusters} "
                f"({grid_h}x{grid_w} per window); allowed: 1 to {self.num_clusters}"
            )


@dataclass
class AiluRusSettings(_Settings):
    """AiluRus spatial-aware density-peak clustering (METHODS.md section 2).

    Attributes:
        budget: anchors (density peaks) per attention window; the tokens that merge into them
            form the low-resolution regions, every other token stays as it is.
        neighbourhood: odd side of the square (in tokens) within which densities are measured and
            tokens merge into an anchor.
        density_k: nearest neighbours of the local density.
        threshold: the cosine similarity to an anchor a token needs to merge into it.
        proportional_attention: add log(tokens merged) to the attention logits of merged keys.
    """

    _KEY: ClassVar[str] = "expedite.ailurus"
    _TITLE: ClassVar[str] = "AiluRus"
    _CHECKS: ClassVar[Dict[str, Callable[[str, Any], Any]]] = {
        "budget": _int_check(1),
        "neighbourhood": _int_check(1, odd=True),
        "density_k": _int_check(1),
        "threshold": _real_check(-1.0, 1.0, open_minimum=False),
        "proportional_attention": _check_bool,
    }

    budget: int = 16
    neighbourhood: int = 5
    density_k: int = 5
    threshold: float = 0.5
    proportional_attention: bool = True

    @property
    def radius(self) -> int:
        return self.neighbourhood // 2

    def check_host(self, layout: HostLayout) -> None:
        window = layout.window
        if window > 0 and self.budget > window * window:
            raise ValueError(
                f"{self._KEY}.budget={self.budget!r} is above the {window * window} tokens of a "
                f"{window}x{window} {layout.name} window; allowed: 1 to {window * window}"
            )
        if window > 0 and self.neighbourhood > 2 * window - 1:
            raise ValueError(
                f"{self._KEY}.neighbourhood={self.neighbourhood!r} is larger than the "
                f"{window}x{window} {layout.name} window it works in; allowed: odd, 1 to {2 * window - 1}"
            )


@dataclass
class ToMeSettings(_Settings):
    """ToMe bipartite soft matching with unmerge (METHODS.md section 4).

    Attributes:
        r: tokens merged per attention window in every block from ``location`` on.
        proportional_attention: add log(tokens merged) to the attention logits of merged keys.
    """

    _KEY: ClassVar[str] = "expedite.tome"
    _TITLE: ClassVar[str] = "ToMe"
    _CHECKS: ClassVar[Dict[str, Callable[[str, Any], Any]]] = {
        "r": _int_check(0),
        "proportional_attention": _check_bool,
    }

    r: int = 8
    proportional_attention: bool = True

    def check_host(self, layout: HostLayout) -> None:
        window = layout.window
        if window > 0 and self.r > (window * window) // 2:
            raise ValueError(
                f"{self._KEY}.r={self.r!r}: a block can merge at most half the {window * window} "
                f"tokens of a {window}x{window} {layout.name} window; allowed: 0 to {(window * window) // 2}"
            )


def _check_keep(key: str, value: Any) -> Union[int, float]:
    if _is_int(value) and value >= 1:
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and 0.0 < value <= 1.0:
        return value
    raise _refuse(
        key, value, "it must be a ratio, a float in (0, 1] (e.g. 0.5), or a count of tokens per "
        "window, an int >= 1 (e.g. 98); not a bool or string"
    )


@dataclass
class ITPNSettings(_Settings):
    """Fast-iTPN's token migration and token gathering, training-free (METHODS.md section 3).

    Each works alone (``keep=1.0`` gathers only; ``gather=0`` migrates only) or with the other;
    gathering also runs on top of Expedit (``expedite.expedit.gather``).

    Attributes:
        keep: tokens each attention window keeps from block ``location`` on: a ratio (float in
            (0, 1], rounded up per window) or a count (int). The others migrate: later blocks skip
            them and they return unchanged, in place, before the neck. 1.0 keeps every token.
        score: what makes a token worth keeping: "neighbour" (least similar, by cosine, to the
            mean of its 3x3 neighbours) or "attention" (most attention received within its window
            in block ``location``, from that block's own queries and keys).
        gather: token gathering: the global-attention blocks from ``location`` on attend to
            ``gather`` x ``gather`` gathering tokens (keys and values pooled over regions of the
            map, at the regions' centres) instead of to every token; 0 is off.
    """

    _KEY: ClassVar[str] = "expedite.itpn"
    _TITLE: ClassVar[str] = "Fast-iTPN"
    _CHECKS: ClassVar[Dict[str, Callable[[str, Any], Any]]] = {
        "keep": _check_keep,
        "score": _choice_check(MIGRATION_SCORES),
        "gather": _int_check(0),
    }

    keep: Union[int, float] = 0.5
    score: str = "neighbour"
    gather: int = 0

    def check_host(self, layout: HostLayout) -> None:
        window = layout.window
        if window > 0 and isinstance(self.keep, int) and self.keep > window * window:
            raise ValueError(
                f"{self._KEY}.keep={self.keep!r} is above the {window * window} tokens of a "
                f"{window}x{window} {layout.name} window; allowed: a count from 1 to "
                f"{window * window}, or a ratio in (0, 1]"
            )


# The methods ``expedite.method`` may name, each with its settings class (and config field).
METHODS: Dict[str, type] = {
    "expedit": ExpeditSettings, "ailurus": AiluRusSettings, "tome": ToMeSettings, "itpn": ITPNSettings,
}

_COMMON_CHECKS: Dict[str, Callable[[str, Any], Any]] = {
    "enabled": _check_bool,
    "method": _choice_check(tuple(METHODS)),
    "location": _int_check(0),
}


@dataclass
class ExpediteConfig:
    """Token reduction settings of one host.

    Attributes:
        enabled: off gives exactly the host model.
        method: the method that runs: "expedit" (token clustering + reconstruction), "ailurus"
            (density-peak merging, unmerged at the end), "tome" (bipartite merging in every
            later block, unmerged at the end) or "itpn" (Fast-iTPN's token migration).
        location: the number of blocks that run at full resolution; the method reduces the
            tokens before block ``location`` (0-based) and restores the full map after the last
            reduced block (ViT: the last block; Swin: the last block of that stage).
        expedit, ailurus, tome, itpn: each method's own settings (an instance or a mapping of
            fields).

    Every field is validated on construction and on each later assignment (one-line errors
    naming ``expedite.<field>`` or ``expedite.<method>.<field>``, the value, its type and what
    is allowed).
    """

    enabled: bool = True
    method: str = "expedit"
    location: int = 8
    expedit: ExpeditSettings = field(default_factory=ExpeditSettings)
    ailurus: AiluRusSettings = field(default_factory=AiluRusSettings)
    tome: ToMeSettings = field(default_factory=ToMeSettings)
    itpn: ITPNSettings = field(default_factory=ITPNSettings)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in METHODS:
            object.__setattr__(self, name, METHODS[name].from_value(value))
            return
        check = _COMMON_CHECKS.get(name)
        if check is None:
            owners = [m for m, cls in METHODS.items() if name in cls.setting_names()]
            hint = f" ({owners[0]}'s is expedite.{owners[0]}.{name})" if owners else ""
            known = ", ".join(f.name for f in fields(self))
            raise AttributeError(f"expedite.{name} is not a setting{hint}; the settings are: {known}")
        object.__setattr__(self, name, check(f"expedite.{name}", value))

    @property
    def gather(self) -> int:
        """Token gathering's regions per side in the global blocks from ``location`` on, set by
        the methods that gather (Fast-iTPN, Expedit); 0: full global attention."""
        return getattr(self.settings, "gather", 0)

    @property
    def keeps_map(self) -> bool:
        """True when the method leaves the full map as it is (Fast-iTPN keeping every token, e.g.
        to gather alone); the blocks then run as the host's, gathering aside."""
        return self.method == "itpn" and isinstance(self.itpn.keep, float) and self.itpn.keep == 1.0

    @property
    def settings(self) -> _Settings:
        """The chosen method's settings."""
        return getattr(self, self.method)

    def check_host(self, layout: HostLayout) -> None:
        """Raise a one-line ValueError (naming the key, the value and the allowed range) if these
        settings cannot run on a host with this layout.

        The one host check: every host calls it at construction (when enabled) and at each
        forward, and the config loader calls it before building, with the host's layout.
        """
        if not self.enabled:
            return
        if self.location >= layout.num_blocks:
            detail = f"{layout.description}, so " if layout.description else ""
            raise ValueError(
                f"expedite.location={self.location!r} is past the last {layout.name} block: "
                f"{detail}location must lie in [0, {layout.num_blocks - 1}] "
                f"(the host has {layout.num_blocks} blocks)"
            )
        if self.gather > 0 and not any(i >= self.location for i in layout.global_blocks):
            where = f"its global blocks are {list(layout.global_blocks)}" if layout.global_blocks else "it has none"
            raise ValueError(
                f"expedite.{self.method}.gather={self.gather!r}: gathering replaces global attention, and "
                f"this {layout.name} has no global-attention block from location {self.location} on "
                f"({where}); set expedite.{self.method}.gather=0"
            )
        if self.method != "expedit" and not self.keeps_map:
            conv = [i for i in layout.conv_blocks if i >= self.location]
            if conv:
                raise ValueError(
                    f"expedite.method={self.method!r}: {layout.name} blocks {conv} end in a "
                    f"convolution over the token map, which an irregular token set cannot take; "
                    f"use expedite.location > {max(conv)} or method 'expedit'"
                )
        self.settings.check_host(layout)
