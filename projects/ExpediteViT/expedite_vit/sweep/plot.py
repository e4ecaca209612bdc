"""The sweep's picture: speed-up against the task metric (or agreement with the baseline), one
curve per method (its Pareto front over its points), the presets, the published operating points
and the auto-tuned point marked."""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .pareto import pareto_records
from .points import SPEEDUP_MEASURES

__all__ = ["plot_sweep"]


def _xy(records: Sequence[Mapping], x_key: str, y_key: str):
    return [r["summary"][x_key] for r in records], [r["summary"][y_key] for r in records]


def plot_sweep(
    records: Sequence[Mapping],
    path: str,
    *,
    measure: str,
    y_key: str,
    y_label: str,
    title: str = "",
    baseline_y: Optional[float] = None,
    published: Sequence[Mapping] = (),
    target: Optional[float] = None,
    chosen: Optional[Mapping] = None,
) -> None:
    """Write the plot as a PNG to ``path``.

    Args:
        records: measured points (:func:`~.points.measure_points` results, with ``preset``).
        measure: the x axis, a key of ``SPEEDUP_MEASURES``.
        y_key: the summary value on the y axis ("metric" or "agreement").
        baseline_y: the baseline's y value, drawn at speed-up 1.
        published: operating points from elsewhere, dicts with "label", "speedup" and "value".
        target, chosen: the auto-tuner's target speed-up and the point it chose.
    """
    x_key, x_label = SPEEDUP_MEASURES[measure]
    usable = [r for r in records if r["summary"][x_key] is not None and r["summary"][y_key] is not None]
    by_method = defaultdict(list)
    for record in usable:
        by_method[record["summary"]["method"]].append(record)

    figure = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(figure)  # renders off screen, whatever matplotlib backend the process uses
    axes = figure.add_subplot()
    for method, method_records in sorted(by_method.items()):
        scatter = axes.scatter(*_xy(method_records, x_key, y_key), s=14, alpha=0.45, label=f"{method} points")
        front = pareto_records(method_records, x_key, y_key)
        axes.plot(*_xy(front, x_key, y_key), "-o", color=scatter.get_facecolor()[0][:3], markersize=4,
                  label=f"{method} Pareto front")
    if len(by_method) > 1:
        axes.plot(*_xy(pareto_records(usable, x_key, y_key), x_key, y_key), "--", color="black", linewidth=1,
                  label="Pareto front, all methods")
    presets = [r for r in usable if r.get("preset")]
    if presets:
        axes.scatter(*_xy(presets, x_key, y_key), marker="*", s=180, color="gold", edgecolor="black", zorder=3,
                     label="preset (the config's settings)")
    if baseline_y is not None:
        axes.axhline(baseline_y, color="grey", linestyle=":", linewidth=1)
        axes.scatter([1.0], [baseline_y], marker="X", s=60, color="grey", zorder=3, label="baseline")
    for point in published:
        axes.scatter([point["speedup"]], [point["value"]], marker="D", s=40, color="crimson", zorder=3)
        axes.annotate(point["label"], (point["speedup"], point["value"]), textcoords="offset points",
                      xytext=(5, 5), fontsize=8, color="crimson")
    if target is not None:
        axes.axvline(target, color="tab:green", linestyle=":", linewidth=1, label=f"target {target:g}x")
    if chosen is not None and chosen["summary"][y_key] is not None:
        axes.scatter([chosen["summary"][x_key]], [chosen["summary"][y_key]], s=160, facecolors="none",
                     edgecolors="tab:green", linewidths=2, zorder=4, label="auto-tuned")
    axes.set_xlabel(f"speed-up: {x_label}")
    axes.set_ylabel(y_label)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path)
