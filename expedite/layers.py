"""Thin modules over the functional core. They hold settings only: no parameters, no buffers,
so a host's ``state_dict`` is the same with token reduction on or off."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .config import ExpediteConfig
from .windows import WindowClusterState, cluster_windows, reconstruct_windows

__all__ = ["TokenClusteringLayer", "TokenReconstructionLayer"]


class TokenClusteringLayer(nn.Module):
    """Clusters each attention window of a (B, H, W, C) map to ``config.grid`` centres."""

    def __init__(self, config: ExpediteConfig, window: int):
        super().__init__()
        self.config = config
        self.window = window

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, WindowClusterState]:
        cfg = self.config
        return cluster_windows(
            x, self.window, cfg.grid, cfg.n_iters, cfg.cluster_temperature, cfg.radius
        )

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"window={self.window}, grid={cfg.grid}, n_iters={cfg.n_iters}, "
            f"t={cfg.cluster_temperature}, locality_window={cfg.locality_window}"
        )


class TokenReconstructionLayer(nn.Module):
    """Rebuilds the full-resolution map from refined centres, window by window."""

    def __init__(self, config: ExpediteConfig):
        super().__init__()
        self.config = config

    def forward(self, reduced: torch.Tensor, state: WindowClusterState) -> torch.Tensor:
        cfg = self.config
        return reconstruct_windows(
            reduced, state, cfg.k, cfg.reconstruct_temperature, cfg.normalize
        )

    def extra_repr(self) -> str:
        cfg = self.config
        return f"k={cfg.k}, t'={cfg.reconstruct_temperature}, normalize={cfg.normalize!r}"
