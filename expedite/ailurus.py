"""AiluRus (NeurIPS 2023): adaptive resolution by spatial-aware density-peak clustering, the functional core.

Pure PyTorch, no ``nn.Module``, inference only. Every function works on *groups* of tokens laid out
``(G, T, ...)``: a group is one attention window of the host (or a whole image on a global ViT), and
``T`` slots per group may be partly empty (``valid`` False: padding, or slots emptied by an earlier
merge). Nothing loops over tokens: all work is batched matrix products and reductions over ``(G, T, T)``.
Everything is computed in float32 (half inputs are cast); results are deterministic and every tie is
broken towards the lower slot index.

Pipeline (:func:`ailurus_assignment`)::

    score, rho, delta = density_peak_scores(x, pos, valid, k, radius)   # DPC-KNN, spatially restricted
    anchors = select_anchors(score, valid, budget)                       # top-``budget`` per group
    dest = assign_to_anchors(x, pos, valid, anchors, radius, threshold)  # slot each token merges into

Design choices (the paper body is not at hand; each choice below is ours):

* **Neighbourhood.** "Spatial-aware" is realised as a hard spatial window, not as a position term
  added to the feature distance: the neighbours of token ``i`` are the other valid tokens ``j`` of
  its group with Chebyshev distance ``max(|pos_i - pos_j|) <= radius`` grid cells. A square window
  is exactly grid adjacency (``radius=1`` is the 8-neighbourhood), needs no weight to mix feature
  units with pixel units, and works unchanged on merged tokens whose positions are fractional
  (centroids). The same ``radius`` bounds merges, so only spatially adjacent tokens can fuse and a
  low-resolution region is always a compact patch around its anchor.
* **Density.** ``rho_i = exp(-mean of the k smallest d2(i, j) over its neighbours)`` (DPC-KNN), with
  ``d2`` the squared Euclidean feature distance *divided by the channel count C* (the mean squared
  difference per channel). Without that normalisation ``exp(-d2)`` underflows to 0 for wide features
  (C = 768..1024, d2 in the hundreds) and every density would tie. A token with fewer than ``k``
  neighbours averages over those it has (border tokens, small windows); a token with none gets
  ``rho = 0``: nothing lies within merging range of it, so spending an anchor on it would absorb
  nothing.
* **Delta.** Standard DPC, not spatially restricted: ``delta_i`` is the plain (not squared, not
  normalised) Euclidean feature distance to the nearest valid token of the group that is denser.
  "Denser" is a strict total order: higher ``rho``, ties to the lower slot index, so each group has
  exactly one peak, whose ``delta`` is its largest distance to any valid token of the group. Global
  ``delta`` favours anchors that differ from every denser token, i.e. one anchor per feature-space
  mode instead of several in the same flat region. (Scaling ``delta`` by a constant, e.g. by
  ``1/sqrt(C)``, would not change any ranking, since anchors are picked per group.)
* **Anchors.** ``score = rho * delta``; the ``budget`` highest valid scores of each group are the
  anchors (all valid tokens when fewer); ties to the lower slot index. The budget is per group.
* **Similarity threshold.** A non-anchor token joins, among the anchors within ``radius`` of it, the
  one with the highest *cosine* similarity, if that similarity is ``>= threshold``; otherwise it stays
  alone at full resolution (the "high-resolution regions"). Cosine is scale-free, so one threshold
  holds across layers and models whose feature norms differ; ``threshold > 1`` disables merging.
  Euclidean distance stays the measure for density because DPC is defined on it.
* **Merge weights** (applied by the host, which receives ``dest``). A merged token is the uniform
  mean of its members' features (each member counted once, the anchor included), at the mean of
  their positions (hence fractional positions at a later clustering). All members passed the
  similarity threshold against the anchor, so the plain mean is the lowest-variance summary and keeps
  the feature norm comparable to an unmerged token; weighting by ``rho`` would just pull it toward the
  anchor. Attention on the reduced set may add ``log(size)`` to the keys' logits so a merged token
  weighs as much as its members did. At the output ("unfold") every member gets back the final
  feature of the token it merged into.

All pairwise squared distances use ``|a|^2 + |b|^2 - 2 a b^T`` (clamped at 0) rather than
``torch.cdist`` so that FLOP counters (fvcore) see the matrix products.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["density_peak_scores", "select_anchors", "assign_to_anchors", "ailurus_assignment"]


def _check(x: Tensor, pos: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    if x.dim() != 3:
        raise ValueError(f"x must be (G, T, C), got {tuple(x.shape)}")
    G, T, _ = x.shape
    if pos.shape != (G, T, 2):
        raise ValueError(f"pos must be (G, T, 2) = {(G, T, 2)}, got {tuple(pos.shape)}")
    if valid.shape != (G, T):
        raise ValueError(f"valid must be (G, T) = {(G, T)}, got {tuple(valid.shape)}")
    return x.float(), pos.float(), valid.bool()


def _spatial_window(pos: Tensor, radius: float) -> Tensor:
    """(G, T, 2) positions -> (G, T, T) bool, True where the Chebyshev distance is <= radius."""
    rows, cols = pos[..., 0], pos[..., 1]
    dr = (rows[:, :, None] - rows[:, None, :]).abs()
    dc = (cols[:, :, None] - cols[:, None, :]).abs()
    return torch.maximum(dr, dc) <= radius


def _pairwise_sq_dist(x: Tensor) -> Tensor:
    """(G, T, C) -> (G, T, T) squared Euclidean distances by matrix product, >= 0, zero diagonal."""
    sq = (x * x).sum(-1)
    d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * torch.matmul(x, x.transpose(1, 2))
    d2 = d2.clamp_min(0.0)
    eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
    return d2.masked_fill(eye, 0.0)


@torch.no_grad()
def density_peak_scores(x: Tensor, pos: Tensor, valid: Tensor, k: int, radius: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Spatially restricted DPC-KNN scores.

    Args:
        x: (G, T, C) token features (any float dtype; computed in float32).
        pos: (G, T, 2) grid positions (row, col); merged tokens may have fractional positions.
        valid: (G, T) bool, the tokens that take part (padding / empty slots False).
        k: number of nearest neighbours for the density (>= 1).
        radius: neighbourhood half-width in grid cells (Chebyshev).

    Returns:
        ``(score, rho, delta)``, each (G, T) float32, with ``score = rho * delta``.
        ``rho_i = exp(-mean of the k smallest d2 / C)`` over the valid tokens ``j != i`` of the group
        within Chebyshev distance ``radius`` (over all of them when fewer than ``k``; ``rho = 0`` when
        none). ``delta_i`` = Euclidean feature distance to the nearest valid denser token (higher
        ``rho``, ties to the lower slot), or, for the single peak of the group, the largest distance to
        any valid token. Invalid slots: ``score = -inf``, ``rho = 0``, ``delta = 0``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x, pos, valid = _check(x, pos, valid)
    G, T, C = x.shape
    device = x.device
    idx = torch.arange(T, device=device)
    pair_valid = valid[:, :, None] & valid[:, None, :]                       # (G, T, T)

    d2 = _pairwise_sq_dist(x)                                                # (G, T, T)

    # --- density: mean of the k smallest normalised squared distances within the window
    not_self = idx[:, None] != idx[None, :]
    nbr = pair_valid & not_self & _spatial_window(pos, radius)              # (G, T, T)
    kk = min(k, T - 1)
    if kk > 0:
        d2n = (d2 / C).masked_fill(~nbr, float("inf"))
        smallest = torch.topk(d2n, kk, dim=-1, largest=False).values        # (G, T, kk), ascending
        count = nbr.sum(-1).clamp_max(kk)                                   # (G, T)
        used = torch.arange(kk, device=device) < count[..., None]
        total = torch.where(used, smallest, torch.zeros_like(smallest)).sum(-1)
        rho = torch.where(count > 0, torch.exp(-total / count.clamp_min(1).float()), torch.zeros_like(total))
    else:
        rho = torch.zeros(G, T, device=device)
    rho = rho.masked_fill(~valid, 0.0)

    # --- delta: distance to the nearest denser token (strict order: rho, then lower slot)
    dist = d2.sqrt()
    rho_i, rho_j = rho[:, :, None], rho[:, None, :]
    lower_slot = (idx[None, :] < idx[:, None])[None]                        # j < i
    denser = pair_valid & ((rho_j > rho_i) | ((rho_j == rho_i) & lower_slot))
    nearest_denser = dist.masked_fill(~denser, float("inf")).amin(-1)       # (G, T)
    farthest = dist.masked_fill(~pair_valid, 0.0).amax(-1)                  # (G, T)
    is_peak = ~denser.any(-1)
    delta = torch.where(is_peak, farthest, nearest_denser)
    delta = delta.masked_fill(~valid, 0.0)

    score = (rho * delta).masked_fill(~valid, float("-inf"))
    return score, rho, delta


@torch.no_grad()
def select_anchors(scores: Tensor, valid: Tensor, budget: int) -> Tensor:
    """Top-``budget`` valid slots per group.

    Args:
        scores: (G, T) scores (higher is better).
        valid: (G, T) bool.
        budget: anchors per group (all valid slots when a group has fewer; none when <= 0).

    Returns:
        (G, T) bool anchor mask. Ties in score go to the lower slot index; invalid slots are never
        selected, even when their score ties with valid ones.
    """
    if scores.shape != valid.shape or scores.dim() != 2:
        raise ValueError(f"scores and valid must both be (G, T), got {tuple(scores.shape)} and {tuple(valid.shape)}")
    G, T = scores.shape
    valid = valid.bool()
    if budget <= 0 or T == 0:
        return torch.zeros(G, T, dtype=torch.bool, device=scores.device)
    s = scores.float().masked_fill(~valid, float("-inf"))
    # Two stable sorts: by score (descending, ties keep slot order), then valid slots first.
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    v_sorted = torch.gather(valid, 1, order).to(torch.uint8)
    order = torch.gather(order, 1, torch.sort(v_sorted, dim=-1, descending=True, stable=True).indices)
    rank_ok = (torch.arange(T, device=scores.device) < budget).expand(G, T)
    picked = rank_ok & torch.gather(valid, 1, order)
    anchors = torch.zeros(G, T, dtype=torch.bool, device=scores.device)
    return anchors.scatter(1, order, picked)


@torch.no_grad()
def assign_to_anchors(x: Tensor, pos: Tensor, valid: Tensor, anchors: Tensor, radius: int, threshold: float) -> Tensor:
    """Merge destinations.

    Args:
        x: (G, T, C) token features.
        pos: (G, T, 2) grid positions (row, col).
        valid: (G, T) bool.
        anchors: (G, T) bool anchor mask (only valid anchors count).
        radius: Chebyshev reach of an anchor, in grid cells.
        threshold: minimal cosine similarity to merge.

    Returns:
        (G, T) long ``dest``. Anchors and invalid slots map to themselves. A valid non-anchor token maps
        to the anchor of its group within ``radius`` with the highest cosine similarity (ties to the
        lower slot) if that similarity is ``>= threshold``, else to itself.
    """
    x, pos, valid = _check(x, pos, valid)
    G, T, _ = x.shape
    anchors = anchors.bool() & valid
    self_idx = torch.arange(T, device=x.device).expand(G, T)
    if T == 0:
        return self_idx.clone()
    xn = F.normalize(x, dim=-1)
    sim = torch.matmul(xn, xn.transpose(1, 2))                              # (G, T, T)
    allowed = anchors[:, None, :] & _spatial_window(pos, radius)
    sim = sim.masked_fill(~allowed, float("-inf"))
    best, arg = sim.max(dim=-1)                                             # first maximum on ties
    merge = valid & ~anchors & allowed.any(-1) & (best >= threshold)
    return torch.where(merge, arg, self_idx)


@torch.no_grad()
def ailurus_assignment(x: Tensor, pos: Tensor, valid: Tensor, *, budget: int, k: int, radius: int, threshold: float) -> Tensor:
    """Density-peak scores -> top-``budget`` anchors -> merge destinations.

    Args:
        x: (G, T, C); pos: (G, T, 2); valid: (G, T) bool.
        budget: anchors per group; k: density neighbours; radius: spatial reach (density and merges);
        threshold: minimal cosine similarity to merge.

    Returns:
        (G, T) long ``dest`` (see :func:`assign_to_anchors`).
    """
    score, _, _ = density_peak_scores(x, pos, valid, k, radius)
    anchors = select_anchors(score, valid, budget)
    return assign_to_anchors(x, pos, valid, anchors, radius, threshold)
