"""Token clustering and token reconstruction (Expedit, Yuan et al., TPAMI 2023): the functional core.

Pure PyTorch, no detectron2. Every function works on *groups* of token maps laid out channel-last,
``(G, H, W, C)``; a host decides what a group is (a whole image, or one attention window).

Clustering turns each ``H x W`` map into an ``h x w`` map of cluster centres by a few rounds of
local soft k-means; reconstruction rebuilds the ``H x W`` map from centres refined by later blocks,
each token taking its ``k`` most similar clusters as measured at clustering time.

Locality: token ``n`` may only join the centres within ``radius`` grid cells of its own cell (the
cell of the ``h x w`` grid it falls in). The grid is cut into tiles of ``TILE x TILE`` cells; the
tokens of a tile are compared, in one matrix product, with the centres of the tile and its
``radius``-wide halo, and each token's logits are masked to its own ``(2r+1)^2`` window. The cost
is ``O(N * (TILE + 2r)^2 * C)``: linear in the number of tokens, never a dense ``N x M`` matrix. A
per-window grid (7x7, 8x8) is a single tile, so windowed hosts do one batched product per round.

Both layers compute in float32 (also under autocast) and return the input dtype.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["ClusterContext", "cluster_tokens", "reconstruct_tokens", "grid_layout"]

# Finite stand-ins for -inf / +inf, so that rows with no valid entry (padding) give 0, not NaN.
_NEG_LARGE = torch.finfo(torch.float32).min
_POS_LARGE = torch.finfo(torch.float32).max


# Side of a tile, in grid cells. Larger tiles mean fewer, bigger matrix products but more
# masked-out comparisons ((TILE + 2r)^2 per token instead of (2r+1)^2).
TILE = 8


@dataclass(frozen=True)
class GridLayout:
    """Static index tables tying an ``H x W`` token map to an ``h x w`` centre grid, by tiles.

    Attributes:
        members: (T, P) token indices of each tile, padded with ``N`` (a dummy token).
        candidates: (T, K) centres in each tile and its halo; padding slots hold centre 0 and are
            never allowed.
        allowed: (T, P, K) bool, True where the candidate lies within the token's locality window.
        sources: (M, S) flat indices ``tile * K + slot`` of every slot holding centre ``m``,
            padded with ``T * K``. Centre updates gather these (deterministic) instead of
            scatter-adding.
    """

    members: torch.Tensor
    candidates: torch.Tensor
    allowed: torch.Tensor
    sources: torch.Tensor


OWN_CELLS = ("centre", "floor")


def _cell_of_position(size: int, cells: int, own_cell: str = "centre") -> torch.Tensor:
    """(size,) long: the grid cell each of ``size`` positions belongs to, for its locality window.

    "centre": the cell whose centre is nearest, floor((i + 1/2) * cells / size), exact in
    integers; symmetric, so a window and its mirror image get mirrored cells.
    "floor": the official code's nearest-neighbour interpolation of the cell labels,
    floor(i * cells / size) as PyTorch computes it in float32 (it agrees with the exact integer
    floor for every window size up to 43); it leans towards the top-left cells.
    """
    if own_cell == "centre":
        return ((2 * torch.arange(size) + 1) * cells) // (2 * size)
    if own_cell == "floor":
        labels = torch.arange(cells, dtype=torch.float32).reshape(1, 1, cells)
        return F.interpolate(labels, size=size, mode="nearest").reshape(size).long()
    raise ValueError(f"own_cell must be one of {OWN_CELLS}, got {own_cell!r}")


def _pad_rows(rows, pad_value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [pad_value] * (width - len(r)) for r in rows], dtype=torch.long)


@functools.lru_cache(maxsize=64)
def _grid_layout_cpu(
    height: int, width: int, grid_h: int, grid_w: int, radius: int, own_cell: str
) -> GridLayout:
    num_tokens, num_cells = height * width, grid_h * grid_w
    token_row = _cell_of_position(height, grid_h, own_cell).repeat_interleave(width)
    token_col = _cell_of_position(width, grid_w, own_cell).repeat(height)
    tiles_h, tiles_w = -(-grid_h // TILE), -(-grid_w // TILE)
    token_tile = (token_row // TILE) * tiles_w + token_col // TILE

    members, candidates = [], []
    for tile in range(tiles_h * tiles_w):
        row0, col0 = (tile // tiles_w) * TILE, (tile % tiles_w) * TILE
        members.append(torch.nonzero(token_tile == tile).flatten().tolist())
        rows = range(max(row0 - radius, 0), min(row0 + TILE + radius, grid_h))
        cols = range(max(col0 - radius, 0), min(col0 + TILE + radius, grid_w))
        candidates.append([r * grid_w + c for r in rows for c in cols])
    members = _pad_rows(members, num_tokens)
    candidates = _pad_rows(candidates, num_cells)

    member_valid = members < num_tokens
    cand_valid = candidates < num_cells
    safe_members = members.clamp(max=num_tokens - 1)
    safe_cands = candidates.clamp(max=num_cells - 1)
    row_gap = (token_row[safe_members][:, :, None] - (safe_cands // grid_w)[:, None, :]).abs()
    col_gap = (token_col[safe_members][:, :, None] - (safe_cands % grid_w)[:, None, :]).abs()
    allowed = (row_gap <= radius) & (col_gap <= radius)
    allowed &= member_valid[:, :, None] & cand_valid[:, None, :]

    slots_of_centre = [[] for _ in range(num_cells)]
    for flat, centre in enumerate(candidates.flatten().tolist()):
        if centre < num_cells:
            slots_of_centre[centre].append(flat)
    sources = _pad_rows(slots_of_centre, candidates.numel())
    return GridLayout(members, safe_cands, allowed, sources)


def grid_layout(
    height: int,
    width: int,
    grid_h: int,
    grid_w: int,
    radius: int,
    device: torch.device,
    own_cell: str = "centre",
) -> GridLayout:
    """Index tables for clustering an ``height x width`` map to ``grid_h x grid_w`` (cached);
    ``own_cell`` as in :func:`cluster_tokens`."""
    layout = _grid_layout_cpu(height, width, grid_h, grid_w, radius, own_cell)
    return GridLayout(*(t.to(device) for t in (layout.members, layout.candidates, layout.allowed, layout.sources)))


@dataclass
class ClusterContext:
    """What reconstruction needs from the clustering step.

    Attributes:
        tokens: (G, N, C) float32 tokens that entered the clustering layer.
        centres: (G, M, C) float32 centres produced by it.
        centre_valid: (G, M) bool, False for centres whose cell holds no valid token.
        size: (H, W) of the token map.
    """

    tokens: torch.Tensor
    centres: torch.Tensor
    centre_valid: torch.Tensor
    size: Tuple[int, int]


def _pad_one(x: torch.Tensor) -> torch.Tensor:
    """Append one zero row along dim 1, the target of padded indices."""
    return torch.cat([x, x.new_zeros((x.shape[0], 1) + x.shape[2:])], dim=1)


def _initial_centres(x: torch.Tensor, mask: torch.Tensor, grid: Tuple[int, int]):
    """Masked adaptive average pooling. x: (G, H, W, C), mask: (G, H, W) -> (G, M, C), (G, M)."""
    weights = mask.to(x.dtype).unsqueeze(1)  # (G, 1, H, W)
    summed = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2) * weights, grid)
    counts = F.adaptive_avg_pool2d(weights, grid)
    centres = summed / counts.clamp_min(1e-12)
    return centres.flatten(2).transpose(1, 2), counts.flatten(1) > 0


def _squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(..., P, C) x (..., K, C) -> (..., P, K) squared L2 distances, clamped at 0."""
    cross = points @ centres.transpose(-1, -2)
    sq = points.pow(2).sum(-1, keepdim=True) + centres.pow(2).sum(-1).unsqueeze(-2) - 2 * cross
    return sq.clamp_min(0)


