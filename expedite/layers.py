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

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Union

import torch
from torch import nn

from .ailurus import ailurus_assignment
from .config import ExpediteConfig, InputSizeError
from .migration import attention_received, keep_counts, neighbour_distinctness, select_kept
from .tokens import (
    TokenBlock,
    TokenSet,
    gathered_map_attention,
    keep_tokens,
    merge_tokens,
    run_token_block,
    tokens_from_map,
    tokens_to_map,
)
from .tome import bipartite_soft_matching
from .windows import WindowClusterState, cluster_frames, cluster_windows, reconstruct_windows

__all__ = [
    "BipartiteMerging",
    "DensityPeakMerging",
    "ExpediteHost",
    "FrameSequence",
    "ReducedMap",
    "TokenClusteringLayer",
    "TokenMigration",
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


@dataclass
class FrameSequence:
    """The temporal warm start's state while a video model runs the frames of one video through
    a host (:meth:`TokenReduction.frame_sequence`).

    Attributes:
        centres: (nH * nW, h, w, C) float32 final centres of every window of the last frame
            clustered so far (None before the first frame): the next frame starts from them.
        frames: frames clustered so far.
    """

    centres: Optional[torch.Tensor] = None
    frames: int = 0


class TokenClusteringLayer(TokenReducer):
    """Expedit: clusters each attention window of a (B, H, W, C) map to ``expedit.grid`` centres.

    Given a :class:`FrameSequence` (only when the batch is known to be consecutive frames of one
    video), the frames are clustered in order, each starting from the previous frame's centres
    (:func:`expedite.windows.cluster_frames`), and the sequence is advanced to the last frame's."""

    def __init__(self, config: ExpediteConfig, window: int):
        super().__init__(config)
        self.window = window

    def forward(self, x: torch.Tensor, frames: Optional[FrameSequence] = None) -> ReducedMap:
        cfg = self.config.expedit
        args = (x, self.window, cfg.grid, cfg.n_iters, cfg.cluster_temperature, cfg.radius)
        if frames is None:
            reduced, clusters = cluster_windows(*args, **clustering_flags(self.config))
            return ReducedMap(reduced, clusters)
        reduced, clusters = cluster_frames(*args, **clustering_flags(self.config), initial_centres=frames.centres)
        frames.centres = clusters.centres[-(clusters.num_windows[0] * clusters.num_windows[1]):]
        frames.frames += int(x.shape[0])
        return ReducedMap(reduced, clusters)

    def extra_repr(self) -> str:
        cfg = self.config.expedit
        return (
            f"window={self.window}, grid={cfg.grid}, n_iters={cfg.n_iters}, "
            f"t={cfg.cluster_temperature}, locality_window={cfg.locality_window}, "
            f"implementation={cfg.implementation!r}, warm_start={cfg.warm_start}"
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
            raise InputSizeError(
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


class TokenMigration(TokenReducer):
    """Fast-iTPN: every window keeps its ``itpn.keep`` highest-scoring tokens
    (:mod:`expedite.migration`); the others migrate, to come back unchanged when restoring.
    Padding stays, as the host's windowed blocks see it."""

    @_float32
    def forward(self, tokens: TokenSet, block: TokenBlock) -> TokenSet:
        cfg = self.config.itpn
        candidates = tokens.mergeable
        y = block.norm1(tokens.x.float())
        if cfg.score == "neighbour":
            full = tokens_to_map(tokens.replace(x=y))
            importance = _slots_from_map(tokens, neighbour_distinctness(full))
        else:
            windows, slots, channels = _per_window(tokens, y).shape
            qkv = block.qkv(_per_window(tokens, y)).reshape(windows, slots, 3, block.num_heads, -1)
            q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            importance = attention_received(q, k, block.scale, _per_window(tokens, candidates))
        counts = keep_counts(_per_window(tokens, candidates).sum(-1), cfg.keep)
        kept = select_kept(_per_window(tokens, importance), _per_window(tokens, candidates), counts)
        return keep_tokens(tokens, kept.reshape(candidates.shape) | tokens.padding)

    def extra_repr(self) -> str:
        cfg = self.config.itpn
        return f"keep={cfg.keep}, score={cfg.score!r}"


def _slots_from_map(tokens: TokenSet, values: torch.Tensor) -> torch.Tensor:
    """(B, H, W) values of the positions of a fresh token set -> (B, G, T), 0 at padding."""
    batch = values.shape[0]
    padded_h, padded_w = tokens.padded_size
    padded = torch.nn.functional.pad(values, (0, padded_w - tokens.width, 0, padded_h - tokens.height))
    slots = padded.new_zeros(batch, tokens.size[0].numel())
    return slots.scatter_(1, tokens.source, padded.reshape(batch, -1)).reshape(tokens.size.shape)


class TokenUnmerging(TokenRestorer):
    """Every grid position gets back the final feature of the token that holds it (or, when it
    migrated, its feature from before migration)."""

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
        self.migration = TokenMigration(config)
        self.unmerging = TokenUnmerging(config)
        self._config = config
        # Set only inside frame_sequence(); None: the batch's items are independent images.
        self._frames: Optional[FrameSequence] = None

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
        for layer in (self.clustering, self.reconstruction, self.density_peaks, self.bipartite, self.migration,
                      self.unmerging):
            layer.config = config

    @property
    def warm_start(self) -> bool:
        """True when these settings link the frames of a :meth:`frame_sequence` (Expedit on, with
        ``expedit.warm_start``); a video model only then needs to declare its frame sequences."""
        cfg = self.config
        return cfg.enabled and cfg.method == "expedit" and cfg.expedit.warm_start

    @contextlib.contextmanager
    def frame_sequence(self) -> Iterator[FrameSequence]:
        """Declare that, until the context exits, the batches :meth:`reduce` gets are the
        consecutive frames of ONE video, in order, over any number of calls (a video model's
        frame chunks). With ``expedit.warm_start`` each frame's clustering then starts from the
        previous frame's final centres; otherwise nothing changes. Outside this context (every
        image model) batch items are independent and never linked. Not re-entrant: one video at
        a time; the state is dropped when the context exits.
        """
        if self._frames is not None:
            raise RuntimeError("TokenReduction.frame_sequence(): already inside a frame sequence (one video at a time)")
        self._frames = FrameSequence()
        try:
            yield self._frames
        finally:
            self._frames = None

    def reduce(self, x: torch.Tensor, block: TokenBlock) -> Union[ReducedMap, TokenSet, torch.Tensor]:
        """The reduced state of the (B, H, W, C) map ``x`` before the host's ``block`` (the first
        to run reduced): a :class:`ReducedMap`, a :class:`~expedite.tokens.TokenSet`, or ``x``
        itself when the method keeps the full map (:attr:`ExpediteConfig.keeps_map`). Inside a
        :meth:`frame_sequence` with ``expedit.warm_start``, the batch is clustered as frames."""
        method = self.config.method
        if method == "expedit":
            return self.clustering(x, self._frames if self.config.expedit.warm_start else None)
        if self.config.keeps_map:
            return x
        tokens = tokens_from_map(x, self.window)
        if method == "ailurus":
            return self.density_peaks(tokens)
        if method == "itpn":
            return self.migration(tokens, block)
        return tokens

    def run_block(self, block: TokenBlock, tokens: TokenSet) -> TokenSet:
        """One host block on a token set; ToMe merges between its attention and MLP, and a global
        block gathers when ``gather`` is set."""
        cfg = self.config
        if block.window == 0 and cfg.gather > 0:
            self._check_gather(tokens.height, tokens.width)
        merge = self.bipartite if cfg.method == "tome" and cfg.tome.r > 0 else None
        return run_token_block(
            block, tokens, proportional_attention=getattr(cfg.settings, "proportional_attention", False),
            merge=merge, gather=cfg.gather if block.window == 0 else 0,
        )

    def gathered_attention(self, block: TokenBlock, y: torch.Tensor) -> torch.Tensor:
        """A global block's attention on a regular (B, H, W, C) map ``y`` (after ``norm1``), by
        token gathering (:func:`~expedite.tokens.gathered_map_attention`); hosts call it in place
        of the block's own attention when the method's ``gather`` is set."""
        self._check_gather(int(y.shape[1]), int(y.shape[2]))
        return gathered_map_attention(block, y, self.config.gather)

    def _check_gather(self, height: int, width: int) -> None:
        gather = self.config.gather
        if gather > min(height, width):
            raise InputSizeError(
                f"expedite.{self.config.method}.gather={gather!r}: {gather}x{gather} gathering tokens are more than the "
                f"global block's {height}x{width} map has rows or columns (G larger than the token "
                f"count); allowed: 1 to {min(height, width)}, or 0 for full attention"
            )

    def restore(self, state: Union[ReducedMap, TokenSet, torch.Tensor]) -> torch.Tensor:
        if isinstance(state, ReducedMap):
            return self.reconstruction(state)
        if isinstance(state, TokenSet):
            return self.unmerging(state)
        return state

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
