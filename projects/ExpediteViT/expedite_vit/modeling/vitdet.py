"""ViTDet's plain ViT backbone with Expedit token reduction.

Subclasses detectron2's :class:`~detectron2.modeling.ViT`: the parameters are detectron2's own,
so official checkpoints load unchanged, and with ``expedite.enabled=False`` the forward is
detectron2's. With it on, the blocks from ``expedite.location`` on run on clustered tokens:

- each 14x14 attention window is clustered to ``grid`` x ``grid`` centres (padding masked), and
  the windows of centres form a smaller map;
- later windowed blocks attend within ``grid`` x ``grid`` windows of that map, global blocks over
  all of it; detectron2's ``get_rel_pos`` resizes the decomposed relative position tables from the
  checkpoint's sizes to the new ones;
- after the last block each window is rebuilt at full resolution and SimpleFeaturePyramid gets
  the full map, as without reduction.

The settings are read at each forward, so reduction can be switched on, off or re-tuned on a
built model. With ``expedite.implementation="official"`` the padding of partial windows is
clustered too and the later blocks run on the uncropped reduced map (e.g. 35x35 for a 64x64 map
with 14x14 windows clustered to 7x7), as the official SAM code does.
"""
from __future__ import annotations

import inspect
from typing import Dict, Optional

import torch
from detectron2.modeling import ViT
from detectron2.modeling.backbone.utils import get_abs_pos, window_partition, window_unpartition
from detectron2.modeling.backbone.vit import Block

from expedite import ExpediteConfig, ExpediteHost

__all__ = ["ExpeditedViT", "run_block"]

_VIT_DEFAULTS = {
    name: inspect.signature(ViT.__init__).parameters[name].default for name in ("depth", "window_size")
}


def run_block(block: Block, x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Run a detectron2 ViT block with ``window_size`` in place of its own (0: global attention).

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
        x = block.attn(x)
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
        self.check_expedite()

    @staticmethod
    def check_expedite_settings(
        expedite: ExpediteConfig,
        *,
        depth: int = _VIT_DEFAULTS["depth"],
        window_size: int = _VIT_DEFAULTS["window_size"],
        **_other_vit_arguments,
    ) -> None:
        """Raise a one-line ValueError if ``expedite`` cannot run on a ViT built with these
        arguments (the config loader calls it with the config's arguments, before building)."""
        expedite.check_host(num_blocks=depth, window=window_size, host="ViT")

    def check_expedite(self) -> None:
        """Raise a one-line ValueError if the current settings cannot run on this ViT."""
        self.check_expedite_settings(self.expedite, depth=len(self.blocks), window_size=self.window_size)

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
        reduced_window = self.expedite.grid[0]

        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, x.shape[1:3])
        for index, block in enumerate(self.blocks):
            if index == location:
                x, clusters = self.token_clustering(x)
            if index < location:
                x = block(x)
            else:
                x = run_block(block, x, reduced_window if block.window_size > 0 else 0)
        x = self.token_reconstruction(x, clusters)
        return {self._out_features[0]: x.permute(0, 3, 1, 2)}