def cluster_tokens(
    x: torch.Tensor,
    grid: Tuple[int, int],
    n_iters: int,
    temperature: float,
    radius: int,
    token_mask: Optional[torch.Tensor] = None,
    *,
    own_cell: str = "centre",
    initial_centres: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, ClusterContext]:
    """Cluster each token map into a smaller map of centres by local soft k-means.

    Args:
        x: (G, H, W, C) token maps.
        grid: (h, w) centres per map, ``h <= H`` and ``w <= W``.
        n_iters: rounds of soft k-means after the initialisation (pooled, or ``initial_centres``).
        temperature: multiplier ``t`` of the assignment ``softmax(-t * squared distance)``.
        radius: a token may join centres within ``radius`` cells of its own cell.
        token_mask: (G, H, W) bool, False for padding tokens that must not shape any centre.
        own_cell: which grid cell centres a token's locality window: "centre" (ours, the cell
            whose centre is nearest) or "floor" (the official code's, ``floor(i * h / H)``).
        initial_centres: (G, h, w, C) centres the soft k-means starts from, in place of the
            masked average pooling (e.g. the previous video frame's final centres,
            ``context.centres``: the temporal warm start); taken in float32, no gradient flows
            into them. Which centres exist is still decided by ``token_mask`` (a cell with no
            valid token gives a zero centre whatever its initial value). None: pooling.

    Returns:
        centres: (G, h, w, C) in ``x.dtype``; centres of cells with no valid token are zero.
        context: what :func:`reconstruct_tokens` needs.
    """
    groups, height, width, channels = (int(d) for d in x.shape)
    grid_h, grid_w = grid
    if not (1 <= grid_h <= height and 1 <= grid_w <= width):
        raise ValueError(f"cluster grid {grid_h}x{grid_w} does not fit a {height}x{width} token map")
    out_dtype = x.dtype
    with torch.autocast(x.device.type, enabled=False):
        x32 = x.float()
        if token_mask is None:
            token_mask = torch.ones(groups, height, width, dtype=torch.bool, device=x.device)
        centres, centre_valid = _initial_centres(x32, token_mask, grid)
        if initial_centres is not None:
            expected = (groups, grid_h, grid_w, channels)
            if tuple(initial_centres.shape) != expected:
                raise ValueError(
                    f"initial_centres of shape {tuple(initial_centres.shape)} do not fit the clustering "
                    f"of {groups} groups to {grid_h}x{grid_w} centres of {channels} channels; expected {expected}"
                )
            centres = initial_centres.detach().to(device=x.device, dtype=torch.float32).reshape(
                groups, grid_h * grid_w, channels
            )
        tokens = x32.reshape(groups, height * width, channels)
        layout = grid_layout(height, width, grid_h, grid_w, radius, x.device, own_cell)

        member_tokens = _pad_one(tokens)[:, layout.members]  # (G, T, P, C)
        member_weight = _pad_one(token_mask.reshape(groups, -1).float())[:, layout.members]  # (G, T, P)
        member_weight = member_weight.unsqueeze(-1)
        # Padded candidate slots point at centre 0 and are blocked here, like invalid centres.
        blocked = ~(layout.allowed & centre_valid[:, layout.candidates].unsqueeze(2))  # (G, T, P, K)
        tiles, slots = layout.candidates.shape
        flat_members = member_tokens.flatten(0, 1)  # (G*T, P, C)
        for _ in range(n_iters):
            # Assignments carry no gradient (as in Expedit); centres stay differentiable in x.
            with torch.no_grad():
                candidate_centres = centres[:, layout.candidates].flatten(0, 1)  # (G*T, K, C)
                # -t * |x - c|^2 up to the per-token |x|^2, which softmax ignores.
                logits = torch.baddbmm(
                    -temperature * candidate_centres.pow(2).sum(-1).unsqueeze(1),
                    flat_members,
                    candidate_centres.transpose(1, 2),
                    alpha=2 * temperature,
                ).view(groups, tiles, -1, slots)
                assign = torch.softmax(logits.masked_fill_(blocked, _NEG_LARGE), dim=-1) * member_weight
            # Each (tile, slot) adds its tokens' weighted sum to the centre in that slot.
            sums = assign.transpose(-1, -2) @ member_tokens  # (G, T, K, C)
            mass = assign.sum(2)  # (G, T, K)
            sums = _pad_one(sums.flatten(1, 2))[:, layout.sources].sum(2)  # (G, M, C)
            mass = _pad_one(mass.flatten(1, 2))[:, layout.sources].sum(2)  # (G, M)
            centres = torch.where(
                (mass > 0).unsqueeze(-1), sums / mass.clamp_min(1e-12).unsqueeze(-1), centres
            )
        centres = centres * centre_valid.unsqueeze(-1)
        context = ClusterContext(tokens.detach(), centres.detach(), centre_valid, (height, width))
    return centres.reshape(groups, grid_h, grid_w, channels).to(out_dtype), context


