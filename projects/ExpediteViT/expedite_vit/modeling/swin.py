"""Mask2Former's Swin Transformer backbone with token reduction per Swin window.

Parameter and buffer names and shapes are those of the official Mask2Former checkpoints
(``backbone.patch_embed.*``, ``backbone.layers.{i}.blocks.{j}.*``,
``backbone.layers.{i}.downsample.*``, ``backbone.norm{i}.*``), so they load unchanged, and with
``expedite`` off the forward is Mask2Former's (and detectron2's, whose Swin computes the same
thing). With it on, in the stage that holds block ``expedite.location`` (counted over all stages)
the blocks before it run as usual, the later blocks of that stage run on reduced tokens, and the
full map is restored at the end of the stage, so patch merging, the later stages and the
``res2``..``res5`` outputs see the same shapes as without reduction. With ``expedite.method``
``ailurus``, ``tome`` or ``itpn`` the later blocks run on an irregular token set kept per Swin
window (:mod:`expedite.tokens`: shifted blocks regroup the tokens by shifted window, the bias table
is interpolated at the tokens' offsets; tokens that migrated (``itpn``) return unchanged at the
end of the stage). Swin has no global attention, so token gathering does not apply. With
``expedit`` (the default):

- each ``window_size`` x ``window_size`` Swin window is clustered to ``grid`` x ``grid`` centres
  (padding masked), and the windows of centres form a smaller map;
- the later blocks of that stage attend within ``grid`` x ``grid`` windows of that map, shifted by
  ``grid // 2`` on the shifted blocks, with the shifted-window mask built for that window and
  shift, and relative position bias tables resized from the checkpoint's on the fly;
- at the end of the stage every window is rebuilt at full resolution.

The settings are read at each forward (the stage and block of ``location`` are found then), so
reduction can be switched on, off, to another method or re-tuned on a built model. With
``expedite.expedit.implementation="official"`` the official Mask2Former fork is reproduced: padding
clustered and the reduced map not cropped (a 40x40 stage with 12x12 windows to 8x8 gives 32x32),
bias tables resized bilinearly, and the shifted-window mask built for the checkpoint's shift
(``window_size // 2``) while the reduced blocks roll by ``grid // 2``.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling import Backbone, ShapeSpec
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from expedite import ExpediteConfig, ExpediteHost, HostLayout, ReducedMap, TokenBlock, TokenReduction
from expedite.positions import table_position_bias

__all__ = [
    "D2SwinTransformer",
    "PatchEmbed",
    "PatchMerging",
    "SwinStage",
    "SwinTransformerBlock",
    "WindowAttention",
    "relative_position_index",
    "resize_relative_position_bias_table",
    "shifted_window_attention_mask",
]

# Swin-T's layout; the constructor and the settings check before building share it.
_DEFAULT_DEPTHS = (2, 2, 6, 2)
_DEFAULT_WINDOW_SIZE = 7

# Added to the attention logits of token pairs from different regions of a shifted window. Swin
# uses a finite value rather than -inf; kept so that outputs match the checkpoints' training code.
_MASKED_LOGIT = -100.0


def relative_position_index(window: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """For every pair of tokens in a ``window`` x ``window`` window, the row of the relative
    position bias table ((2 * window - 1) ** 2 rows) that holds their offset.

    Returns:
        (window ** 2, window ** 2) long: entry (i, j) = (dy + window - 1) * (2 * window - 1)
        + (dx + window - 1), where (dy, dx) is the position of token i minus that of token j.
    """
    rows = torch.arange(window, device=device).repeat_interleave(window)
    cols = torch.arange(window, device=device).repeat(window)
    d_row = rows[:, None] - rows[None, :] + window - 1
    d_col = cols[:, None] - cols[None, :] + window - 1
    return d_row * (2 * window - 1) + d_col


BIAS_RESIZE_MODES = ("bicubic", "bilinear")


def resize_relative_position_bias_table(
    table: torch.Tensor, window: int, mode: str = "bicubic"
) -> torch.Tensor:
    """Resize a relative position bias table to another window size.

    The table is a (2w-1) x (2w-1) grid of offsets per head; it is resized as an image (centre
    offset onto centre offset, ``align_corners=False``), so an offset of d tokens on a map
    clustered w -> s keeps about the bias of d * w / s tokens at full resolution.

    Args:
        table: ((2w-1) ** 2, heads).
        window: the new window size s.
        mode: "bicubic" (ours: smoother) or "bilinear" (the official Expedit code's).

    Returns:
        ((2s-1) ** 2, heads), a new tensor (the parameter is left untouched).
    """
    num_rows, heads = (int(n) for n in table.shape)  # int(): sizes are tensors when traced
    side = math.isqrt(num_rows)
    if side * side != num_rows:
        raise ValueError(f"relative position bias table has {num_rows} rows, not a square grid")
    grid = table.t().reshape(1, heads, side, side)
    new_side = 2 * window - 1
    if mode not in BIAS_RESIZE_MODES:
        raise ValueError(f"bias table resize mode must be one of {BIAS_RESIZE_MODES}, got {mode!r}")
    grid = F.interpolate(grid, size=(new_side, new_side), mode=mode, align_corners=False)
    return grid.reshape(heads, new_side * new_side).t()


def shifted_window_attention_mask(
    height: int, width: int, window: int, shift: int, device: Optional[torch.device] = None
) -> torch.Tensor:
    """Attention mask of shifted windows on a padded ``height`` x ``width`` map.

    After the map is rolled up and left by ``shift``, the last window row (column) holds tokens
    from two places: those that were already there, and the first ``shift`` rows (columns) of
    the map that wrapped around. Tokens may only attend to tokens of their own region.

    Args:
        height, width: size of the padded map, multiples of ``window``.
        window: the window size the blocks use on this map.
        shift: the roll those blocks apply; it must be the same as theirs for a correct mask
            (the official Expedit code passes the checkpoint's shift on a clustered map, which
            may exceed ``window``: the last ``shift`` rows then form one region).

    Returns:
        (num_windows, window ** 2, window ** 2) float: 0 where attention is allowed,
        -100 where it crosses a region boundary. Windows are in row-major order.
    """
    if height % window or width % window:
        raise ValueError(f"map {height}x{width} is not made of whole {window}x{window} windows")

    def regions(length: int) -> torch.Tensor:
        # On the rolled map: 0 = untouched windows, 1 = last window before the seam, 2 = wrapped.
        label = torch.zeros(length, dtype=torch.long, device=device)
        label[max(length - window, 0) :] = 1
        label[max(length - shift, 0) :] = 2
        return label

    label = regions(height)[:, None] * 3 + regions(width)[None, :]
    label = label.reshape(height // window, window, width // window, window).transpose(1, 2)
    label = label.reshape(-1, window * window)
    crosses = label[:, :, None] != label[:, None, :]
    mask = torch.zeros(crosses.shape, device=device)
    return mask.masked_fill(crosses, _MASKED_LOGIT)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C), H and W multiples of ``window`` -> (B * num_windows, window ** 2, C)."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // window, window, width // window, window, channels)
    return x.transpose(2, 3).reshape(-1, window * window, channels)


def window_merge(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * num_windows, window ** 2, C) -> (B, H, W, C)."""
    channels = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, channels)
    return x.transpose(2, 3).reshape(-1, height, width, channels)


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows, with a relative position bias.

    The bias table is learnt for ``window_size``; other window sizes (the windows of a clustered
    map) use a resized copy of it.
    """

    def __init__(self, *, dim: int, num_heads: int, window_size: int):
        """
        Args:
            dim: channels.
            num_heads: attention heads; must divide ``dim``.
            window_size: the window size the checkpoint was trained with.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin attention: {num_heads} heads do not divide {dim} channels")
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        # Persistent: the official checkpoints hold it.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, window_size={self.window_size}"

    def relative_position_bias(self, window: int, resize: str = "bicubic") -> torch.Tensor:
        """(heads, window ** 2, window ** 2) bias for windows of size ``window``; ``resize`` is
        the interpolation of the table when ``window`` is not the checkpoint's."""
        if window == self.window_size:
            table, index = self.relative_position_bias_table, self.relative_position_index
        else:
            table = resize_relative_position_bias_table(
                self.relative_position_bias_table, window, resize
            )
            index = relative_position_index(window, device=table.device)
        tokens = window * window
        return table[index.reshape(-1)].reshape(tokens, tokens, -1).permute(2, 0, 1)

    def forward(
        self,
        x: torch.Tensor,
        window: int,
        mask: Optional[torch.Tensor] = None,
        bias_resize: str = "bicubic",
    ) -> torch.Tensor:
        """
        Args:
            x: (B * num_windows, window ** 2, C) tokens, window by window.
            window: side of those windows.
            mask: (num_windows, window ** 2, window ** 2) additive mask, or None.
            bias_resize: interpolation of the bias table for a window other than the
                checkpoint's (see :func:`resize_relative_position_bias_table`).

        Returns:
            (B * num_windows, window ** 2, C).
        """
        num, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(num, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B * num_windows, heads, tokens, head_dim)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.relative_position_bias(window, bias_resize).unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.reshape(-1, num_windows, self.num_heads, tokens, tokens)
            attn = (attn + mask[None, :, None]).reshape(num, self.num_heads, tokens, tokens)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(num, tokens, channels)
        return self.proj(x)


