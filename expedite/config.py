"""Settings of token reduction, as one plain object a LazyConfig node instantiates.

In a model config it lives in a node named ``expedite`` (for ViTDet ``model.backbone.net.expedite``)
so every field can be overridden from the command line, e.g.
``model.backbone.net.expedite.enabled=False`` or ``model.backbone.net.expedite.grid=8``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple, Union

__all__ = ["ExpediteConfig"]


@dataclass
class ExpediteConfig:
    """Expedit token clustering + reconstruction settings.

    Attributes:
        enabled: off gives exactly the host model.
        location: alpha, the number of blocks that run at full resolution; clustering runs
            before block ``location`` (0-based), reconstruction after the last reduced block.
        grid: cluster grid per attention window (an int for a square grid), e.g. 7 for 14x14
            windows -> 7x7.
        n_iters: rounds of soft k-means.
        cluster_temperature: multiplier t of softmax(-t * squared distance); 0.01 means tau=100.
        locality_window: odd side of the square of centres a token may join (radius = side // 2).
        k: clusters mixed to rebuild each token.
        reconstruct_temperature: multiplier t' of the reconstruction weights exp(-t' * distance).
        normalize: "sum" (weights sum to one, our default) or "l2" (the official code's choice).
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

    def __post_init__(self):
        grid = (self.grid, self.grid) if isinstance(self.grid, int) else tuple(self.grid)
        if len(grid) != 2 or not all(isinstance(g, int) and g >= 1 for g in grid):
            raise ValueError(f"expedite.grid must be a positive int or a pair of them, got {self.grid!r}")
        self.grid = grid
        checks = [
            (isinstance(self.location, int) and self.location >= 0, "location", "a non-negative int"),
            (isinstance(self.n_iters, int) and self.n_iters >= 0, "n_iters", "a non-negative int"),
            (self.cluster_temperature > 0, "cluster_temperature", "positive"),
            (self.reconstruct_temperature > 0, "reconstruct_temperature", "positive"),
            (
                isinstance(self.locality_window, int)
                and self.locality_window >= 1
                and self.locality_window % 2 == 1,
                "locality_window",
                "an odd positive int (a square centred on the token's own cell)",
            ),
            (isinstance(self.k, int) and self.k >= 1, "k", "an int >= 1"),
            (self.normalize in ("sum", "l2"), "normalize", "'sum' or 'l2'"),
        ]
        for ok, name, need in checks:
            if not ok:
                raise ValueError(f"expedite.{name} must be {need}, got {getattr(self, name)!r}")

    @property
    def radius(self) -> int:
        return self.locality_window // 2

    @property
    def num_clusters(self) -> int:
        return self.grid[0] * self.grid[1]

    def check_host(self, num_blocks: int, window: int) -> None:
        """Raise if these settings cannot run on a host with ``num_blocks`` blocks whose
        clustering windows are ``window`` tokens wide."""
        if not self.enabled:
            return
        if self.location >= num_blocks:
            raise ValueError(
                f"expedite.location={self.location} is outside the blocks: the host has "
                f"{num_blocks} blocks, so location must lie in [0, {num_blocks - 1}]"
            )
        if max(self.grid) > window:
            raise ValueError(
                f"expedite.grid {self.grid[0]}x{self.grid[1]} is larger than the "
                f"{window}x{window} window it clusters"
            )
        if self.k > self.num_clusters:
            raise ValueError(
                f"expedite.k={self.k} is above the cluster count {self.num_clusters} "
                f"({self.grid[0]}x{self.grid[1]} per window)"
            )
