"""Mask2Former's pixel decoder: a deformable-attention encoder over the coarse backbone levels
plus an FPN-style top-down path to the finer ones.

Module and parameter names follow the official checkpoints (``sem_seg_head.pixel_decoder.*``).
"""

import math
from typing import List, Mapping, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

import fvcore.nn.weight_init as weight_init
from detectron2.layers import Conv2d, ShapeSpec, get_norm

from .ms_deform_attn import MSDeformAttn
from .transformer_decoder import PositionEmbeddingSine

__all__ = [
    "MSDeformAttnEncoderLayer",
    "MSDeformAttnEncoder",
    "MSDeformAttnTransformerEncoderOnly",
    "MSDeformAttnPixelDecoder",
]


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention over all levels, then an FFN."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.0,
        n_levels: int = 3,
        n_heads: int = 8,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)

        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: Sequence[Tuple[int, int]],
    ) -> torch.Tensor:
        """
        Args:
            src, pos: (N, S, C) tokens of all levels and their positional + level embedding.
            reference_points: (N, S, L, 2) normalized (x, y) of each token on every level.
            spatial_shapes: L pairs (H_l, W_l).

        Returns:
            (N, S, C)
        """
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnEncoder(nn.Module):
    """A stack of :class:`MSDeformAttnEncoderLayer` where every token queries around itself."""

    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(
            MSDeformAttnEncoderLayer(**layer_kwargs) for _ in range(num_layers)
        )

    @staticmethod
    def reference_points(
        spatial_shapes: Sequence[Tuple[int, int]], batch_size: int, device: torch.device
    ) -> torch.Tensor:
        """
        Normalized centre (x, y) of every token, repeated for each level: inputs are never
        padded here, so a point has the same normalized position on all levels.

        Returns:
            (batch_size, S, L, 2)
        """
        points = []
        for h, w in spatial_shapes:
            ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
            xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1))
        points = torch.cat(points, 0)
        return points[None, :, None, :].expand(batch_size, -1, len(spatial_shapes), -1)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, spatial_shapes: Sequence[Tuple[int, int]]
    ) -> torch.Tensor:
        """src, pos: (N, S, C) -> (N, S, C)."""
        reference_points = self.reference_points(spatial_shapes, src.shape[0], src.device)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes)
        return src


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Flattens multi-level maps into one token sequence, adds level embeddings, encodes."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        num_feature_levels: int = 3,
        enc_n_points: int = 4,
    ):
        super().__init__()
        self.encoder = MSDeformAttnEncoder(
            num_encoder_layers,
            d_model=d_model,
            d_ffn=dim_feedforward,
            dropout=dropout,
            n_levels=num_feature_levels,
            n_heads=nhead,
            n_points=enc_n_points,
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reset_parameters()

    def reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        # The generic xavier init above would overwrite the deformable attention's own init.
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]
    ) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """
        Args:
            srcs, pos_embeds: per level (N, C, H_l, W_l).

        Returns:
            memory (N, S, C) with levels concatenated in the order given, and their (H_l, W_l).
        """
        spatial_shapes = [tuple(src.shape[-2:]) for src in srcs]
        src_flat = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        pos_flat = torch.cat(
            [
                pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
                for level, pos in enumerate(pos_embeds)
            ],
            1,
        )
        return self.encoder(src_flat, pos_flat, spatial_shapes), spatial_shapes


def _shape_spec(spec) -> ShapeSpec:
    # LazyConfig turns ShapeSpec dataclasses into mappings; accept both, and plain dicts.
    if isinstance(spec, Mapping):
        return ShapeSpec(channels=spec["channels"], stride=spec["stride"])
    return ShapeSpec(channels=spec.channels, stride=spec.stride)