class SwinTransformerBlock(nn.Module):
    """Pre-norm transformer block with (shifted) window attention.

    The window and shift are arguments of ``forward``, not settings: the stage passes the
    checkpoint's window (or the cluster grid, on a clustered map) and decides which blocks shift.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ):
        """
        Args:
            dim: channels.
            num_heads: attention heads.
            window_size: window size of the checkpoint (sizes the relative position bias table).
            mlp_ratio: hidden width of the MLP over ``dim``.
            drop_path: stochastic depth rate (training only).
        """
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim=dim, num_heads=num_heads, window_size=window_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio))

    def forward(
        self,
        x: torch.Tensor,
        window: int,
        shift: int,
        mask: Optional[torch.Tensor],
        bias_resize: str = "bicubic",
    ) -> torch.Tensor:
        """
        Args:
            x: (B, H, W, C) token map of any size.
            window: window side on this map.
            shift: cyclic shift of the windows, 0 for regular windows.
            mask: from :func:`shifted_window_attention_mask` for this map (padded to whole
                windows), ``window`` and ``shift``; ignored when ``shift`` is 0.
            bias_resize: see :meth:`WindowAttention.forward`.

        Returns:
            (B, H, W, C).
        """
        _, height, width, _ = x.shape
        shortcut = x
        x = self.norm1(x)
        # Padding comes after norm1 and is not masked: the padded zeros act as keys, as in the
        # checkpoints' training code.
        pad_h, pad_w = -height % window, -width % window
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        padded_h, padded_w = height + pad_h, width + pad_w
        windows = self.attn(
            window_partition(x, window), window, mask if shift else None, bias_resize
        )
        x = window_merge(windows, window, padded_h, padded_w)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = shortcut + self.drop_path(x[:, :height, :width])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halves the resolution: each 2x2 group of tokens is concatenated, normalised and projected
    from 4C to 2C channels. Odd sizes are padded with zeros at the bottom and right."""

    def __init__(self, *, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H / 2), ceil(W / 2), 2C)."""
        batch, height, width, channels = x.shape
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        half_h, half_w = x.shape[1] // 2, x.shape[2] // 2
        # The checkpoints' 4C channels are ordered (row 0, col 0), (row 1, col 0), (row 0, col 1),
        # (row 1, col 1) within each 2x2 group, i.e. column parity outer, row parity inner.
        x = x.reshape(batch, half_h, 2, half_w, 2, channels).permute(0, 1, 3, 4, 2, 5)
        return self.reduction(self.norm(x.reshape(batch, half_h, half_w, 4 * channels)))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches -> tokens, then LayerNorm. Images whose sides are
    not multiples of the patch size are padded with zeros at the bottom and right."""

    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, ceil(H / patch), ceil(W / patch), embed_dim)."""
        height, width = x.shape[-2:]
        x = F.pad(x, (0, -width % self.patch_size, 0, -height % self.patch_size))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinStage(nn.Module):
    """``depth`` Swin blocks, alternately with regular and shifted windows, then (except in the
    last stage) patch merging.

    When called with ``reduce_from``, this stage holds the clustering location: blocks from
    ``reduce_from`` on run on the map clustered per window by ``clustering``, with its grid as
    their window and ``grid // 2`` as their shift, and the map is rebuilt at full resolution by
    ``reconstruction`` before the stage's output and patch merging.
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        drop_path: Sequence[float] = (),
        downsample: bool = True,
    ):
        """
        Args:
            dim, num_heads, window_size, mlp_ratio: as in :class:`SwinTransformerBlock`.
            depth: number of blocks.
            drop_path: stochastic depth rate of each block (empty: none).
            downsample: end with :class:`PatchMerging`.
        """
        super().__init__()
        drop_path = list(drop_path) or [0.0] * depth
        if len(drop_path) != depth:
            raise ValueError(f"Swin stage: {len(drop_path)} drop_path rates for {depth} blocks")
        self.window_size = window_size
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim=dim,
                num_heads=num_heads,
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                drop_path=rate,
            )
            for rate in drop_path
        )
        self.downsample = PatchMerging(dim=dim) if downsample else None

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}"

    def _run_blocks(
        self,
        x: torch.Tensor,
        start: int,
        stop: int,
        window: int,
        mask_shift: Optional[int] = None,
        bias_resize: str = "bicubic",
    ) -> torch.Tensor:
        """Blocks ``start``..``stop - 1`` on map x (B, H, W, C) with windows of side ``window``.
        Odd-numbered blocks shift by ``window // 2``: the shift, and so the mask, follow the
        window of the map they run on. ``mask_shift`` builds the mask for another shift instead
        (the official code's old shift on a clustered map)."""
        shift = window // 2
        mask = None
        if shift and any(i % 2 for i in range(start, stop)):
            padded_h, padded_w = (-(-size // window) * window for size in x.shape[1:3])
            mask = shifted_window_attention_mask(
                padded_h, padded_w, window, shift if mask_shift is None else mask_shift, x.device
            )
        for i in range(start, stop):
            x = self.blocks[i](x, window, shift if i % 2 else 0, mask, bias_resize)
        return x

    def _token_block(self, index: int) -> TokenBlock:
        """Where block ``index``'s parts and bias table are, for a token set."""
        block = self.blocks[index]
        attn = block.attn
        return TokenBlock(
            norm1=block.norm1, qkv=attn.qkv, proj=attn.proj, norm2=block.norm2, mlp=block.mlp,
            num_heads=attn.num_heads, scale=attn.scale, window=self.window_size,
            shift=self.window_size // 2 if index % 2 else 0,
            position_bias=lambda q, dy, dx: table_position_bias(
                dy, dx, table=attn.relative_position_bias_table, window=self.window_size
            ),
            region_logit=_MASKED_LOGIT,
        )

    def forward(
        self,
        x: torch.Tensor,
        reduce_from: Optional[int] = None,
        reduction: Optional[TokenReduction] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x: (B, H, W, C).
            reduce_from: index, within this stage, of the first block to run on reduced tokens;
                None runs every block at full resolution.
            reduction: the host's token reduction, needed with ``reduce_from``.

        Returns:
            out: (B, H, W, C), the stage's output before patch merging.
            merged: (B, ceil(H / 2), ceil(W / 2), 2C) input of the next stage, None in the last.
        """
        depth = len(self.blocks)
        if reduce_from is None:
            x = self._run_blocks(x, 0, depth, self.window_size)
        else:
            if not 0 <= reduce_from < depth:
                raise ValueError(
                    f"Swin stage: reduce_from={reduce_from} is not one of its {depth} blocks"
                )
            x = self._run_blocks(x, 0, reduce_from, self.window_size)
            state = reduction.reduce(x, self._token_block(reduce_from))
            if isinstance(state, torch.Tensor):  # the method keeps the full map
                state = self._run_blocks(state, reduce_from, depth, self.window_size)
            elif isinstance(state, ReducedMap):
                official = reduction.config.expedit.official
                state.x = self._run_blocks(
                    state.x,
                    reduce_from,
                    depth,
                    state.clusters.grid[0],
                    # The official code keeps the checkpoint's shift for the mask (a known defect).
                    mask_shift=self.window_size // 2 if official else None,
                    bias_resize="bilinear" if official else "bicubic",
                )
            else:
                for index in range(reduce_from, depth):
                    state = reduction.run_block(self._token_block(index), state)
            x = reduction.restore(state)
        merged = self.downsample(x) if self.downsample is not None else None
        return x, merged


class D2SwinTransformer(ExpediteHost, Backbone):
    """Swin Transformer as a detectron2 backbone, as Mask2Former builds it, optionally with
    Expedit token reduction.

    Outputs ``res2``..``res5`` (strides 4..32, channels ``embed_dim * 2 ** i``), each normalised
    by its own LayerNorm ``norm{i}``, as (B, C, H, W) tensors. Inputs of any size work (padded
    internally); detectron2 pads batches to multiples of 32.
    """

    def __init__(
        self,
        *,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = _DEFAULT_DEPTHS,
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = _DEFAULT_WINDOW_SIZE,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.3,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        expedite: Optional[ExpediteConfig] = None,
    ):
        """
        Args:
            patch_size: side of the patches of the stem.
            in_chans: image channels.
            embed_dim: channels of the first stage; each stage doubles them.
            depths: blocks per stage.
            num_heads: attention heads per stage.
            window_size: Swin window side (12 for the 384-pretrained Mask2Former checkpoints).
            mlp_ratio: MLP hidden width over channels.
            drop_path_rate: stochastic depth rate of the last block, rising linearly from 0
                (training only).
            out_features: which of ``res2``..``res5`` to return.
            expedite: token reduction settings; None or ``enabled=False`` gives the plain Swin.
                ``expedite.location`` counts blocks over all stages and ``expedite.expedit.grid`` must be
                square and at most ``window_size``. Every setting is read at each call, so
                ``model.expedite.enabled = True`` (or any field, or a new config) on a built
                model takes effect at the next one; the settings are checked against this Swin
                when it is built with reduction on and at every call with it on.
        """
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"Swin: {len(depths)} stage depths but {len(num_heads)} head counts")
        stage_names = [f"res{i + 2}" for i in range(len(depths))]
        unknown = [name for name in out_features if name not in stage_names]
        if unknown or not out_features:
            raise ValueError(
                f"Swin out_features must be a non-empty subset of {stage_names}, "
                f"got {list(out_features)}"
            )
        self.depths = tuple(int(d) for d in depths)
        self.window_size = window_size
        # The layers exist with reduction off too: no parameters, so the state_dict is the same.
        self._init_expedite(expedite, window_size)
        self.reduction_point()  # checks the settings now when reduction is on

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.num_features = [embed_dim * 2**i for i in range(len(depths))]
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    dim=self.num_features[i],
                    depth=depth,
                    num_heads=heads,
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    drop_path=rates[start : start + depth],
                    downsample=i < len(depths) - 1,
                )
            )
        # Every stage has its output norm, requested or not: the checkpoints hold all of them.
        for i, channels in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(channels))

        self._out_features = list(out_features)
        self._out_feature_channels = {n: c for n, c in zip(stage_names, self.num_features)}
        self._out_feature_strides = {n: patch_size * 2**i for i, n in enumerate(stage_names)}

    @staticmethod
    def host_layout(
        *,
        depths: Sequence[int] = _DEFAULT_DEPTHS,
        window_size: int = _DEFAULT_WINDOW_SIZE,
        **_other_swin_arguments,
    ) -> HostLayout:
        """The layout of a Swin built with these arguments, for the settings check (the config
        loader calls it with the config's arguments, before building)."""
        depths = [int(d) for d in depths]
        starts = [sum(depths[:i]) for i in range(len(depths))]
        stage_ranges = ", ".join(f"{s}..{s + d - 1}" for s, d in zip(starts, depths))
        return HostLayout(
            name="Swin",
            num_blocks=sum(depths),
            window=window_size,
            description=f"depths {depths} hold blocks {stage_ranges} (counted over all stages)",
        )

    def reduction_point(self) -> Optional[Tuple[int, int]]:
        """(stage, block within that stage) before which the tokens are reduced with the current
        settings, or None when reduction is off; raises a one-line ValueError when they do not
        fit this Swin."""
        settings = self.expedite
        if not settings.enabled:
            return None
        settings.check_host(self.host_layout(depths=self.depths, window_size=self.window_size))
        starts = [sum(self.depths[:i]) for i in range(len(self.depths))]
        stage = max(i for i, start in enumerate(starts) if start <= settings.location)
        return stage, settings.location - starts[stage]

    @property
    def size_divisibility(self) -> int:
        return 32

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (B, in_chans, H, W) images.

        Returns:
            {name: (B, C, H_i, W_i)} for each name in ``out_features``.
        """
        if x.dim() != 4:
            raise ValueError(f"Swin takes images of shape (B, C, H, W), got {tuple(x.shape)}")
        last_stage = max(int(name[3:]) - 2 for name in self._out_features)
        point = self.reduction_point()
        outputs: Dict[str, torch.Tensor] = {}
        x = self.patch_embed(x)
        for i, stage in enumerate(self.layers[: last_stage + 1]):
            if point is not None and point[0] == i:
                out, x = stage(x, point[1], self.token_reduction)
            else:
                out, x = stage(x)
            name = f"res{i + 2}"
            if name in self._out_features:
                outputs[name] = getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous()
        return outputs
