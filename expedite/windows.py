"""Per-window clustering for hosts with windowed attention (ViTDet, Swin).

The map is padded to whole windows, each window is clustered on its own (padding tokens masked
out), and the windows of centres are put back together into a smaller map. That map is cropped to
the centres that hold real tokens, so a later windowed block, which pads to whole windows itself,
sees exactly the layout the full-resolution block saw: the same windows, each ``grid`` instead of
``window`` tokens wide, and global blocks see no padding at all.

With ``mask_padding=False`` (the official code's behaviour) the zero padding tokens take part in
clustering like real tokens and the reduced map keeps the centres of every padded window
(``num_windows * grid`` per side, e.g. 64x64 with 14x14 windows to 7x7 gives 35x35, not 32x32):
the later blocks run on that map, and reconstruction crops back to ``H x W`` at the end.

Temporal warm start (opt-in, video): :func:`cluster_frames` clusters a batch that is a sequence of
frames of one video in order, each frame's soft k-means starting from the previous frame's final
centres (``initial_centres`` of :func:`cluster_windows`) instead of from average pooling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .clustering import ClusterContext, cluster_tokens, reconstruct_tokens

__all__ = ["WindowClusterState", "cluster_frames", "cluster_windows", "reconstruct_windows", "reduced_length"]


def reduced_length(length: int, window: int, cells: int, *, mask_padding: bool = True) -> int:
    """Length of the reduced map along one axis: ``cells`` per whole window, and for a partial
    window the cells whose pooling region starts inside the real tokens (all ``cells`` with
    ``mask_padding=False``, as :func:`cluster_windows` lays them out)."""
    if not mask_padding:
        return -(-length // window) * cells
    whole, rest = divmod(length, window)
    partial = sum(1 for i in range(cells) if (i * window) // cells < rest)
    return whole * cells + partial


def _partition(x: torch.Tensor, win_h: int, win_w: int) -> torch.Tensor:
    """(B, Hp, Wp, C), Hp and Wp multiples of the window -> (B * nH * nW, win_h, win_w, C)."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // win_h, win_h, width // win_w, win_w, channels)
    return x.transpose(2, 3).reshape(-1, win_h, win_w, channels)