class MSDeformAttnPixelDecoder(nn.Module):
    """
    Pixel decoder of Mask2Former.

    The ``transformer_in_features`` levels (res3-res5 upstream) are projected to ``conv_dim``
    and encoded jointly by a deformable-attention encoder. The remaining finer levels (res2)
    are added FPN-style on top (``adapter_k`` lateral 1x1 conv, ``layer_k`` 3x3 output conv),
    until stride ``common_stride``; the finest map gives the per-pixel mask features.
    """

    def __init__(
        self,
        input_shape: Mapping[str, ShapeSpec],
        *,
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
        transformer_in_features: Sequence[str] = ("res3", "res4", "res5"),
        common_stride: int = 4,
        transformer_enc_layers: int = 6,
        transformer_nheads: int = 8,
        transformer_dim_feedforward: int = 1024,
        transformer_dropout: float = 0.0,
        transformer_n_points: int = 4,
        num_output_levels: int = 3,
    ):
        """
        Args:
            input_shape: backbone output name -> ShapeSpec (channels, stride); every entry is
                used (res2-res5 upstream).
            conv_dim: channels inside the decoder.
            mask_dim: channels of the mask features.
            norm: normalization of the FPN convs (detectron2 ``get_norm`` name).
            transformer_in_features: names encoded by the deformable encoder.
            common_stride: stride of the mask features.
            transformer_*: deformable encoder depth, heads, FFN width, dropout, points.
            num_output_levels: how many of the decoder's maps (coarsest first) are returned
                for the transformer decoder (3 upstream).
        """
        super().__init__()
        shapes = {name: _shape_spec(spec) for name, spec in input_shape.items()}
        missing = [name for name in transformer_in_features if name not in shapes]
        if missing:
            raise ValueError(
                f"transformer_in_features {missing} are not in input_shape {sorted(shapes)}"
            )

        # Finest to coarsest.
        ordered = sorted(shapes.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in ordered]
        self.feature_channels = {name: spec.channels for name, spec in ordered}
        self.transformer_in_features = [
            name for name in self.in_features if name in transformer_in_features
        ]
        transformer_strides = [shapes[name].stride for name in self.transformer_in_features]

        # input_proj[0] is for the coarsest level: the encoder sees levels coarse to fine.
        self.input_proj = nn.ModuleList()
        for name in self.transformer_in_features[::-1]:
            proj = nn.Sequential(
                nn.Conv2d(shapes[name].channels, conv_dim, kernel_size=1),
                nn.GroupNorm(32, conv_dim),
            )
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
            self.input_proj.append(proj)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_feature_levels=len(self.transformer_in_features),
            enc_n_points=transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)

        # One FPN level per factor 2 between the finest encoded stride and common_stride.
        num_fpn_levels = int(round(math.log2(min(transformer_strides) / common_stride)))
        self.fpn_features = self.in_features[:num_fpn_levels]
        if len(self.fpn_features) != num_fpn_levels:
            raise ValueError(
                f"need {num_fpn_levels} levels finer than the encoded ones to reach stride "
                f"{common_stride}, but input_shape has only {self.in_features}"
            )
        use_bias = norm == ""
        for idx, name in enumerate(self.fpn_features):
            lateral = Conv2d(
                shapes[name].channels,
                conv_dim,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
            )
            output = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            # Checkpoint names: adapter_1/layer_1 belong to the finest level.
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)

        total_levels = len(self.transformer_in_features) + num_fpn_levels
        if num_output_levels > total_levels:
            raise ValueError(
                f"num_output_levels={num_output_levels} but the decoder makes {total_levels} levels"
            )
        self.num_output_levels = num_output_levels

    def _check_features(self, features: Mapping[str, torch.Tensor]):
        for name in self.in_features:
            if name not in features:
                raise KeyError(f"pixel decoder needs feature '{name}', got {sorted(features)}")
            x = features[name]
            expected = self.feature_channels[name]
            if x.dim() != 4 or x.shape[1] != expected:
                raise ValueError(
                    f"feature '{name}' must be (N, {expected}, H, W), got {tuple(x.shape)}"
                )

    def forward_features(
        self, features: Mapping[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """
        Args:
            features: backbone outputs, name -> (N, C_name, H, W).

        Returns:
            mask_features: (N, mask_dim, H/common_stride, W/common_stride).
            encoder_output_coarsest: (N, conv_dim, H_c, W_c), the encoded coarsest level.
            multi_scale_features: ``num_output_levels`` maps (N, conv_dim, H_l, W_l), coarse
                to fine.
        """
        self._check_features(features)
        # Deformable attention is computed in float32 even under autocast, as upstream (its
        # sampling locations need the precision).
        with torch.autocast(device_type=features[self.in_features[0]].device.type, enabled=False):
            srcs, pos = [], []
            for idx, name in enumerate(self.transformer_in_features[::-1]):
                x = features[name].float()
                srcs.append(self.input_proj[idx](x))
                pos.append(self.pe_layer(x))
            memory, spatial_shapes = self.transformer(srcs, pos)

            batch_size = memory.shape[0]
            outs = [
                level.transpose(1, 2).reshape(batch_size, -1, h, w)
                for level, (h, w) in zip(
                    memory.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes
                )
            ]
            # Top-down over the finer levels, from the coarsest of them to the finest.
            for idx in reversed(range(len(self.fpn_features))):
                x = features[self.fpn_features[idx]].float()
                lateral = getattr(self, f"adapter_{idx + 1}")(x)
                y = lateral + F.interpolate(
                    outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
                )
                outs.append(getattr(self, f"layer_{idx + 1}")(y))

            return self.mask_features(outs[-1]), outs[0], outs[: self.num_output_levels]
