"""Relative position terms of attention, evaluated at fractional offsets.

A merged token sits at the mean of the positions it covers, so the offset between two tokens is
no longer a whole number of grid cells. Both hosts' terms are tables indexed by integer offsets;
here they are interpolated linearly (ViTDet: per axis, as per-token features whose product is the
term, which keeps global attention over thousands of tokens cheap; Swin: bilinearly in its small
windows' table). At whole offsets the weights are exactly 1 and 0, so a token set whose tokens
were never merged gets exactly the host's terms.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["decomposed_position_features", "table_position_bias"]


def _split(index: torch.Tensor, entries: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower and upper table rows around a fractional ``index`` (clamped into the table) and the
    weight of the upper one."""
    index = index.clamp(0, entries - 1)
    lower = index.floor()
    upper = (lower + 1).clamp(max=entries - 1)
    return lower.long(), upper.long(), index - lower


def _resized(table: torch.Tensor, entries: int) -> torch.Tensor:
    """detectron2's ``get_rel_pos`` resize: a table learnt for another map size, linearly."""
    if table.shape[0] == entries:
        return table
    resized = F.interpolate(table.t()[None], size=entries, mode="linear")
    return resized[0].t()


def _row_weights(coordinate: torch.Tensor, rows: int) -> torch.Tensor:
    """(N, L) fractional coordinates -> (N, L, rows) linear-interpolation weights over the
    integer rows (1 at a whole coordinate, split between the two rows around it otherwise)."""
    lower, upper, weight = _split(coordinate.float(), rows)
    out = torch.zeros(*coordinate.shape, rows, device=coordinate.device)
    out.scatter_add_(-1, lower[..., None], (1 - weight)[..., None])
    return out.scatter_add_(-1, upper[..., None], weight[..., None])


def decomposed_position_features(
    q: torch.Tensor,
    pos: torch.Tensor,
    key_pos: Optional[torch.Tensor] = None,
    *,
    table_h: torch.Tensor,
    table_w: torch.Tensor,
    size: Tuple[int, int],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """ViTDet's (MViTv2's) decomposed relative positions, ``q . R_h[dy] + q . R_w[dx]``, as a
    product of per-token features, so that attention over an irregular token set adds them with
    one matmul instead of gathering an L x L table per head.

    For each query and each integer key row r the term ``q . R_h[y_q - r]`` is interpolated at the
    query's (fractional) row; each key spreads over the two integer rows around its own row with
    linear weights. Their product is the term at the tokens' offset: exactly the table's at whole
    positions, linear in the offset when either token sits on a whole row.

    Args:
        q: (N, heads, L, head_dim) queries (unscaled, as detectron2 uses them).
        pos: (N, L, 2) (row, column) of the tokens within the attention's map, in [0, size).
        key_pos: (N, K, 2) positions of the keys when they are not the queries (gathering
            tokens at their regions' centres); None: the keys are the tokens at ``pos``.
        table_h, table_w: (2S - 1, head_dim) learnt tables.
        size: (rows, columns) S of the attention's query map (the window, or the whole map of a
            global block); the tables are resized to ``2S - 1`` entries as detectron2 does.

    Returns:
        q_extra: (N, heads, L, rows + columns) float32, k_extra: (N, K, rows + columns) float32
        (K = L without ``key_pos``); ``q_extra @ k_extra^T`` is the (N, heads, L, K) logit term.
    """
    with torch.autocast(q.device.type, enabled=False):
        return _decomposed_position_features(q, pos, pos if key_pos is None else key_pos, table_h, table_w, size)


def _decomposed_position_features(q, pos, key_pos, table_h, table_w, size):
    query_parts, key_parts = [], []
    for axis, (table, side) in enumerate(((table_h, size[0]), (table_w, size[1]))):
        entries = 2 * side - 1
        scores = q.float() @ _resized(table, entries).float().t()  # (N, heads, L, entries)
        # Entry of offset (query row - key row r) for every key row r, at the query's row.
        index = pos[..., axis, None].float() - torch.arange(side, device=q.device) + side - 1  # (N, L, side)
        lower, upper, weight = _split(index, entries)
        heads = scores.shape[1]
        low = scores.gather(-1, lower[:, None].expand(-1, heads, -1, -1))
        high = scores.gather(-1, upper[:, None].expand(-1, heads, -1, -1))
        query_parts.append(torch.lerp(low, high, weight[:, None].expand_as(low)))
        key_parts.append(_row_weights(key_pos[..., axis], side))
    return torch.cat(query_parts, -1), torch.cat(key_parts, -1)


def table_position_bias(dy: torch.Tensor, dx: torch.Tensor, *, table: torch.Tensor, window: int) -> torch.Tensor:
    """Swin's relative position bias at fractional offsets, bilinear in the (2w-1) x (2w-1) table.

    Args:
        dy, dx: (N, L, L) query-minus-key offsets within a window, possibly fractional.
        table: ((2w - 1) ** 2, heads) learnt for ``window`` w.

    Returns:
        (N, heads, L, L) float32.
    """
    side = 2 * window - 1
    y0, y1, wy = _split(dy.float() + window - 1, side)
    x0, x1, wx = _split(dx.float() + window - 1, side)
    table = table.float()

    def at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return table[rows * side + cols]  # (N, L, L, heads)

    top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * wx[..., None]
    bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * wx[..., None]
    return (top + (bottom - top) * wy[..., None]).permute(0, 3, 1, 2)
