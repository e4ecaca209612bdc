"""The files of a sweep: all points as JSON and CSV, the Pareto fronts as JSON, and on labelled
images summary.json: how well agreement ranks points as the task metric does (Spearman), and how
much metric the label-free auto-tuner gives away at a target speed-up."""
from __future__ import annotations

import csv
import math
from typing import Dict, List, Mapping, Optional, Sequence

from ..benchmark.report import write_json
from .autotune import TargetNotReachedError, choose_point
from .grid import METHOD, format_point
from .pareto import pareto_records
from .points import SPEEDUP_MEASURES

__all__ = [
    "GAP_TARGETS", "POINT_COLUMNS", "autotune_gap", "average_ranks", "compact", "format_labelled_summary",
    "labelled_summary", "pareto_fronts", "rank_correlation", "spearman", "write_points_csv", "write_points_json",
    "write_pareto_json", "write_summary_json",
]

# Summary values in points.csv, after the method, the flags and the settings.
POINT_COLUMNS = (
    "flops_ratio", "latency_speedup", "e2e_latency_speedup", "agreement", "metric_name", "metric", "baseline_metric",
)
FRONT_VALUES = ("agreement", "metric")


def compact(record: Mapping) -> Dict:
    """A point in brief: its settings, overrides and scalars, without the full measurements."""
    return {key: record[key] for key in ("point", "overrides", "summary", "preset")}


def pareto_fronts(records: Sequence[Mapping], measure: str) -> Dict[str, List[Mapping]]:
    """{"agreement": front, "metric": front} of speed-up by ``measure`` against each value that
    was measured."""
    x_key = SPEEDUP_MEASURES[measure][0]
    fronts = {y: pareto_records(records, x_key, y) for y in FRONT_VALUES}
    return {y: front for y, front in fronts.items() if front}


def write_points_json(path: str, sweep: Mapping, records: Sequence[Mapping]) -> None:
    write_json({"sweep": sweep, "points": list(records)}, path)


def write_pareto_json(path: str, measure: str, fronts: Mapping[str, Sequence[Mapping]]) -> None:
    x_key, description = SPEEDUP_MEASURES[measure]
    write_json(
        {"x": x_key, "x_description": description, "fronts": {y: [compact(r) for r in f] for y, f in fronts.items()}},
        path,
    )


def write_points_csv(path: str, records: Sequence[Mapping], on_front: Sequence[Mapping]) -> None:
    """One row per point: method, preset and Pareto flags, every setting the points vary (read
    from the effective settings, so the preset row has them too), the summary values."""
    # The method has its own column, also when the grid sweeps it.
    names = [name for name in dict.fromkeys(name for r in records for name in r["point"]) if name != METHOD]
    front_ids = {id(r) for r in on_front}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "preset", "pareto", *names, *POINT_COLUMNS, "overrides"])
        for record in records:
            settings = next(iter(record["expedite"].values()))
            writer.writerow(
                [
                    record["summary"]["method"],
                    int(bool(record.get("preset"))),
                    int(id(record) in front_ids),
                    *[settings.get(name) for name in names],
                    *[record["summary"][column] for column in POINT_COLUMNS],
                    " ".join(record["overrides"]),
                ]
            )


# ---- does agreement rank points as the labelled metric does? ----------------------------------

# Targets at which summary.json reports the auto-tune gap, besides the one the user asked for.
GAP_TARGETS = (1.25, 1.5, 2.0, 2.5, 3.0)


