"""Fast-iTPN's token gathering, training-free: global attention to a few region summaries.

A global-attention block over N tokens costs O(N^2). With gathering, every query attends to G
gathering tokens instead, one per region of a ``regions`` x ``regions`` partition of the map: the
region's keys and values pooled (size-weighted means), placed at the region's centre for the
relative position terms, and weighted by the tokens it stands for (``log(size)`` added to its
logit, as proportional attention does). That is O(N * G). When the tokens of a region are alike,
``size * exp(q . mean k)`` is their summed ``exp(q . k)`` and the pooled value their mean, so the
output is the full attention's; with one token per region (G = N) it is exactly that.

Fast-iTPN learns its gathering tokens in training; on an already-trained model the pooled keys and
values are what the block's own projections give for the region's mean input (they are linear).
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["gather_regions", "region_index"]


def region_index(pos: torch.Tensor, regions: int, map_size: Tuple[int, int]) -> torch.Tensor:
    """The region holding each position.

    Args:
        pos: (..., 2) (row, column) in [0, H) x [0, W), possibly fractional.
        regions: regions per side; region rows split the H rows as evenly as whole rows allow
            (row ``y`` is in region row ``floor(y * regions / H)``), and likewise for columns.
        map_size: (H, W).

    Returns:
        (...) long, ``region_row * regions + region_column``.
    """
    cells = []
    for axis, side in enumerate(map_size):
        cell = torch.floor(pos[..., axis].float() * regions / side).long()
        cells.append(cell.clamp(0, regions - 1))
    return cells[0] * regions + cells[1]


def gather_regions(
    values: torch.Tensor,
    pos: torch.Tensor,
    size: torch.Tensor,
    include: torch.Tensor,
    regions: int,
    map_size: Tuple[int, int],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pool tokens into the gathering tokens of their regions.

    Args:
        values: (N, M, D) what to pool (keys and values side by side).
        pos: (N, M, 2) token positions on the map.
        size: (N, M) grid positions each token stands for.
        include: (N, M) bool, the tokens to pool (others are ignored).
        regions, map_size: as :func:`region_index`.

    Returns:
        pooled: (N, G, D) size-weighted means, G = regions ** 2 (zeros for an empty region);
        centres: (N, G, 2) size-weighted mean positions (zeros for an empty region);
        weight: (N, G) summed sizes, 0 for a region without tokens.
    """
    num, _, channels = values.shape
    count = regions * regions
    index = region_index(pos, regions, map_size)
    weight_in = torch.where(include, size.to(values.dtype), torch.zeros_like(size, dtype=values.dtype))
    # Positions and sizes are pooled with the values, in one scatter.
    stacked = torch.cat([values, pos.to(values.dtype), torch.ones_like(weight_in)[..., None]], -1)
    sums = values.new_zeros(num, count, channels + 3)
    sums.scatter_add_(1, index[..., None].expand(-1, -1, channels + 3), stacked * weight_in[..., None])
    weight = sums[..., -1]
    means = sums[..., :-1] / weight.clamp_min(torch.finfo(values.dtype).tiny)[..., None]
    return means[..., :channels], means[..., channels:], weight