def _merge(windows: torch.Tensor, num_windows: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_partition`: (B * nH * nW, h, w, C) -> (B, nH * h, nW * w, C)."""
    n_h, n_w = num_windows
    _, height, width, channels = windows.shape
    x = windows.reshape(-1, n_h, n_w, height, width, channels).transpose(2, 3)
    return x.reshape(-1, n_h * height, n_w * width, channels)


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, width - x.shape[2], 0, height - x.shape[1]))


@dataclass
class WindowClusterState:
    """Bookkeeping from :func:`cluster_windows` for :func:`reconstruct_windows`."""

    context: ClusterContext
    size: Tuple[int, int]
    num_windows: Tuple[int, int]
    window: int
    grid: Tuple[int, int]

    @property
    def centres(self) -> torch.Tensor:
        """(B * nH * nW, h, w, C) float32 final centres of every window (frame-major, windows
        row-major; zero where a cell holds no real token), detached: what ``initial_centres``
        of :func:`cluster_windows` takes."""
        return self.context.centres.reshape(-1, *self.grid, self.context.centres.shape[-1])


def cluster_windows(
    x: torch.Tensor,
    window: int,
    grid: Tuple[int, int],
    n_iters: int,
    temperature: float,
    radius: int,
    *,
    own_cell: str = "centre",
    mask_padding: bool = True,
    initial_centres: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, WindowClusterState]:
    """Cluster every ``window x window`` window of a map to ``grid`` centres.

    Args:
        x: (B, H, W, C) token map; H and W need not be multiples of ``window``.
        window: attention window of the host's blocks.
        grid: (h, w) centres per window.
        n_iters, temperature, radius, own_cell: as in :func:`expedite.clustering.cluster_tokens`.
        mask_padding: True (ours): padding tokens are masked out and the reduced map is cropped
            to the centres holding real tokens. False (official): the zero padding tokens are
            clustered like real ones and the reduced map is not cropped.
        initial_centres: (B * nH * nW, h, w, C) centres every window's soft k-means starts from
            instead of average pooling (``nH = ceil(H / window)``, ``nW`` likewise; the layout of
            :attr:`WindowClusterState.centres`), taken in float32 without gradient. None: pooling.

    Returns:
        reduced: (B, H', W', C) with ``H' = reduced_length(H, window, h, mask_padding=...)``
            (likewise W').
        state: for :func:`reconstruct_windows`.
    """
    # int(): under tracing (fvcore's flop count) shapes are tensors; the layout is static anyway.
    batch, height, width = (int(d) for d in x.shape[:3])
    n_h, n_w = -(-height // window), -(-width // window)
    padded = _partition(_pad_to(x, n_h * window, n_w * window), window, window)
    valid = None
    if mask_padding:
        mask = torch.ones(batch, height, width, 1, dtype=x.dtype, device=x.device)
        valid = _partition(_pad_to(mask, n_h * window, n_w * window), window, window)[..., 0] > 0
    centres, context = cluster_tokens(
        padded, grid, n_iters, temperature, radius, token_mask=valid, own_cell=own_cell,
        initial_centres=initial_centres,
    )
    reduced = _merge(centres, (n_h, n_w))
    out_h = reduced_length(height, window, grid[0], mask_padding=mask_padding)
    out_w = reduced_length(width, window, grid[1], mask_padding=mask_padding)
    state = WindowClusterState(context, (height, width), (n_h, n_w), window, tuple(grid))
    return reduced[:, :out_h, :out_w].contiguous(), state


def _concat_states(states: Sequence[WindowClusterState]) -> WindowClusterState:
    """The states of consecutive batches (same map size, windows and grid) as one state."""
    if len(states) == 1:
        return states[0]
    contexts = [s.context for s in states]
    context = ClusterContext(
        torch.cat([c.tokens for c in contexts]),
        torch.cat([c.centres for c in contexts]),
        torch.cat([c.centre_valid for c in contexts]),
        contexts[0].size,
    )
    first = states[0]
    return WindowClusterState(context, first.size, first.num_windows, first.window, first.grid)


def cluster_frames(
    x: torch.Tensor,
    window: int,
    grid: Tuple[int, int],
    n_iters: int,
    temperature: float,
    radius: int,
    *,
    own_cell: str = "centre",
    mask_padding: bool = True,
    initial_centres: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, WindowClusterState]:
    """Temporal warm start: :func:`cluster_windows` on the ``B`` consecutive frames of ONE video,
    one frame at a time in batch order. Frame 0 starts from ``initial_centres`` (the final centres
    of the frame before it, e.g. the last frame of the previous chunk) or, when None, from average
    pooling; frame ``t > 0`` starts from frame ``t - 1``'s final centres (after its ``n_iters``
    rounds). Only for a batch known to be a frame sequence: it links the batch's items.

    Args:
        x: (B, H, W, C) token maps of B consecutive frames, in order.
        window, grid, n_iters, temperature, radius, own_cell, mask_padding: as in
            :func:`cluster_windows`.
        initial_centres: (nH * nW, h, w, C) starting centres of frame 0 (one frame's
            :attr:`WindowClusterState.centres`), or None.

    Returns:
        reduced: (B, H', W', C), as :func:`cluster_windows` lays it out.
        state: for :func:`reconstruct_windows`, covering all B frames; the last frame's final
            centres, to start the next frame, are ``state.centres[-nH * nW:]``.
    """
    reduced, states = [], []
    previous = initial_centres
    for frame in x.split(1):
        frame_reduced, state = cluster_windows(
            frame, window, grid, n_iters, temperature, radius, own_cell=own_cell,
            mask_padding=mask_padding, initial_centres=previous,
        )
        reduced.append(frame_reduced)
        states.append(state)
        previous = state.centres
    return torch.cat(reduced), _concat_states(states)


def reconstruct_windows(
    reduced: torch.Tensor,
    state: WindowClusterState,
    k: int,
    temperature: float,
    normalize: str = "sum",
    *,
    keep_ties: bool = False,
    shift_distances: bool = True,
) -> torch.Tensor:
    """Rebuild the full map from a refined reduced map, window by window.

    Args:
        reduced: (B, H', W', C) map of refined centres, as laid out by :func:`cluster_windows`
            (cropped or not).
        state: from :func:`cluster_windows` on the same batch.
        k, temperature, normalize, keep_ties, shift_distances: as in
            :func:`expedite.clustering.reconstruct_tokens`.

    Returns:
        (B, H, W, C): every window rebuilt, then cropped to the map's size.
    """
    (n_h, n_w), (grid_h, grid_w) = state.num_windows, state.grid
    refined = _partition(_pad_to(reduced, n_h * grid_h, n_w * grid_w), grid_h, grid_w)
    full = reconstruct_tokens(
        refined,
        state.context,
        k,
        temperature,
        normalize,
        keep_ties=keep_ties,
        shift_distances=shift_distances,
    )
    height, width = state.size
    return _merge(full, (n_h, n_w))[:, :height, :width].contiguous()