def reconstruct_tokens(
    refined: torch.Tensor,
    context: ClusterContext,
    k: int,
    temperature: float,
    normalize: str = "sum",
    *,
    keep_ties: bool = False,
    shift_distances: bool = True,
) -> torch.Tensor:
    """Rebuild full-resolution token maps from refined centres.

    Each token takes its ``k`` nearest clusters (distances measured at clustering time), with
    weights ``exp(-temperature * squared distance)`` normalised per token, and mixes the refined
    centres of those clusters. ``normalize="sum"`` makes the weights sum to one (a convex
    combination, our default); ``"l2"`` divides by their L2 norm, as the official code does.

    Args:
        refined: (G, h, w, C) centres after the later blocks.
        context: from :func:`cluster_tokens` on the same groups.
        k: clusters per token, ``1 <= k <= h * w``.
        temperature: the multiplier ``t'``, finite and > 0 (any size: see ``shift_distances``).
        normalize: "sum" or "l2".
        keep_ties: False (ours): exactly ``k`` clusters per token. True (official): every
            cluster whose weight is >= the k-th largest, so ties give more than ``k``.
        shift_distances: True (ours): the distances are shifted by each token's smallest before
            ``exp``, which leaves the normalised weights unchanged and keeps them finite and
            non-zero for any ``temperature``. False (official): ``exp(-t' d)`` as it is, which
            underflows to 0 once ``t' * d_min`` exceeds about 90; such a token becomes 0.

    Returns:
        (G, H, W, C) tokens in ``refined.dtype``; never NaN for finite inputs.
    """
    groups, grid_h, grid_w, channels = (int(d) for d in refined.shape)
    num_centres = grid_h * grid_w
    if context.centres.shape[:2] != (groups, num_centres):
        raise ValueError(
            f"refined centres {tuple(refined.shape)} do not match the clustering "
            f"({context.centres.shape[0]} groups of {context.centres.shape[1]} centres)"
        )
    if not 1 <= k <= num_centres:
        raise ValueError(f"reconstruction k={k} must lie in [1, {num_centres}] (the cluster count)")
    if normalize not in ("sum", "l2"):
        raise ValueError(f"reconstruction normalize must be 'sum' or 'l2', got {normalize!r}")
    out_dtype = refined.dtype
    with torch.autocast(refined.device.type, enabled=False):
        with torch.no_grad():
            distances = _squared_distances(context.tokens, context.centres)  # (G, N, M)
            valid = context.centre_valid.unsqueeze(1)  # (G, 1, M)
            distances = distances.masked_fill(~valid, _POS_LARGE)
            if keep_ties:
                if shift_distances:
                    distances = distances - distances.amin(-1, keepdim=True)
                # Dense weights; ties are decided on the weights, as the official code does.
                weights = torch.exp(-temperature * distances)
                # Invalid centres rank below every real weight (>= 0) and are dropped after.
                ranked = weights.masked_fill(~valid, -1.0)
                kth = torch.topk(ranked, k, dim=-1).values.amin(-1, keepdim=True)
                mixing = torch.where((ranked >= kth) & valid, weights, torch.zeros_like(weights))
            else:
                nearest, index = torch.topk(distances, k, dim=-1, largest=False, sorted=False)
                if shift_distances:
                    # Shifting by the nearest distance leaves the normalised weights unchanged
                    # and avoids underflow when every distance is large.
                    nearest = nearest - nearest.amin(-1, keepdim=True)
                weights = torch.exp(-temperature * nearest)
                mixing = torch.zeros_like(distances).scatter_(-1, index, weights)  # k non-zeros
            # The clamp only acts on rows that underflowed to all zeros (unshifted weights): they
            # stay 0 instead of becoming NaN, as F.normalize does in the official code.
            if normalize == "sum":
                mixing = mixing / mixing.sum(-1, keepdim=True).clamp_min(1e-12)
            else:
                mixing = mixing / mixing.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        out = mixing @ refined.float().reshape(groups, num_centres, channels)
    height, width = context.size
    return out.reshape(groups, height, width, channels).to(out_dtype)
