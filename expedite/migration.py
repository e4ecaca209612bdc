"""Fast-iTPN's token migration, training-free: which tokens of each window stay in the backbone.

Fast-iTPN (Tian et al., arXiv 2211.12735) trains its backbone to work with tokens dropped from a
block on; the dropped ("migrated") tokens skip every later block and are put back, unchanged, in
the feature pyramid. Its released code has no migration. On a model trained without it we keep,
in every attention window, the tokens that the later blocks are most likely to change, by one of
two scores (higher = keep), and carry the rest unchanged:

- :func:`neighbour_distinctness`: minus the cosine similarity of a token to the mean of its 3x3
  neighbours. A token like its surroundings (flat background) is redundant: its neighbours'
  features stand in for it in the later blocks' attention, and restoring it unchanged loses what
  the later blocks would have added to a patch of uniform content.
- :func:`attention_received`: the attention a token receives within its window, averaged over
  heads and queries, from the first block that would run without it (the queries and keys of that
  block's own ``norm1`` and ``qkv``). Tokens that few queries read change the others little.

All functions are pure, work on windows of slots (N windows of L slots, some of which may be
empty or padding: ``candidates`` marks the real ones) and run in the dtype they are given.
"""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F

__all__ = ["attention_received", "keep_counts", "neighbour_distinctness", "select_kept"]


def neighbour_distinctness(y: torch.Tensor) -> torch.Tensor:
    """Minus the cosine similarity of each token to the mean of its neighbours.

    Args:
        y: (B, H, W, C) token map.

    Returns:
        (B, H, W): ``-cos(y[i, j], mean of y over the up to 8 other positions of the 3x3 square
        around (i, j) that lie in the map)``; 0 for a map of one token.
    """
    batch, height, width, channels = y.shape
    maps = y.permute(0, 3, 1, 2)
    ones = torch.ones(1, 1, 3, 3, dtype=y.dtype, device=y.device)
    # Sums over the 3x3 square with zero padding, less the token itself.
    summed = F.conv2d(maps.reshape(batch * channels, 1, height, width), ones, padding=1)
    summed = summed.reshape(batch, channels, height, width) - maps
    counts = F.conv2d(torch.ones(1, 1, height, width, dtype=y.dtype, device=y.device), ones, padding=1) - 1
    mean = summed / counts.clamp_min(1)
    return -F.cosine_similarity(maps, mean, dim=1)


def attention_received(q: torch.Tensor, k: torch.Tensor, scale: float, candidates: torch.Tensor) -> torch.Tensor:
    """Attention each token receives within its window.

    Args:
        q, k: (N, heads, L, head_dim) queries and keys of the N windows.
        scale: the logits' scale (head_dim ** -0.5).
        candidates: (N, L) bool, the real tokens: only they attend and are attended to.

    Returns:
        (N, L): ``mean over heads and candidate queries i of softmax_j(q_i . k_j * scale)`` for
        each candidate key j (the softmax over the window's candidates), 0 elsewhere.
    """
    masked = torch.finfo(q.dtype).min
    logits = (q * scale) @ k.transpose(-2, -1)
    logits = logits.masked_fill(~candidates[:, None, None, :], masked)
    weights = logits.softmax(dim=-1) * candidates[:, None, :, None]
    queries = candidates.sum(-1).clamp_min(1) * q.shape[1]
    received = weights.sum(dim=(1, 2)) / queries[:, None]
    return received.masked_fill(~candidates, 0)


def keep_counts(real: torch.Tensor, keep: Union[int, float]) -> torch.Tensor:
    """How many tokens each window keeps.

    Args:
        real: (N,) long, real tokens per window.
        keep: a ratio (float in (0, 1]): ``ceil(keep * real)`` (a window with tokens keeps at
            least one); or a count (int): ``min(keep, real)``.

    Returns:
        (N,) long.
    """
    if isinstance(keep, float):
        # Rounded up, with a little slack so that 0.5 * 196 is 98, not 99 from float error.
        return torch.ceil(real.double() * keep - 1e-9).long().clamp(min=0)
    return real.clamp(max=int(keep))


def select_kept(importance: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The ``counts`` most important candidates of each window.

    Args:
        importance: (N, L) scores, higher = keep.
        candidates: (N, L) bool, the tokens that may be kept.
        counts: (N,) long, at most the candidates of each window.

    Returns:
        (N, L) bool; among equal scores the earlier slot wins.
    """
    scores = importance.float().masked_fill(~candidates, -math.inf)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranked = torch.arange(scores.shape[-1], device=scores.device) < counts[:, None]
    return torch.zeros_like(candidates).scatter(-1, order, ranked) & candidates
