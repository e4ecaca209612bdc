"""Irregular token sets, and transformer blocks that run on them.

Methods that merge tokens (AiluRus, ToMe) leave a varying number of tokens in each attention
window, which a windowed ViT or Swin cannot take as a grid. Our scheme:

- **Storage.** The map is padded to whole attention windows, as the host pads it, and kept window
  by window: ``x`` (B, G, T, C) holds G windows of T slots. Merges happen within a window, so a
  token always belongs to one window. Each token carries its position (``pos``: row and column on
  the full-resolution grid; a merged token sits at the size-weighted mean of the positions it
  covers) and its size (the grid positions it stands for; 0 marks an empty slot, where a window
  has fewer tokens than the longest one). ``source`` names, for every grid position, the slot
  holding it.
- **Padding.** The host pads partial windows with zeros after ``norm1`` and lets them act as keys;
  padding positions are kept as tokens flagged ``padding``, zeroed after ``norm1`` in windowed
  attention and masked out of global attention, so with every token kept a block computes
  exactly what the host's block does. They never merge.
- **Attention.** Windowed blocks attend within each window over the tokens it holds (empty slots
  masked out). Swin's shifted blocks regroup the tokens by the shifted window that holds each
  token's position, with Swin's region mask evaluated at those positions. Global blocks attend
  over all tokens of the image.
- **Position terms** are evaluated at the tokens' offsets, which are fractional for merged tokens
  (:mod:`expedite.positions` interpolates ViTDet's decomposed tables and Swin's bias table).
- **Proportional attention** (ToMe): ``log(size)`` of each key is added to the logits, so a merged
  token weighs as the tokens it stands for.
- **Migration** (Fast-iTPN): tokens may also leave the set (:func:`keep_tokens`); their features
  are ``carried`` as they were and put back at their positions when restoring.
- **Gathering** (Fast-iTPN): a global block may attend to region summaries instead of every token
  (:mod:`expedite.gathering`); :func:`gathered_map_attention` does the same on a regular map.
- **Restoring** gives each grid position the final feature of the token that holds it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .gathering import gather_regions

__all__ = [
    "TokenBlock",
    "TokenSet",
    "gathered_map_attention",
    "keep_tokens",
    "merge_tokens",
    "merge_weighted",
    "run_token_block",
    "tokens_from_map",
    "tokens_to_map",
]


@dataclass
class TokenSet:
    """Tokens of a batch of maps, window by window (see the module docstring).

    Attributes:
        x: (B, G, T, C) features.
        pos: (B, G, T, 2) float32 (row, column) on the padded full-resolution grid.
        size: (B, G, T) float32 grid positions each token stands for; 0 for an empty slot.
        padding: (B, G, T) bool, the host's padding of partial windows.
        source: (B, Hp * Wp) long, the flat slot (``g * T + t``) holding each position of the
            padded grid, in raster order; ``G * T + p`` for a position ``p`` that migrated.
        height, width: the map's real size.
        group: (rows, columns) of one window; the whole map for a host without windows.
        groups: windows per column and per row of the padded map.
        carried: (B, Hp * Wp, C) features of the padded grid when tokens migrated, in raster
            order, read (by ``source``) only at the positions that migrated; None otherwise.
    """

    x: torch.Tensor
    pos: torch.Tensor
    size: torch.Tensor
    padding: torch.Tensor
    source: torch.Tensor
    height: int
    width: int
    group: Tuple[int, int]
    groups: Tuple[int, int]
    carried: Optional[torch.Tensor] = None

    @property
    def padded_size(self) -> Tuple[int, int]:
        return self.groups[0] * self.group[0], self.groups[1] * self.group[1]

    @property
    def occupied(self) -> torch.Tensor:
        """(B, G, T) bool: slots that hold a token (padding included)."""
        return self.size > 0

    @property
    def mergeable(self) -> torch.Tensor:
        """(B, G, T) bool: real tokens, which methods may merge."""
        return self.occupied & ~self.padding

    def replace(self, **changes) -> "TokenSet":
        return dataclasses.replace(self, **changes)


def _partition(x: torch.Tensor, group: Tuple[int, int]) -> torch.Tensor:
    """(B, Hp, Wp, ...) -> (B, G, group_h * group_w, ...), windows in raster order."""
    batch, height, width = x.shape[:3]
    rest = x.shape[3:]
    gh, gw = group
    x = x.reshape(batch, height // gh, gh, width // gw, gw, *rest).transpose(2, 3)
    return x.reshape(batch, (height // gh) * (width // gw), gh * gw, *rest)


def tokens_from_map(x: torch.Tensor, window: int) -> TokenSet:
    """Every position of a (B, H, W, C) map as a token of size 1, in ``window`` x ``window``
    windows (0: one group holding the whole map, for hosts without windowed attention)."""
    batch, height, width, _ = (int(d) for d in x.shape)
    group = (window, window) if window > 0 else (height, width)
    groups = (-(-height // group[0]), -(-width // group[1]))
    padded_h, padded_w = groups[0] * group[0], groups[1] * group[1]
    x = F.pad(x, (0, 0, 0, padded_w - width, 0, padded_h - height))
    rows = torch.arange(padded_h, device=x.device)
    cols = torch.arange(padded_w, device=x.device)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)  # (Hp, Wp, 2)
    pos = _partition(grid[None].float(), group).expand(batch, -1, -1, -1)
    padding = _partition(((grid[..., 0] >= height) | (grid[..., 1] >= width))[None], group)
    raster = _partition(torch.arange(padded_h * padded_w, device=x.device).reshape(1, padded_h, padded_w), group)
    source = torch.empty_like(raster.reshape(-1))
    source[raster.reshape(-1)] = torch.arange(raster.numel(), device=x.device)
    return TokenSet(
        x=_partition(x, group),
        pos=pos.contiguous(),
        size=torch.ones(pos.shape[:3], device=x.device),
        padding=padding.expand(batch, -1, -1).contiguous(),
        source=source.expand(batch, -1).contiguous(),
        height=height,
        width=width,
        group=group,
        groups=groups,
    )


def tokens_to_map(tokens: TokenSet) -> torch.Tensor:
    """(B, H, W, C): every grid position gets the feature of the token that holds it."""
    batch, _, _, channels = tokens.x.shape
    padded_h, padded_w = tokens.padded_size
    flat = tokens.x.reshape(batch, -1, channels)
    if tokens.carried is not None:
        flat = torch.cat([flat, tokens.carried.to(flat.dtype)], 1)
    out = flat.gather(1, tokens.source[..., None].expand(-1, -1, channels))
    return out.reshape(batch, padded_h, padded_w, channels)[:, : tokens.height, : tokens.width]


def merge_weighted(
    x: torch.Tensor, size: torch.Tensor, dest: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merge tokens into their destinations: size-weighted means and summed sizes.

    Args:
        x: (G, T, ...) token features.
        size: (G, T) float, how many input tokens each slot already stands for (0 for empty
            slots).
        dest: (G, T) long (e.g. from :func:`expedite.tome.bipartite_soft_matching`): a slot merged into another has
            ``dest != itself``; destinations map to themselves (no chains).

    Returns:
        x_merged: (G, T, ...) in ``x``'s dtype. Each slot that receives tokens holds the
            size-weighted mean of itself and what it received; every other slot (unmerged,
            empty or merged away) keeps its features bit for bit.
        size_merged: (G, T) in ``size``'s dtype (summed in float32): destinations hold the summed
            size, merged-away slots 0, the rest their old size.

    Sums use ``scatter_add``; on CUDA, a destination receiving two or more tokens is summed in
    an order that can vary in the last bit unless ``torch.use_deterministic_algorithms`` is on.
    """
    if x.dim() < 2 or size.shape != x.shape[:2] or dest.shape != x.shape[:2]:
        raise ValueError(
            f"x must be (G, T, ...), size and dest (G, T); got {tuple(x.shape)}, "
            f"{tuple(size.shape)}, {tuple(dest.shape)}"
        )
    G, T = dest.shape
    feats = x.float().reshape(G, T, -1)
    s = size.float()
    dest = dest.long()
    slots = torch.arange(T, device=dest.device).expand(G, T)
    moved = dest != slots

    size_sum = torch.zeros_like(s).scatter_add_(1, dest, s)
    size_out = torch.where(moved, torch.zeros_like(s), size_sum)
    weighted = torch.zeros_like(feats).scatter_add_(
        1, dest.unsqueeze(-1).expand_as(feats), feats * s.unsqueeze(-1)
    )
    # Only slots that receive something are recomputed: x * s / s need not round back to x.
    received = torch.zeros(G, T, dtype=torch.long, device=dest.device).scatter_add_(
        1, dest, moved.long()
    ) > 0
    update = received & (size_sum > 0)
    mean = weighted / size_sum.clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(-1)
    x_out = torch.where(update.unsqueeze(-1), mean, feats)
    return x_out.reshape(x.shape).to(x.dtype), size_out.to(size.dtype)


