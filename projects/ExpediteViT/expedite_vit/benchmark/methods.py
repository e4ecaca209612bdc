"""Every token-reduction method on the same model and images, in one run (``--methods``).

Each method runs at the settings the config holds for it (its preset: a model config's
``expedite`` node keeps every method's settings), or, with ``match_flops``, at the value of its
budget setting whose backbone FLOPs ratio is nearest the first method's: ToMe's ``r``, AiluRus's
similarity ``threshold`` (at each of a few anchor budgets: fewer anchors leave more tokens
unmerged, more anchors keep more tokens, so FLOPs are not monotonic in the budget), Expedit's
``grid``, Fast-iTPN's ``keep`` ratio (its ``gather`` and ``score`` as the config holds them). When no value reaches it within 5% at the config's ``location`` (ToMe merges at most
half a window per block), earlier locations are tried too. FLOPs are counted by fvcore on the backbone of
one model whose settings are changed in place (they are read at every forward), so the search
builds nothing.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import torch
from omegaconf import DictConfig
from tabulate import tabulate
from torch import nn

from expedite import METHODS, ExpediteHost

from ..runtime.config import ConfigError
from ..runtime.inputs import backbone_inputs
from ..runtime.models import backbone_modules, build_model
from .flops import count_flops
from .runner import BenchmarkSettings, load_inputs

__all__ = [
    "BUDGET_SETTINGS",
    "format_matching",
    "format_method_table",
    "match_backbone_flops",
    "method_points",
    "parse_methods",
]

logger = logging.getLogger(__name__)

# The setting that sets each method's token budget, and how to search it: an int searched over
# its range, or a float bisected (FLOPs fall as ToMe's r rises, and as AiluRus's threshold and
# Fast-iTPN's keep ratio drop).
BUDGET_SETTINGS = {"expedit": "grid", "tome": "r", "ailurus": "threshold", "itpn": "keep"}
# The ranges the float budget settings are bisected over.
FLOAT_RANGES = {"ailurus": (-1.0, 1.0), "itpn": (0.02, 1.0)}
# AiluRus's anchor budgets tried when matching (those that fit a window), besides the config's.
AILURUS_BUDGETS = (2, 4, 8, 16, 32, 64)
# Largest relative distance between a matched and the target FLOPs ratio that counts as matched.
MATCH_TOLERANCE = 0.05
_BISECTION_STEPS = 10


def parse_methods(text: str) -> List[str]:
    """``"expedit,tome"`` -> ["expedit", "tome"], refusing unknown or repeated names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if not names or unknown or len(set(names)) != len(names):
        problem = f"unknown {unknown}" if unknown else ("repeated names" if names else "no method")
        raise ConfigError(f"--methods {text!r}: {problem}; give a comma-separated list of {', '.join(METHODS)}")
    return names


def _hosts(model: nn.Module) -> List[ExpediteHost]:
    hosts = [m for m in model.modules() if isinstance(m, ExpediteHost)]
    if not hosts:
        raise ConfigError("the model has no token-reduction host (no 'expedite' setting in its backbone)")
    return hosts


def _set(hosts: Sequence[ExpediteHost], method: str, location: int, settings: Mapping = ()) -> None:
    for host in hosts:
        host.expedite.enabled = True
        host.expedite.method = method
        host.expedite.location = location
        for name, value in dict(settings).items():
            setattr(getattr(host.expedite, method), name, value)