def average_ranks(values: Sequence[float]) -> List[float]:
    """Ranks 1..n of ``values`` (smallest first), tied values sharing the average of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1  # positions start..end hold ranks start+1..end+1
        start = end + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation of paired values: Pearson's correlation of their average ranks.
    None when it is undefined (fewer than two pairs, or all of one side tied)."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman needs paired values, got {len(xs)} and {len(ys)}")
    if len(xs) < 2:
        return None
    rx, ry = average_ranks(xs), average_ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def _labelled(records: Sequence[Mapping]) -> List[Mapping]:
    """The records with both an agreement and a task metric."""
    return [r for r in records if r["summary"].get("agreement") is not None and r["summary"].get("metric") is not None]


def rank_correlation(records: Sequence[Mapping], measure: Optional[str] = None, target: Optional[float] = None) -> Dict:
    """Spearman's correlation between agreement and the task metric over the records that have
    both (with ``measure`` and ``target``: only those at or above the target speed-up), and how
    many points it is over."""
    labelled = _labelled(records)
    if target is not None:
        key = SPEEDUP_MEASURES[measure][0]
        labelled = [r for r in labelled if r["summary"].get(key) is not None and r["summary"][key] >= target]
    rho = spearman([r["summary"]["agreement"] for r in labelled], [r["summary"]["metric"] for r in labelled])
    return {"spearman": rho, "points": len(labelled)}


def autotune_gap(records: Sequence[Mapping], target: float, measure: str) -> Optional[Dict]:
    """How much task metric label-free auto-tuning gives away at ``target``: the metric of the
    point :func:`choose_point` picks (best agreement among those at or above the target) minus
    the best metric among the points at or above the target (0 when it picks the best, negative
    otherwise). None when no point reaches the target or the chosen one has no metric."""
    key = SPEEDUP_MEASURES[measure][0]
    try:
        chosen = choose_point(records, target, measure)
    except TargetNotReachedError:
        return None
    reaching = [r for r in records if r["summary"].get(key) is not None and r["summary"][key] >= target
                and r["summary"].get("metric") is not None]
    if chosen["summary"].get("metric") is None or not reaching:
        return None
    best = max(reaching, key=lambda r: (r["summary"]["metric"], r["summary"][key]))
    return {
        "target": target,
        "chosen": compact(chosen),
        "best": compact(best),
        "chosen_metric": chosen["summary"]["metric"],
        "best_metric": best["summary"]["metric"],
        "gap": chosen["summary"]["metric"] - best["summary"]["metric"],
        "points_at_target": len(reaching),
    }


def labelled_summary(records: Sequence[Mapping], measure: str, target: Optional[float] = None,
                     gap_targets: Sequence[float] = GAP_TARGETS) -> Optional[Dict]:
    """What the labels say about label-free tuning, for summary.json: the rank correlation of
    agreement with the task metric (over all points, and over those reaching ``target``), and the
    auto-tune gap at ``target`` and at each of ``gap_targets`` that some point reaches. None when
    no point has a task metric (unlabelled images)."""
    labelled = _labelled(records)
    if not labelled:
        return None
    first = labelled[0]["summary"]
    targets = sorted({*gap_targets, *([target] if target is not None else [])})
    gaps = [gap for gap in (autotune_gap(records, t, measure) for t in targets) if gap is not None]
    return {
        "metric_name": first["metric_name"],
        "baseline_metric": first["baseline_metric"],
        "speedup_measure": measure,
        "target_speedup": target,
        "rank_correlation": rank_correlation(records),
        "rank_correlation_at_target": None if target is None else rank_correlation(records, measure, target),
        "autotune_gap": None if target is None else autotune_gap(records, target, measure),
        "autotune_gaps": gaps,
    }


def format_labelled_summary(summary: Mapping) -> str:
    """summary.json's figures as lines for the terminal."""
    metric = summary["metric_name"]
    correlation = summary["rank_correlation"]

    def rho(value):
        return "n/a" if value is None else f"{value:+.3f}"

    lines = [f"Rank correlation (Spearman) of agreement with {metric}: {rho(correlation['spearman'])} over "
             f"{correlation['points']} points"]
    at_target = summary["rank_correlation_at_target"]
    if at_target is not None:
        lines[-1] += (f"; {rho(at_target['spearman'])} over the {at_target['points']} points at or above "
                      f"{summary['target_speedup']:g}x")
    if summary["autotune_gaps"]:
        lines.append(f"Auto-tune gap ({metric} of the best-agreement point minus the best {metric}, among the "
                     f"points at or above each target {SPEEDUP_MEASURES[summary['speedup_measure']][1]}):")
        for gap in summary["autotune_gaps"]:
            count = gap["points_at_target"]
            lines.append(f"  >= {gap['target']:g}x: {gap['gap']:+.2f} (chosen {format_point(gap['chosen']['point'])}: "
                         f"{gap['chosen_metric']:.2f}; best {format_point(gap['best']['point'])}: "
                         f"{gap['best_metric']:.2f}; {count} point{'s' * (count != 1)})")
    return "\n".join(lines)


def write_summary_json(path: str, summary: Mapping) -> None:
    write_json(summary, path)
