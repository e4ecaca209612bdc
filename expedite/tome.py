"""Token merging (ToMe, Bolya et al., ICLR 2023): the functional core.

Pure PyTorch, no detectron2, inference only. ToMe shrinks a ViT block by block: after a block's
attention it splits the tokens into two alternating sets A and B, links every A token to its most
similar B token (cosine similarity of the block's keys, averaged over heads), and merges the ``r``
best-linked A tokens into their partners ("bipartite soft matching"). A merged token is the
size-weighted mean of what it absorbed and carries its size (how many input tokens it stands for).

What we take from it:

* bipartite soft matching on head-averaged keys (:func:`bipartite_soft_matching`);
* size-weighted averaging of features and summed sizes (:func:`expedite.tokens.merge_weighted`);
* proportional attention: the host adds ``log(size)`` to the attention logits of every key, so a
  merged token weighs as much as the tokens it replaced;
* unmerge (tomesd): the host keeps a token-to-slot map and gathers the dense map back from it.

Merging is per *group*: a group is whatever the host says (one attention window, or the whole
map), and tokens only ever merge with tokens of their own group. Groups keep a fixed number of
slots ``T``; a merged-away token leaves an empty slot behind (``size == 0``, not mergeable), so
all shapes stay static and the host can keep its window layout.

Both functions compute in float32 (half inputs are cast) and are vectorised over groups and slots.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["bipartite_soft_matching"]


def _compact(
    member: torch.Tensor, order: torch.Tensor, width: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Slots of the members of one side, in slot order, left-aligned.

    Args:
        member: (G, T) bool, slots on this side.
        order: (G, T) long, position of each member among the members of its side.
        width: columns of the result (the most members a group can have).

    Returns:
        idx: (G, width) long, slot of the j-th member, ``T`` (a dummy slot) past the last one.
        valid: (G, width) bool.
    """
    G, T = member.shape
    # Non-members go to an extra column that is dropped afterwards; members have distinct
    # targets, so the kept columns are written exactly once (deterministic).
    target = torch.where(member, order, torch.full_like(order, width))
    slots = torch.arange(T, device=member.device).expand(G, T)
    idx = torch.full((G, width + 1), T, dtype=torch.long, device=member.device)
    idx.scatter_(1, target, slots)
    idx = idx[:, :width]
    return idx, idx < T


def bipartite_soft_matching(metric: torch.Tensor, mergeable: torch.Tensor, r: int) -> torch.Tensor:
    """Choose, in every group, up to ``r`` tokens to merge and the token each merges into.

    Sets: the mergeable slots of a group are split alternately *by their order among the mergeable
    slots of that group*: the 1st, 3rd, 5th... mergeable slot go to set A, the 2nd, 4th... to set
    B. Non-mergeable slots (padding, slots emptied by earlier merges) are skipped and do not shift
    the alternation, so the split of a group does not depend on where its holes are.

    Matching: cosine similarity between every A and every B token of the group; each A token's
    partner is its most similar B token (ties: lowest slot); the ``r`` A tokens with the highest
    best-similarity (ties: lowest slot) merge into their partners. Several A tokens may share a
    partner; B tokens are never merged away, so there are no chains.

    ``r`` is clamped per group to the number of A tokens that have a B token to merge into: a
    group with 0 or 1 mergeable slots merges nothing, and ``r <= 0`` merges nothing anywhere.

    Args:
        metric: (G, T, C) matching features (the host passes the block's keys averaged over
            heads). Any float dtype; compared in float32.
        mergeable: (G, T) bool. False slots never merge and are never merged into.
        r: tokens to merge per group.

    Returns:
        dest: (G, T) long on ``metric``'s device. ``dest[g, a]`` is the slot of ``a``'s partner
        for every merged A token, ``dest[g, i] == i`` for every other slot.
    """
    if metric.dim() != 3 or mergeable.shape != metric.shape[:2]:
        raise ValueError(
            f"metric must be (G, T, C) and mergeable (G, T); got {tuple(metric.shape)} and "
            f"{tuple(mergeable.shape)}"
        )
    G, T, _ = metric.shape
    device = metric.device
    dest = torch.arange(T, device=device).expand(G, T).clone()
    width_a, width_b = (T + 1) // 2, T // 2
    if r <= 0 or width_b == 0 or G == 0:
        return dest

    mergeable = mergeable.to(device=device, dtype=torch.bool)
    rank = torch.cumsum(mergeable.long(), dim=1) - 1  # order among the group's mergeable slots
    in_a = mergeable & (rank % 2 == 0)
    in_b = mergeable & (rank % 2 == 1)
    a_idx, a_valid = _compact(in_a, rank // 2, width_a)
    b_idx, b_valid = _compact(in_b, rank // 2, width_b)

    unit = F.normalize(metric.float(), dim=-1)  # zero vectors stay zero: similarity 0
    a = unit.gather(1, a_idx.clamp(max=T - 1).unsqueeze(-1).expand(-1, -1, unit.shape[-1]))
    b = unit.gather(1, b_idx.clamp(max=T - 1).unsqueeze(-1).expand(-1, -1, unit.shape[-1]))
    sim = a @ b.transpose(1, 2)  # (G, width_a, width_b)
    neg_inf = torch.tensor(float("-inf"), device=device)
    sim = torch.where(b_valid.unsqueeze(1), sim, neg_inf)

    # Best partner, ties to the lowest slot: B columns are in slot order, so take the first column
    # that reaches the row maximum (explicitly, not relying on argmax's tie rule on any backend).
    best = sim.amax(dim=-1)  # (G, width_a)
    cols = torch.arange(width_b, device=device)
    partner = torch.where(sim == best.unsqueeze(-1), cols, width_b).amin(dim=-1)
    partner = partner.clamp(max=width_b - 1)  # rows without any B: never merged

    # Rank the A tokens by best similarity, ties to the lowest slot (a stable sort keeps slot
    # order among equals); padding rows go last.
    best = torch.where(a_valid, best, neg_inf)
    order = torch.sort(best, dim=-1, descending=True, stable=True).indices
    position = torch.empty_like(order).scatter_(
        1, order, torch.arange(width_a, device=device).expand(G, width_a).contiguous()
    )
    n_a = a_valid.sum(dim=-1)
    r_group = torch.where(b_valid.any(dim=-1), n_a.clamp(max=r), torch.zeros_like(n_a))
    merged = a_valid & (position < r_group.unsqueeze(-1))

    new_dest = torch.where(merged, b_idx.gather(1, partner), a_idx)
    out = torch.cat([dest, dest.new_zeros(G, 1)], dim=1)  # extra column: dummy slot T
    out.scatter_(1, torch.where(a_valid, a_idx, T), new_dest)
    return out[:, :T]