def _compaction(kept: torch.Tensor):
    """For a (B, G, T) mask of slots that stay: each slot's rank among its window's staying slots,
    the new slot count T', and ``compact(values, *extra)``, which moves the staying slots of
    (B * G, T, *extra) or (B, G, T, *extra) values to the front, in order, -> (B, G, T', *extra);
    the slots past a window's last token are zero (size 0: empty)."""
    batch, num_groups, slots = kept.shape
    rank = kept.long().cumsum(-1) - 1
    new_slots = max(int(kept.sum(-1).max()), 1)
    target = torch.where(kept, rank, torch.full_like(rank, new_slots))  # leaving: past the end

    def compact(values: torch.Tensor, *extra: int) -> torch.Tensor:
        values = values.reshape(batch, num_groups, slots, *extra)
        out = torch.zeros((batch, num_groups, new_slots + 1, *extra), dtype=values.dtype, device=values.device)
        index = target.reshape(batch, num_groups, slots, *([1] * len(extra))).expand_as(values)
        return out.scatter_(2, index, values)[:, :, :new_slots]

    return rank, new_slots, compact


def keep_tokens(tokens: TokenSet, kept: torch.Tensor) -> TokenSet:
    """Keep the slots ``kept`` (B, G, T) and let the other tokens migrate: they leave the set,
    and their features, as they are now, return at their positions in :func:`tokens_to_map`.

    Only a set whose tokens were never merged can migrate (each token holds one position).
    Windows keep their order; within a window the remaining tokens keep theirs.
    """
    batch, num_groups, slots, channels = tokens.x.shape
    rank, new_slots, compact = _compaction(kept)
    flat = tokens.x.reshape(batch, -1, channels)
    carried = flat.gather(1, tokens.source[..., None].expand(-1, -1, channels))
    group_start = torch.arange(num_groups, device=kept.device)[:, None] * new_slots
    new_flat = torch.where(kept, rank + group_start, -1).reshape(batch, -1).gather(1, tokens.source)
    raster = torch.arange(tokens.source.shape[1], device=kept.device)
    return tokens.replace(
        x=compact(tokens.x, channels),
        pos=compact(tokens.pos, 2),
        size=compact(tokens.size),
        padding=compact(tokens.padding),
        source=torch.where(new_flat >= 0, new_flat, num_groups * new_slots + raster),
        carried=carried,
    )