def _int_candidates(method: str, hosts: Sequence[ExpediteHost]) -> range:
    window = min(host.token_reduction.window for host in hosts)
    return range(1, window + 1) if method == "expedit" else range(0, window * window // 2 + 1)


def _fixed_settings(method: str, hosts: Sequence[ExpediteHost]) -> List[Dict]:
    """Settings held fixed while the budget setting is searched: for AiluRus each anchor budget
    that fits a window, the config's first."""
    if method != "ailurus":
        return [{}]
    tokens = min(host.token_reduction.window for host in hosts) ** 2
    own = hosts[0].expedite.ailurus.budget
    budgets = [own] + [b for b in AILURUS_BUDGETS if b != own and (tokens <= 0 or b <= tokens)]
    return [{"budget": b} for b in budgets]


def _nearest_int(ratio_of: Callable[[int], float], candidates: range, target: float) -> int:
    """The candidate with the ratio nearest ``target``, by bisection: ratios fall with the
    value for Expedit's grid and rise with it for ToMe's r."""
    low, high = candidates[0], candidates[-1]
    rising = ratio_of(high) >= ratio_of(low)
    while high - low > 1:
        mid = (low + high) // 2
        if (ratio_of(mid) < target) == rising:
            low = mid
        else:
            high = mid
    return min((low, high), key=lambda v: abs(ratio_of(v) - target))


def _nearest_falling(ratio_of: Callable[[float], float], bounds: Tuple[float, float], target: float) -> float:
    """The value in ``bounds`` with the ratio nearest ``target``, by bisection, for a ratio that
    falls as the value rises (AiluRus's threshold: fewer tokens are similar enough to merge;
    Fast-iTPN's keep: more tokens stay)."""
    low, high = bounds
    if ratio_of(low) <= target:  # even the most reducing value does not get there
        return low
    for _ in range(_BISECTION_STEPS):
        mid = (low + high) / 2
        if ratio_of(mid) > target:
            low = mid
        else:
            high = mid
    return round(min((low, high), key=lambda v: abs(ratio_of(v) - target)), 4)


def match_backbone_flops(
    cfg: DictConfig, settings: BenchmarkSettings, methods: Sequence[str]
) -> Dict[str, Dict]:
    """For every method after the first, the value of its budget setting whose backbone FLOPs
    ratio (on the first image) is nearest the first method's at the config's settings.

    Returns {method: {"point": {...}, "flops_ratio": r, "target": t, "matched": bool}}; the first
    method's point is ``{"method": name}`` (its preset).
    """
    device = torch.device(settings.device)
    model = build_model(cfg, device)
    inputs, _ = load_inputs(cfg, model, settings)
    with torch.no_grad():
        x = backbone_inputs(model, inputs[:1], settings.image_size)[0]
    backbone = backbone_modules(model)["backbone"]
    hosts = _hosts(model)

    def gflops() -> float:
        return count_flops(backbone, x)["total"] / 1e9

    for host in hosts:
        host.expedite.enabled = False
    baseline = gflops()
    cache: Dict[Tuple, float] = {}
    location = hosts[0].expedite.location

    def ratio(method: str, at: int, **settings) -> float:
        key = (method, at, tuple(sorted(settings.items())))
        if key not in cache:
            _set(hosts, method, at, settings)
            cache[key] = baseline / gflops()
            described = " ".join(f"{k}={v}" for k, v in settings.items())
            logger.info(f"  {method} location={at} {described}: backbone FLOPs ratio {cache[key]:.3f}")
        return cache[key]

    def within(reached: float, target: float) -> bool:
        return abs(reached / target - 1) <= MATCH_TOLERANCE

    reference = methods[0]
    target = ratio(reference, location)
    matched = {reference: {"point": {"method": reference}, "flops_ratio": target, "target": target, "matched": True}}
    for method in methods[1:]:
        name = BUDGET_SETTINGS[method]
        logger.info(f"Matching {method}'s {name} (and location if need be) to backbone FLOPs ratio {target:.3f} ({reference}) ...")
        best = None
        for at in range(location, -1, -1):
            for fixed in _fixed_settings(method, hosts):
                if method in FLOAT_RANGES:
                    value = _nearest_falling(lambda v: ratio(method, at, **fixed, **{name: v}), FLOAT_RANGES[method], target)
                else:
                    value = _nearest_int(lambda v: ratio(method, at, **fixed, **{name: v}),
                                         _int_candidates(method, hosts), target)
                found = {**fixed, name: value}
                reached = ratio(method, at, **found)
                if best is None or abs(reached - target) < abs(best[2] - target):
                    best = (at, found, reached)
                if within(reached, target):
                    break
            if within(best[2], target):
                break
        at, found, reached = best
        point = {"method": method, **{f"{method}.{k}": v for k, v in found.items()}}
        if at != location:
            point["location"] = at
        matched[method] = {"point": point, "flops_ratio": reached, "target": target, "matched": within(reached, target)}
        if not matched[method]["matched"]:
            logger.warning(
                f"{method}: the nearest backbone FLOPs ratio is {reached:.3f} ({name}={value}), not within "
                f"{MATCH_TOLERANCE:.0%} of {target:.3f}; it is compared there"
            )
    return matched


def method_points(methods: Sequence[str]) -> List[Dict]:
    """Each method at the settings the config holds for it."""
    return [{"method": method} for method in methods]


def format_matching(matched: Mapping[str, Mapping]) -> str:
    """One row per method: the settings found and the backbone FLOPs ratio they reach."""
    rows = [
        [method, " ".join(f"{k}={v}" for k, v in m["point"].items() if k != "method") or "(preset)",
         f"{m['flops_ratio']:.3f}x", f"{m['target']:.3f}x", "yes" if m["matched"] else "no"]
        for method, m in matched.items()
    ]
    return tabulate(rows, headers=["method", "settings", "backbone FLOPs", "target", "within 5%"], tablefmt="pipe")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_method_table(results: Sequence[Mapping]) -> str:
    """One row per method: its settings, FLOPs and latency ratios, agreement and task metric."""
    rows = []
    for result in results:
        summary = result["summary"]
        node = next(iter(result["expedite"].values()))
        method = summary["method"]
        chosen = {k: v for k, v in result["point"].items() if k.startswith(f"{method}.")}
        chosen = chosen or {f"{method}.{BUDGET_SETTINGS[method]}": node.get(f"{method}.{BUDGET_SETTINGS[method]}")}
        settings = " ".join([f"location={node.get('location')}"] + [f"{k.split('.', 1)[1]}={v}" for k, v in chosen.items()])
        metric = summary["metric"]
        delta = None if metric is None or summary["baseline_metric"] is None else metric - summary["baseline_metric"]
        rows.append([
            method, settings, _fmt(summary["flops_ratio"], ".2f") + "x", _fmt(summary["latency_speedup"], ".2f") + "x",
            _fmt(summary["e2e_latency_speedup"], ".2f") + "x", _fmt(summary["agreement"], ".3f"),
            f"{_fmt(metric, '.2f')} ({_fmt(delta, '+.2f')})" if metric is not None else "-",
        ])
    metric_name = next((r["summary"]["metric_name"] for r in results if r["summary"]["metric_name"]), "metric")
    headers = ["method", "settings", "backbone FLOPs", "backbone latency", "end-to-end latency",
               "agreement", f"{metric_name} (vs baseline)"]
    return tabulate(rows, headers=headers, tablefmt="pipe")
