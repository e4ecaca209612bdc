"""Thin modules over the functional cores, and the one wiring every host uses.

The modules hold settings only: no parameters, no buffers, so a host's ``state_dict`` is the same
with token reduction on or off, whichever the method. They read their
:class:`~expedite.ExpediteConfig` at every call, so settings changed on a built model
(``model.backbone.net.expedite.expedit.grid = 8``) take effect at the next forward.

Every method's operations run in modules of two types, which tools find by type:
:class:`TokenReducer` (Expedit's clustering, AiluRus's density-peak merging, ToMe's per-block
merging) and :class:`TokenRestorer` (Expedit's reconstruction, the unmerging of a token set).
:class:`TokenReduction` picks the method and runs it on a host's blocks; a host owns one (through
:class:`ExpediteHost`) and tells it, per block, where the block's parts and position terms are
(:class:`expedite.tokens.TokenBlock`).

The two official Expedit points that belong to Swin alone (bilinear bias resize, the mask built
for the old shift) are the Swin host's, in ``SwinStage.forward``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, Union

import torch
from torch import nn

from .ailurus import ailurus_assignment
from .config import ExpediteConfig
from .tokens import TokenBlock, TokenSet, merge_tokens, run_token_block, tokens_from_map, tokens_to_map
from .tome import bipartite_soft_matching
from .windows import WindowClusterState, cluster_windows, reconstruct_windows

__all__ = [
    "BipartiteMerging",
    "DensityPeakMerging",
    "ExpediteHost",
    "ReducedMap",
    "TokenClusteringLayer",
    "TokenReconstructionLayer",
    "TokenReducer",
    "TokenReduction",
    "TokenRestorer",
    "TokenUnmerging",
    "clustering_flags",
    "reconstruction_flags",
]


def clustering_flags(config: ExpediteConfig) -> Dict[str, Any]:
    """Keyword flags of :func:`expedite.cluster_windows` for ``config.expedit.implementation``."""
    official = config.expedit.official
    return {"own_cell": "floor" if official else "centre", "mask_padding": not official}


def reconstruction_flags(config: ExpediteConfig) -> Dict[str, Any]:
    """Keyword flags of :func:`expedite.reconstruct_windows` for ``config.expedit.implementation``."""
    official = config.expedit.official
    return {"keep_ties": official, "shift_distances": not official}


class TokenReducer(nn.Module):
    """Base type of the modules that reduce tokens (found by type by the tools)."""

    def __init__(self, config: ExpediteConfig):
        super().__init__()
        self.config = config


class TokenRestorer(nn.Module):
    """Base type of the modules that restore the full-resolution map."""

    def __init__(self, config: ExpediteConfig):
        super().__init__()
        self.config = config


@dataclass
class ReducedMap:
    """Expedit's reduced state: a smaller regular map of centres, and what rebuilds the full one."""

    x: torch.Tensor
    clusters: WindowClusterState


class TokenClusteringLayer(TokenReducer):
    """Expedit: clusters each attention window of a (B, H, W, C) map to ``expedit.grid`` centres."""

    def __init__(self, config: ExpediteConfig, window: int):
        super().__init__(config)
        self.window = window

    def forward(self, x: torch.Tensor) -> ReducedMap:
        cfg = self.config.expedit
        reduced, clusters = cluster_windows(
            x, self.window, cfg.grid, cfg.n_iters, cfg.cluster_temperature, cfg.radius,
            **clustering_flags(self.config),
        )
        return ReducedMap(reduced, clusters)

    def extra_repr(self) -> str:
        cfg = self.config.expedit
        return (
            f"window={self.window}, grid={cfg.grid}, n_iters={cfg.n_iters}, "
            f"t={cfg.cluster_temperature}, locality_window={cfg.locality_window}, "
            f"implementation={cfg.implementation!r}"
        )


class TokenReconstructionLayer(TokenRestorer):
    """Expedit: rebuilds the full-resolution map from refined centres, window by window."""

    def forward(self, state: ReducedMap) -> torch.Tensor:
        cfg = self.config.expedit
        return reconstruct_windows(
            state.x, state.clusters, cfg.k, cfg.reconstruct_temperature, cfg.normalize,
            **reconstruction_flags(self.config),
        )

    def extra_repr(self) -> str:
        cfg = self.config.expedit
        return (
            f"k={cfg.k}, t'={cfg.reconstruct_temperature}, normalize={cfg.normalize!r}, "
            f"implementation={cfg.implementation!r}"
        )


def _float32(forward):
    """Run a layer's own computations in float32, also under autocast (the merging decisions
    and the merged features; the host's blocks keep the autocast dtype)."""

    @functools.wraps(forward)
    def wrapped(self, tokens: TokenSet, *args):
        with torch.autocast(tokens.x.device.type, enabled=False):
            return forward(self, tokens, *args)

    return wrapped


def _per_window(tokens: TokenSet, values: torch.Tensor) -> torch.Tensor:
    """(B, G, T, ...) -> (B * G, T, ...): the functional cores take one group per window."""
    batch, groups, slots = tokens.size.shape
    return values.reshape(batch * groups, slots, *values.shape[3:])