def merge_tokens(tokens: TokenSet, dest: torch.Tensor) -> TokenSet:
    """Merge every slot into ``dest`` (B, G, T) (its own slot to stay) and drop the emptied
    slots: features and positions become size-weighted means (:func:`merge_weighted`), sizes
    add up, and ``source`` follows every position to the token that now holds it.

    ``dest`` must point at slots that point at themselves (no chains), within the same window.
    Windows keep their order; within a window the remaining tokens keep theirs.
    """
    batch, num_groups, slots, channels = tokens.x.shape
    device = tokens.x.device

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch * num_groups, slots, *t.shape[3:])

    merged_x, size = merge_weighted(flat(tokens.x), flat(tokens.size), flat(dest))
    merged_pos, _ = merge_weighted(flat(tokens.pos), flat(tokens.size), flat(dest))
    size = size.reshape(batch, num_groups, slots)
    kept = size > 0
    rank, new_slots, compact = _compaction(kept)

    # Where every old slot's token now lives: its destination's new slot.
    new_slot_of = rank.gather(2, dest).clamp_min(0)
    new_flat = (new_slot_of + torch.arange(num_groups, device=device)[:, None] * new_slots).reshape(batch, -1)
    return tokens.replace(
        x=compact(merged_x, channels),
        pos=compact(merged_pos, 2),
        size=compact(size),
        padding=compact(tokens.padding & kept),
        source=new_flat.gather(1, tokens.source),
    )


