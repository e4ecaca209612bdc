"""ViTDet's plain ViT backbone with token reduction.

Subclasses detectron2's :class:`~detectron2.modeling.ViT`: the parameters are detectron2's own,
so official checkpoints load unchanged, and with ``expedite.enabled=False`` the forward is
detectron2's. With it on, the blocks from ``expedite.location`` on run on reduced tokens, by the
method ``expedite.method`` names:

- ``expedit``: each 14x14 attention window is clustered to ``grid`` x ``grid`` centres (padding
  masked), and the windows of centres form a smaller map; later windowed blocks attend within
  ``grid`` x ``grid`` windows of that map, global blocks over all of it; detectron2's
  ``get_rel_pos`` resizes the decomposed relative position tables from the checkpoint's sizes to
  the new ones; after the last block each window is rebuilt at full resolution;
- ``ailurus``, ``tome`` and ``itpn``: the blocks run on an irregular token set kept window by
  window (:mod:`expedite.tokens`), the decomposed relative positions evaluated at the tokens' own
  (fractional) offsets; after the last block every position gets its token's feature back (or,
  for a token that migrated, its feature from before migration).

With ``expedite.itpn.gather`` (or ``expedite.expedit.gather``) set, the global blocks from
``location`` on attend to gathering tokens (region summaries of the map they attend over) instead
of every token.

SimpleFeaturePyramid gets the full map, as without reduction. The settings are read at each
forward, so reduction can be switched on, off, to another method or re-tuned on a built model.
With ``expedite.expedit.implementation="official"`` the padding of partial windows is clustered
too and the later blocks run on the uncropped reduced map (e.g. 35x35 for a 64x64 map with 14x14
windows clustered to 7x7), as the official SAM code does.
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from detectron2.modeling import ViT
from detectron2.modeling.backbone.utils import get_abs_pos, window_partition, window_unpartition
from detectron2.modeling.backbone.vit import Block

from expedite import ExpediteConfig, ExpediteHost, HostLayout, ReducedMap, TokenBlock, TokenSet
from expedite.positions import decomposed_position_features

__all__ = ["ExpeditedViT", "run_block"]

_VIT_DEFAULTS = {
    name: inspect.signature(ViT.__init__).parameters[name].default
    for name in ("depth", "window_size", "window_block_indexes", "residual_block_indexes")
}


def run_block(
    block: Block, x: torch.Tensor, window_size: int, attention: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
) -> torch.Tensor:
    """Run a detectron2 ViT block with ``window_size`` in place of its own (0: global attention),
    and, for global attention, optionally ``attention`` in place of ``block.attn`` (gathering).

    The block's parameters and sub-modules are used as they are; only the window partition
    changes. x: (B, H, W, C) -> (B, H, W, C).
    """
    shortcut = x
    x = block.norm1(x)
    if window_size > 0:
        height, width = x.shape[1:3]
        x, pad_hw = window_partition(x, window_size)
        x = window_unpartition(block.attn(x), window_size, pad_hw, (height, width))
    else:
        x = (attention or block.attn)(x)
    x = shortcut + block.drop_path(x)
    x = x + block.drop_path(block.mlp(block.norm2(x)))
    if block.use_residual_block:
        x = block.residual(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return x


class ExpeditedViT(ExpediteHost, ViT):
    """detectron2's ViT plus an ``expedite`` setting (see :class:`expedite.ExpediteConfig`).

    Takes every argument of :class:`detectron2.modeling.ViT`, plus:

    Args:
        expedite: token reduction settings; ``None`` or ``enabled=False`` is the plain ViT.
            They are read at every forward: ``model.expedite.enabled = True`` (or any other
            field, or a whole new config) on a built model takes effect at the next call. The
            settings are checked against this ViT when it is built with reduction on and at
            every forward with it on.
    """

    def __init__(self, *, expedite: Optional[ExpediteConfig] = None, **vit_kwargs):
        super().__init__(**vit_kwargs)
        self.patch_size = self.patch_embed.proj.kernel_size[0]
        self.window_size = vit_kwargs.get("window_size", 0)
        # The layers exist with reduction off too: no parameters, so the state_dict is the same.
        self._init_expedite(expedite, self.window_size)
        self.layout = HostLayout(
            name="ViT", num_blocks=len(self.blocks), window=self.window_size,
            conv_blocks=tuple(i for i, block in enumerate(self.blocks) if block.use_residual_block),
            global_blocks=tuple(i for i, block in enumerate(self.blocks) if block.window_size == 0),
        )
        self.check_expedite()

    @staticmethod
    def host_layout(
        *,
        depth: int = _VIT_DEFAULTS["depth"],
        window_size: int = _VIT_DEFAULTS["window_size"],
        window_block_indexes: Sequence[int] = _VIT_DEFAULTS["window_block_indexes"],
        residual_block_indexes: Sequence[int] = _VIT_DEFAULTS["residual_block_indexes"],
        **_other_vit_arguments,
    ) -> HostLayout:
        """The layout of a ViT built with these arguments, for the settings check (the config
        loader calls it with the config's arguments, before building)."""
        windowed = {int(i) for i in window_block_indexes} if window_size > 0 else set()
        return HostLayout(
            name="ViT", num_blocks=depth, window=window_size,
            conv_blocks=tuple(int(i) for i in residual_block_indexes),
            global_blocks=tuple(i for i in range(depth) if i not in windowed),
        )

    def check_expedite(self) -> None:
        """Raise a one-line ValueError if the current settings cannot run on this ViT."""
        self.expedite.check_host(self.layout)

    def _token_block(self, block: Block, map_size: Tuple[int, int]) -> TokenBlock:
        """Where a detectron2 block's parts and relative position tables are."""
        attn = block.attn
        bias = None
        if attn.use_rel_pos:
            size = (block.window_size,) * 2 if block.window_size > 0 else map_size
            bias = partial(decomposed_position_features, table_h=attn.rel_pos_h, table_w=attn.rel_pos_w, size=size)
        return TokenBlock(
            norm1=block.norm1, qkv=attn.qkv, proj=attn.proj, norm2=block.norm2, mlp=block.mlp,
            num_heads=attn.num_heads, scale=attn.scale, window=block.window_size, position_features=bias,
        )

    def _map_block(self, block: Block, x: torch.Tensor, window: int) -> torch.Tensor:
        """A block on a regular map (the full one, or Expedit's reduced one) with ``window``;
        a global block gathers when the method's ``gather`` is set."""
        if window > 0 or self.expedite.gather == 0:
            return run_block(block, x, window)
        token_block = self._token_block(block, tuple(int(d) for d in x.shape[1:3]))
        return run_block(block, x, 0, attention=partial(self.token_reduction.gathered_attention, token_block))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        if height < self.patch_size or width < self.patch_size:
            raise ValueError(
                f"input of {height}x{width} pixels is smaller than one {self.patch_size}x"
                f"{self.patch_size} ViT patch"
            )
        if not self.expedite.enabled:
            return super().forward(x)
        self.check_expedite()
        location = self.expedite.location

        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, x.shape[1:3])
        for block in self.blocks[:location]:
            x = block(x)
        map_size = tuple(int(d) for d in x.shape[1:3])
        state = self.token_reduction.reduce(x, self._token_block(self.blocks[location], map_size))
        for block in self.blocks[location:]:
            if isinstance(state, TokenSet):
                state = self.token_reduction.run_block(self._token_block(block, map_size), state)
            elif isinstance(state, ReducedMap):
                state.x = self._map_block(block, state.x, state.clusters.grid[0] if block.window_size > 0 else 0)
            else:
                state = self._map_block(block, state, block.window_size)
        x = self.token_reduction.restore(state)
        return {self._out_features[0]: x.permute(0, 3, 1, 2)}
