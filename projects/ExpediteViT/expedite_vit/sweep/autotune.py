"""Auto-tuning without labels: the point that reaches a target speed-up and agrees best with the
baseline's own predictions, written as a LazyConfig that imports the user's config."""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

from ..runtime.config import ConfigError, split_override
from .grid import format_point
from .points import SPEEDUP_MEASURES

__all__ = ["TargetNotReachedError", "check_target", "choose_point", "tuned_config_text", "write_tuned_config"]


class TargetNotReachedError(ValueError):
    """No measured point is as fast as the target; the message names the best reached."""


def check_target(target: float) -> None:
    """Refuse a target speed-up that no token reduction setting could mean, before measuring."""
    if not (isinstance(target, (int, float)) and math.isfinite(target) and target > 1.0):
        raise ConfigError(f"--target-speedup {target!r} must be a number above 1 (the baseline's speed is 1)")


def choose_point(records: Sequence[Mapping], target: float, measure: str) -> Mapping:
    """Among the records at or above ``target`` by ``measure`` (a key of ``SPEEDUP_MEASURES``),
    the one with the highest agreement with the baseline (the faster one on a tie). Needs no
    labels.

    Raises:
        TargetNotReachedError: no record reaches the target (the best reached is named), or
            none that does has an agreement to rank it by.
    """
    key, description = SPEEDUP_MEASURES[measure]
    measured = [r for r in records if r["summary"][key] is not None]
    if not measured:
        raise TargetNotReachedError(f"no point has a {description} to compare with the target")
    reaching = [r for r in measured if r["summary"][key] >= target]
    if not reaching:
        best = max(measured, key=lambda r: r["summary"][key])
        raise TargetNotReachedError(
            f"no point reaches the target {description} of {target:.2f}x: the best reached is "
            f"{best['summary'][key]:.2f}x ({format_point(best['point'])}); lower the target or "
            f"widen the grid"
        )
    ranked = [r for r in reaching if r["summary"]["agreement"] is not None]
    if not ranked:
        raise TargetNotReachedError(
            f"{len(reaching)} points reach {target:.2f}x, but none has an agreement with the baseline "
            f"to rank them by (no predictions compared: lower --score-threshold?)"
        )
    return max(ranked, key=lambda r: (r["summary"]["agreement"], r["summary"][key]))


def _plain_override(override: str) -> str:
    """``key=value`` without hydra's "+" (add a key), which our loader checks and strips too."""
    key, value, _ = split_override(override)
    return f"{key}={value}"


def tuned_config_text(
    config_file: str, top_level_keys: Sequence[str], overrides: Sequence[str], record: Mapping, target: float,
    measure: str,
) -> str:
    """A LazyConfig file: the user's config (by absolute path) with their overrides, then the chosen
    point's; ``LazyConfig.load`` and ``--config-file`` read it like any config."""
    key, description = SPEEDUP_MEASURES[measure]
    summary = record["summary"]
    override_lines = [f"        {_plain_override(o)!r}," for o in [*overrides, *record["overrides"]]]
    return "\n".join(
        [
            f'"""Auto-tuned by tools/sweep.py for a {description} of at least {target:g}x.',
            "",
            f"Chosen: {format_point(record['point'])}: {summary[key]:.2f}x, agreement with the baseline "
            f"{summary['agreement']:.4f}. Relative paths in the overrides are relative to the working folder.",
            '"""',
            "from detectron2.config import LazyConfig",
            "",
            f"_cfg = LazyConfig.load({os.path.abspath(config_file)!r})",
            "LazyConfig.apply_overrides(",
            "    _cfg,",
            "    [",
            *override_lines,
            "    ],",
            ")",
            *[f"{name} = _cfg.{name}" for name in top_level_keys],
            "",
        ]
    )


def write_tuned_config(path: str, cfg, config_file: str, overrides: Sequence[str], record: Mapping, target: float,
                       measure: str) -> None:
    """Write :func:`tuned_config_text` for ``cfg`` (the loaded user config) to ``path``."""
    with open(path, "w") as f:
        f.write(tuned_config_text(config_file, list(cfg.keys()), overrides, record, target, measure))