@dataclass
class TokenBlock:
    """What a host tells :func:`run_token_block` about one of its blocks: the pre-norm block
    ``x + attn(norm1(x)); x + mlp(norm2(x))`` with multi-head attention ``proj(softmax(q k^T *
    scale + position terms) v)``, ``qkv`` producing q, k, v in that order, heads innermost.

    Attributes:
        window: side of the block's attention windows at full resolution, 0 for global attention.
        shift: Swin's cyclic shift of the windows (0: none).
        position_bias: ``(q, dy, dx) -> (N, heads, L, L)`` logit terms for query/key offsets
            ``dy``, ``dx`` (N, L, L) in grid positions (fractional for merged tokens), or None.
        position_features: ``(q, pos, key_pos=None) -> (q_extra (N, heads, L, E), k_extra (N, K,
            E))`` whose product is the logit term, for queries at ``pos`` (N, L, 2) within the
            attention's map (the window, or the whole map) and keys at ``key_pos`` (N, K, 2)
            (None: the queries' own positions); the cheaper form for large attentions.
        region_logit: added to the logits of token pairs from different regions of a shifted
            window (Swin's mask value).
    """

    norm1: nn.Module
    qkv: nn.Module
    proj: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    num_heads: int
    scale: float
    window: int
    shift: int = 0
    position_bias: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None
    position_features: Optional[Callable[..., Tuple[torch.Tensor, torch.Tensor]]] = None
    region_logit: float = -100.0


class _Packing:
    """Tokens regrouped by another window partition (Swin's shifted windows): packs (B, M, ...)
    tensors into (B * G', L, ...) windows, padded with empty slots, and back."""

    def __init__(self, window_id: torch.Tensor, include: torch.Tensor, num_windows: int):
        batch, count = window_id.shape
        key = torch.where(include, window_id + torch.arange(batch, device=window_id.device)[:, None] * num_windows,
                          torch.full_like(window_id, batch * num_windows)).reshape(-1)
        sorted_key, order = torch.sort(key, stable=True)
        included = int(include.sum())
        counts = torch.bincount(sorted_key[:included], minlength=batch * num_windows)
        self.length = max(int(counts.max()), 1)
        starts = counts.cumsum(0) - counts
        self.order = order[:included]
        sorted_key = sorted_key[:included]
        rank = torch.arange(included, device=key.device) - starts[sorted_key]
        self.slot = sorted_key * self.length + rank
        self.shape = (batch * num_windows, self.length)
        self.filled = torch.zeros(self.shape[0] * self.shape[1], dtype=torch.bool, device=key.device)
        self.filled[self.slot] = True
        self.filled = self.filled.reshape(self.shape)
        self.batch_count = (batch, count)

    def pack(self, values: torch.Tensor, fill=0) -> torch.Tensor:
        flat = values.reshape(-1, *values.shape[2:])
        out = torch.full((self.shape[0] * self.shape[1], *values.shape[2:]), fill, dtype=flat.dtype, device=flat.device)
        out[self.slot] = flat[self.order]
        return out.reshape(*self.shape, *values.shape[2:])

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        flat = packed.reshape(-1, *packed.shape[2:])
        out = flat.new_zeros((self.batch_count[0] * self.batch_count[1], *packed.shape[2:]))
        out[self.order] = flat[self.slot]
        return out.reshape(*self.batch_count, *packed.shape[2:])


def _shifted_coordinates(pos: torch.Tensor, padded: Tuple[int, int], window: int, shift: int):
    """Positions on the map rolled by ``shift``, their shifted window, and Swin's region label
    (0: untouched windows, 1: last window before the seam, 2: wrapped around), per axis."""
    size = torch.tensor(padded, dtype=pos.dtype, device=pos.device)
    rolled = torch.remainder(pos - shift, size)
    cell = torch.div(rolled, window, rounding_mode="floor").long()
    region = (rolled >= size - window).long() + (rolled >= size - shift).long()
    return rolled, cell, region


def _row_index(rows: torch.Tensor) -> torch.Tensor:
    """Flat indices of the True entries of ``rows``, for :func:`_on_rows`."""
    return rows.reshape(-1).nonzero().squeeze(1)


