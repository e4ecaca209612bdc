"""Thin modules over the functional core. They hold settings only: no parameters, no buffers,
so a host's ``state_dict`` is the same with token reduction on or off.

They read their :class:`~expedite.ExpediteConfig` at every call, so settings changed on a built
model (``model.backbone.net.expedite.grid = 8``) take effect at the next forward. The config's
``implementation`` is turned into the core's keyword flags here; the two official points that
belong to Swin alone (bilinear bias resize, the mask built for the old shift) are the Swin
host's, in ``SwinStage.forward``.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import nn

from .config import ExpediteConfig
from .windows import WindowClusterState, cluster_windows, reconstruct_windows

__all__ = [
    "ExpediteHost",
    "TokenClusteringLayer",
    "TokenReconstructionLayer",
    "clustering_flags",
    "reconstruction_flags",
]


def clustering_flags(config: ExpediteConfig) -> Dict[str, Any]:
    """Keyword flags of :func:`expedite.cluster_windows` for ``config.implementation``."""
    official = config.official
    return {"own_cell": "floor" if official else "centre", "mask_padding": not official}


def reconstruction_flags(config: ExpediteConfig) -> Dict[str, Any]:
    """Keyword flags of :func:`expedite.reconstruct_windows` for ``config.implementation``."""
    official = config.official
    return {"keep_ties": official, "shift_distances": not official}


class TokenClusteringLayer(nn.Module):
    """Clusters each attention window of a (B, H, W, C) map to ``config.grid`` centres."""

    def __init__(self, config: ExpediteConfig, window: int):
        super().__init__()
        self.config = config
        self.window = window

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, WindowClusterState]:
        cfg = self.config
        return cluster_windows(
            x,
            self.window,
            cfg.grid,
            cfg.n_iters,
            cfg.cluster_temperature,
            cfg.radius,
            **clustering_flags(cfg),
        )

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"window={self.window}, grid={cfg.grid}, n_iters={cfg.n_iters}, "
            f"t={cfg.cluster_temperature}, locality_window={cfg.locality_window}, "
            f"implementation={cfg.implementation!r}, enabled={cfg.enabled}"
        )


class TokenReconstructionLayer(nn.Module):
    """Rebuilds the full-resolution map from refined centres, window by window."""

    def __init__(self, config: ExpediteConfig):
        super().__init__()
        self.config = config

    def forward(self, reduced: torch.Tensor, state: WindowClusterState) -> torch.Tensor:
        cfg = self.config
        return reconstruct_windows(
            reduced,
            state,
            cfg.k,
            cfg.reconstruct_temperature,
            cfg.normalize,
            **reconstruction_flags(cfg),
        )

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"k={cfg.k}, t'={cfg.reconstruct_temperature}, normalize={cfg.normalize!r}, "
            f"implementation={cfg.implementation!r}, enabled={cfg.enabled}"
        )


class ExpediteHost:
    """Mixin for an ``nn.Module`` host: owns the two layers and exposes their shared config as
    ``self.expedite``.

    The layers always exist (they hold no tensors), so reduction can be switched on, off or
    re-tuned on a built model: assign fields (``host.expedite.grid = 8``, validated at once) or a
    whole new config (``host.expedite = ExpediteConfig(...)``). A host calls
    :meth:`_init_expedite` in its constructor and checks the settings against itself (with
    :meth:`ExpediteConfig.check_host`) when built with reduction on and at every forward.
    """

    token_clustering: TokenClusteringLayer
    token_reconstruction: TokenReconstructionLayer

    def _init_expedite(self, config, window: int) -> None:
        self.token_clustering = TokenClusteringLayer(ExpediteConfig(enabled=False), window)
        self.token_reconstruction = TokenReconstructionLayer(self.token_clustering.config)
        self.expedite = config if config is not None else ExpediteConfig(enabled=False)

    @property
    def expedite(self) -> ExpediteConfig:
        return self.token_clustering.config

    @expedite.setter
    def expedite(self, config: ExpediteConfig) -> None:
        if not isinstance(config, ExpediteConfig):
            raise TypeError(
                f"expedite must be an ExpediteConfig, got {type(config).__name__}: "
                "build one with ExpediteConfig(**settings)"
            )
        self.token_clustering.config = config
        self.token_reconstruction.config = config