class DensityPeakMerging(TokenReducer):
    """AiluRus: in every window, the ``budget`` density peaks take in the similar tokens around
    them (:func:`expedite.ailurus.ailurus_assignment`); the other tokens stay as they are."""

    @_float32
    def forward(self, tokens: TokenSet) -> TokenSet:
        cfg = self.config.ailurus
        slots = tokens.group[0] * tokens.group[1]
        if cfg.budget > slots:
            raise ValueError(
                f"expedite.ailurus.budget={cfg.budget!r} is above the {slots} tokens of a "
                f"{tokens.group[0]}x{tokens.group[1]} group; allowed: 1 to {slots}"
            )
        dest = ailurus_assignment(
            _per_window(tokens, tokens.x), _per_window(tokens, tokens.pos), _per_window(tokens, tokens.mergeable),
            budget=cfg.budget, k=cfg.density_k, radius=cfg.radius, threshold=cfg.threshold,
        )
        return merge_tokens(tokens, dest.reshape(tokens.size.shape))

    def extra_repr(self) -> str:
        cfg = self.config.ailurus
        return f"budget={cfg.budget}, neighbourhood={cfg.neighbourhood}, k={cfg.density_k}, threshold={cfg.threshold}"


class BipartiteMerging(TokenReducer):
    """ToMe: merges ``r`` tokens per window by bipartite soft matching on the block's keys
    averaged over heads (:func:`expedite.tome.bipartite_soft_matching`)."""

    @_float32
    def forward(self, tokens: TokenSet, keys: torch.Tensor) -> TokenSet:
        dest = bipartite_soft_matching(
            _per_window(tokens, keys), _per_window(tokens, tokens.mergeable), self.config.tome.r
        )
        return merge_tokens(tokens, dest.reshape(tokens.size.shape))

    def extra_repr(self) -> str:
        return f"r={self.config.tome.r}"


class TokenUnmerging(TokenRestorer):
    """Every grid position gets back the final feature of the token that holds it."""

    def forward(self, tokens: TokenSet) -> torch.Tensor:
        return tokens_to_map(tokens)


class TokenReduction(nn.Module):
    """The chosen method on a host's blocks: :meth:`reduce` the (B, H, W, C) map before block
    ``location``, run the later blocks (on a :class:`ReducedMap` the host runs its own blocks
    with the grid as window; on a :class:`~expedite.tokens.TokenSet`, :meth:`run_block`), and
    :meth:`restore` the full map.

    Args:
        config: the host's settings (shared with every layer).
        window: the host's attention window (0: none; a method then works on the whole map).
    """

    def __init__(self, config: ExpediteConfig, window: int):
        super().__init__()
        self.window = window
        self.clustering = TokenClusteringLayer(config, window)
        self.reconstruction = TokenReconstructionLayer(config)
        self.density_peaks = DensityPeakMerging(config)
        self.bipartite = BipartiteMerging(config)
        self.unmerging = TokenUnmerging(config)
        self._config = config

    @property
    def config(self) -> ExpediteConfig:
        return self._config

    @config.setter
    def config(self, config: ExpediteConfig) -> None:
        if not isinstance(config, ExpediteConfig):
            raise TypeError(
                f"expedite must be an ExpediteConfig, got {type(config).__name__}: "
                "build one with ExpediteConfig(**settings)"
            )
        self._config = config
        for layer in (self.clustering, self.reconstruction, self.density_peaks, self.bipartite, self.unmerging):
            layer.config = config

    def reduce(self, x: torch.Tensor) -> Union[ReducedMap, TokenSet]:
        method = self.config.method
        if method == "expedit":
            return self.clustering(x)
        tokens = tokens_from_map(x, self.window)
        return self.density_peaks(tokens) if method == "ailurus" else tokens

    def run_block(self, block: TokenBlock, tokens: TokenSet) -> TokenSet:
        """One host block on a token set; ToMe merges between its attention and MLP."""
        settings = self.config.settings
        merge = self.bipartite if self.config.method == "tome" and self.config.tome.r > 0 else None
        return run_token_block(
            block, tokens, proportional_attention=settings.proportional_attention, merge=merge
        )

    def restore(self, state: Union[ReducedMap, TokenSet]) -> torch.Tensor:
        if isinstance(state, ReducedMap):
            return self.reconstruction(state)
        return self.unmerging(state)

    def extra_repr(self) -> str:
        cfg = self.config
        return f"method={cfg.method!r}, location={cfg.location}, enabled={cfg.enabled}"


class ExpediteHost:
    """Mixin for an ``nn.Module`` host: owns a :class:`TokenReduction` and exposes its config as
    ``self.expedite``.

    The modules always exist (they hold no tensors), so reduction can be switched on, off,
    to another method or re-tuned on a built model: assign fields
    (``host.expedite.expedit.grid = 8``, validated at once) or a whole new config
    (``host.expedite = ExpediteConfig(...)``). A host calls :meth:`_init_expedite` in its
    constructor and checks the settings against its layout (:meth:`ExpediteConfig.check_host`)
    when built with reduction on and at every forward.
    """

    token_reduction: TokenReduction

    def _init_expedite(self, config, window: int) -> None:
        self.token_reduction = TokenReduction(ExpediteConfig(enabled=False), window)
        self.expedite = config if config is not None else ExpediteConfig(enabled=False)

    @property
    def expedite(self) -> ExpediteConfig:
        return self.token_reduction.config

    @expedite.setter
    def expedite(self, config: ExpediteConfig) -> None:
        self.token_reduction.config = config