def _on_rows(module: nn.Module, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``module`` on the rows ``index`` (from :func:`_row_index`) of ``x`` (..., C), zeros
    elsewhere: empty slots and padding cost nothing in the linear layers."""
    flat = x.reshape(-1, x.shape[-1])
    picked = module(flat.index_select(0, index))
    out = picked.new_zeros(flat.shape[0], picked.shape[-1])
    return out.index_copy(0, index, picked).reshape(*x.shape[:-1], picked.shape[-1])


def _attention(block: TokenBlock, y: torch.Tensor, pos: torch.Tensor, key_bias: torch.Tensor,
               pair_bias: Optional[torch.Tensor], rows: torch.Tensor,
               with_keys: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Multi-head attention of ``y`` (N, L, C) at positions ``pos`` (N, L, 2) (within the
    attention's window, or the map for global attention) with additive
    per-key ``key_bias`` (N, L) and optional per-pair ``pair_bias`` (N, L, L); only the ``rows``
    (N, L) that hold tokens are projected. Returns the output (N, L, C) and, ``with_keys``, the
    keys averaged over heads (N, L, C / heads), else None."""
    num, length, channels = y.shape
    index = _row_index(rows)
    qkv = _on_rows(block.qkv, y, index).reshape(num, length, 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (N, heads, L, head_dim)
    scaled, keys = q * block.scale, k
    if block.position_features is not None:
        # One matmul for both terms: [q * scale, q_extra] . [k, k_extra], no L x L temporary.
        q_extra, k_extra = block.position_features(q, pos)
        scaled = torch.cat([scaled, q_extra.to(q.dtype)], -1)
        keys = torch.cat([k, k_extra[:, None].expand(-1, block.num_heads, -1, -1).to(k.dtype)], -1)
    logits = scaled @ keys.transpose(-2, -1)
    if block.position_bias is not None:
        offsets = pos[:, :, None, :] - pos[:, None, :, :]
        logits += block.position_bias(q, offsets[..., 0], offsets[..., 1]).to(logits.dtype)
    logits += key_bias[:, None, None, :].to(logits.dtype)
    if pair_bias is not None:
        logits += pair_bias[:, None].to(logits.dtype)
    out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(num, length, channels)
    return _on_rows(block.proj, out, index), k.mean(dim=1) if with_keys else None


def _gathered_attention(block: TokenBlock, y: torch.Tensor, pos: torch.Tensor, size: torch.Tensor,
                        rows: torch.Tensor, regions: int, map_size: Tuple[int, int]) -> torch.Tensor:
    """Global attention of the tokens ``y`` (B, M, C) at ``pos`` (B, M, 2) on a ``map_size`` map,
    standing for ``size`` (B, M) positions each, to the ``regions`` x ``regions`` gathering tokens
    pooled from them (:func:`expedite.gathering.gather_regions`); only the ``rows`` (B, M) that
    hold real tokens are projected, attend and are pooled. Returns the output (B, M, C)."""
    batch, length, channels = y.shape
    heads = block.num_heads
    index = _row_index(rows)
    qkv = _on_rows(block.qkv, y, index).reshape(batch, length, 3, channels)
    q = qkv[:, :, 0].reshape(batch, length, heads, -1).transpose(1, 2)  # (B, heads, M, head_dim)
    with torch.autocast(y.device.type, enabled=False):
        pooled, centres, weight = gather_regions(qkv[:, :, 1:].flatten(2).float(), pos, size, rows, regions, map_size)
    k_pooled, v_pooled = (t.reshape(batch, -1, heads, channels // heads).transpose(1, 2).to(q.dtype)
                          for t in pooled.chunk(2, dim=-1))  # (B, heads, G, head_dim)
    scaled, keys = q * block.scale, k_pooled
    if block.position_features is not None:
        q_extra, k_extra = block.position_features(q, pos, key_pos=centres)
        scaled = torch.cat([scaled, q_extra.to(q.dtype)], -1)
        keys = torch.cat([keys, k_extra[:, None].expand(-1, heads, -1, -1).to(keys.dtype)], -1)
    logits = scaled @ keys.transpose(-2, -1)
    # Each gathering token weighs as the tokens it stands for; empty regions are never attended.
    region_bias = torch.where(weight > 0, weight.clamp_min(1).log(), torch.finfo(torch.float32).min)
    logits += region_bias[:, None, None, :].to(logits.dtype)
    out = (logits.softmax(dim=-1) @ v_pooled).transpose(1, 2).reshape(batch, length, channels)
    return _on_rows(block.proj, out, index)


def gathered_map_attention(block: TokenBlock, y: torch.Tensor, regions: int) -> torch.Tensor:
    """Token gathering in a global block on a regular map: ``y`` (B, H, W, C) (after ``norm1``)
    -> the attention's output (B, H, W, C), every position a token of size 1."""
    batch, height, width, channels = y.shape
    rows = torch.arange(height, device=y.device)
    cols = torch.arange(width, device=y.device)
    pos = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(1, -1, 2).float()
    ones = torch.ones(batch, height * width, device=y.device)
    out = _gathered_attention(block, y.reshape(batch, -1, channels), pos.expand(batch, -1, -1), ones,
                              ones.bool(), regions, (height, width))
    return out.reshape(batch, height, width, channels)


def run_token_block(
    block: TokenBlock,
    tokens: TokenSet,
    *,
    proportional_attention: bool = False,
    merge: Optional[Callable[[TokenSet, torch.Tensor], TokenSet]] = None,
    gather: int = 0,
) -> TokenSet:
    """One host block on a token set (see the module docstring).

    Args:
        merge: called between attention and MLP, as ToMe merges, with the tokens and their keys
            averaged over heads (B, G, T, C / heads); returns the (merged) tokens.
        gather: in a global block, attend to ``gather`` x ``gather`` gathering tokens over the
            real map instead of every token (0: every token); not with ``merge``.
    """
    if merge is not None and gather > 0:
        raise ValueError("run_token_block: merging (ToMe) and gathering in one block are not supported")
    batch, num_groups, slots, channels = tokens.x.shape
    masked = torch.finfo(torch.float32).min
    with_keys = merge is not None
    # Empty slots are never attended to; padding only in windowed attention (as the host pads).
    excluded = ~tokens.occupied if block.window > 0 else ~tokens.mergeable
    key_bias = torch.where(excluded, torch.full_like(tokens.size, masked), torch.zeros_like(tokens.size))
    if proportional_attention:
        key_bias = key_bias + torch.where(excluded, torch.zeros_like(tokens.size), tokens.size.clamp_min(1).log())

    def flat(t: torch.Tensor) -> torch.Tensor:
        """(B, G, T, ...) -> (B, G * T, ...): the image's tokens in one row, for regrouping."""
        return t.reshape(batch, num_groups * slots, *t.shape[3:])

    y = block.norm1(tokens.x)
    if block.window > 0:
        y = y.masked_fill(tokens.padding[..., None], 0)

    if block.window > 0 and block.shift:
        rolled, cell, region = _shifted_coordinates(tokens.pos, tokens.padded_size, block.window, block.shift)
        windows_per_row = tokens.padded_size[1] // block.window
        window_id = (cell[..., 0] * windows_per_row + cell[..., 1]).reshape(batch, -1)
        packing = _Packing(window_id, tokens.occupied.reshape(batch, -1), num_groups)
        label = flat(region[..., 0] * 3 + region[..., 1])
        label = packing.pack(label, -1)
        pair_bias = torch.where(label[:, :, None] == label[:, None, :], 0.0, block.region_logit)
        local = rolled - cell * block.window
        out, keys = _attention(block, packing.pack(flat(y)), packing.pack(flat(local)),
                               packing.pack(flat(key_bias), masked), pair_bias, packing.filled, with_keys)
    elif block.window > 0:
        # Windowed: one attention per stored window.
        groups = batch * num_groups
        pos = torch.remainder(tokens.pos, block.window)
        out, keys = _attention(block, y.reshape(groups, -1, channels), pos.reshape(groups, -1, 2),
                               key_bias.reshape(groups, -1), None, tokens.occupied.reshape(groups, -1), with_keys)
    elif gather > 0:
        out, keys = _gathered_attention(block, flat(y), flat(tokens.pos), flat(tokens.size), flat(tokens.mergeable),
                                        gather, (tokens.height, tokens.width)), None
    else:
        # Global: over the real tokens of each image, packed together (no padding, no empty slots).
        include = tokens.mergeable.reshape(batch, -1)
        packing = _Packing(torch.zeros_like(include, dtype=torch.long), include, 1)
        out, keys = _attention(block, packing.pack(flat(y)), packing.pack(flat(tokens.pos)),
                               packing.pack(flat(key_bias), masked), None, packing.filled, with_keys)
    if (block.window == 0 and gather == 0) or block.shift:
        out = packing.unpack(out)
        keys = packing.unpack(keys) if with_keys else None
    x = tokens.x + out.reshape(tokens.x.shape)
    tokens = tokens.replace(x=x)
    if with_keys:
        tokens = merge(tokens, keys.reshape(batch, num_groups, slots, -1))
    x = tokens.x
    # The host's MLP runs on real tokens only (its windowed blocks crop the padding first).
    mlp = _on_rows(lambda t: block.mlp(block.norm2(t)), x, _row_index(tokens.mergeable))
    return tokens.replace(x=x + mlp)
