"""The files of a sweep: all points as JSON and CSV, and the Pareto fronts as JSON."""
from __future__ import annotations

import csv
from typing import Dict, List, Mapping, Sequence

from ..benchmark.report import write_json
from .pareto import pareto_records
from .points import SPEEDUP_MEASURES

__all__ = ["POINT_COLUMNS", "compact", "pareto_fronts", "write_points_csv", "write_points_json", "write_pareto_json"]

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
    names = list(dict.fromkeys(name for r in records for name in r["point"]))
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
