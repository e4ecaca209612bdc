"""The Pareto front of measured points: none faster and at least as good, or better and at
least as fast (both coordinates maximised)."""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

__all__ = ["pareto_front", "pareto_records"]


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points (x, y) that no other point dominates, by increasing x.

    A point dominates another when it is at least as large in both coordinates and larger in
    one; equal points do not dominate each other, so all of them are on the front.
    """
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front = []
    best_y: Optional[float] = None
    best_x: Optional[float] = None  # the largest x among the points reaching best_y
    for index in order:
        x, y = points[index]
        # Every point seen so far has x at least as large, so this one is dominated exactly
        # when one of them has a larger y, or the same y at a larger x.
        if best_y is None or y > best_y:
            best_y, best_x = y, x
            front.append(index)
        elif y == best_y and x == best_x:
            front.append(index)
    return front[::-1]


def pareto_records(records: Sequence[Mapping], x_key: str, y_key: str) -> List[Mapping]:
    """The records on the front of ``summary[x_key]`` against ``summary[y_key]``, by increasing
    ``x_key``; records missing either value are left out."""
    usable = [r for r in records if r["summary"].get(x_key) is not None and r["summary"].get(y_key) is not None]
    front = pareto_front([(r["summary"][x_key], r["summary"][y_key]) for r in usable])
    return [usable[i] for i in front]
