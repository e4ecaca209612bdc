"""Mask2Former's transformer decoder with masked attention, and the sine positional encoding.

Module and parameter names follow the official checkpoints (``sem_seg_head.predictor.*``).
Sequences inside the decoder are laid out (length, batch, channels), the layout of
``nn.MultiheadAttention`` without ``batch_first``, whose parameter names the checkpoints use.
"""

import math
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import Conv2d
import fvcore.nn.weight_init as weight_init

from .legacy_keys import rename_legacy_keys

__all__ = [
    "PositionEmbeddingSine",
    "SelfAttentionLayer",
    "CrossAttentionLayer",
    "FFNLayer",
    "MLP",
    "MultiScaleMaskedTransformerDecoder",
]


class PositionEmbeddingSine(nn.Module):
    """
    DETR's 2D sine/cosine positional encoding over a whole (unpadded) feature map, with
    coordinates normalized to (0, scale].

    Output channels: the first ``num_pos_feats`` encode y, the next ``num_pos_feats`` encode x;
    within each half, channel 2k is sin and 2k+1 is cos of the same frequency.
    """

    def __init__(
        self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi
    ):
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (N, C, H, W); only its shape and device are used.

        Returns:
            (N, 2 * num_pos_feats, H, W) float32, identical for every image in the batch.
        """
        n, _, h, w = x.shape
        eps = 1e-6
        y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)
        x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)
        y_embed = y_embed / (y_embed[-1:] + eps) * self.scale
        x_embed = x_embed / (x_embed[-1:] + eps) * self.scale

        dim = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim = self.temperature ** (
            2 * torch.div(dim, 2, rounding_mode="floor") / self.num_pos_feats
        )

        def encode(coords: torch.Tensor) -> torch.Tensor:
            angles = coords[:, None] / dim  # (length, num_pos_feats)
            return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=-1).flatten(1)

        pos_y = encode(y_embed)[:, None, :].expand(h, w, self.num_pos_feats)
        pos_x = encode(x_embed)[None, :, :].expand(h, w, self.num_pos_feats)
        pos = torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)
        return pos[None].expand(n, -1, -1, -1)


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention among the queries: ``norm(q + attn(q + pos, q + pos, q))``."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        _xavier_init_matrices(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """tgt, query_pos: (Q, N, C) -> (Q, N, C)."""
        q = k = tgt + query_pos
        attended = self.self_attn(q, k, value=tgt, need_weights=False)[0]
        return self.norm(tgt + self.dropout(attended))


class CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention from the queries to image features, with an optional mask."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        _xavier_init_matrices(self)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            tgt, query_pos: (Q, N, C) queries and their positional embedding.
            memory, pos: (HW, N, C) image features and their positional encoding.
            memory_mask: (N * nhead, Q, HW) bool, True where a query may NOT attend.

        Returns:
            (Q, N, C)
        """
        attended = self.multihead_attn(
            query=tgt + query_pos,
            key=memory + pos,
            value=memory,
            attn_mask=memory_mask,
            need_weights=False,
        )[0]
        return self.norm(tgt + self.dropout(attended))


class FFNLayer(nn.Module):
    """Post-norm feed-forward block: ``norm(x + linear2(relu(linear1(x))))``."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init_matrices(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        out = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm(tgt + self.dropout(out))


def _xavier_init_matrices(module: nn.Module):
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (not after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """
    Mask2Former's decoder: learnable queries go through ``dec_layers`` rounds of
    masked cross-attention -> self-attention -> FFN. Round ``i`` attends to feature level
    ``i % num_feature_levels`` (low to high resolution) and may only look where the mask
    predicted after the previous round is foreground (sigmoid >= 0.5).

    Class and mask predictions are made on the initial queries and after every round; the last
    is the output, the others feed the auxiliary (deep supervision) losses.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 9,
        mask_dim: int = 256,
        enforce_input_project: bool = False,
        num_feature_levels: int = 3,
    ):
        """
        Args:
            in_channels: channels of the multi-scale features from the pixel decoder.
            num_classes: number of classes, without the "no object" class.
            hidden_dim: transformer width.
            num_queries: number of object queries.
            nheads: attention heads.
            dim_feedforward: FFN hidden width.
            dec_layers: number of decoder rounds. The official YAML configs set
                ``MODEL.MASK_FORMER.DEC_LAYERS: 10``, which means 9 rounds here (their count
                includes the prediction made on the initial queries).
            mask_dim: channels of the per-pixel mask features.
            enforce_input_project: add a 1x1 conv on the features even when
                ``in_channels == hidden_dim``.
            num_feature_levels: how many feature levels the rounds cycle through (3 upstream).
        """
        super().__init__()
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.num_feature_levels = num_feature_levels
        self.mask_dim = mask_dim

        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)

        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        # Learnable query features and their positional embedding.
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)

        # An empty Sequential is an identity with no parameters, so the checkpoint has no
        # input_proj keys when in_channels == hidden_dim.
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())
        self.in_channels = in_channels

        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Older official checkpoints call the query features "static_query" (upstream renames
        # them on load too): legacy_keys.py.
        def new_name(key):
            old = "static_query."
            return "query_feat." + key[len(old):] if key.startswith(old) else None

        model_keys = self.state_dict(keep_vars=True).keys()
        rename_legacy_keys(state_dict, prefix, new_name, model_keys, type(self).__name__)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: List[torch.Tensor], mask_features: torch.Tensor) -> Dict:
        """
        Args:
            x: ``num_feature_levels`` feature maps (N, in_channels, H_l, W_l), low to high
                resolution.
            mask_features: (N, mask_dim, H_m, W_m) per-pixel embeddings (stride 4 upstream).

        Returns:
            dict with
              "pred_logits": (N, Q, num_classes + 1) class logits,
              "pred_masks": (N, Q, H_m, W_m) mask logits,
              "aux_outputs": list of ``dec_layers`` dicts with the same two keys for the
                  predictions made before the last round (initial queries first).
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(x)}")
        for level, feature in enumerate(x):
            if feature.dim() != 4 or feature.shape[1] != self.in_channels:
                raise ValueError(
                    f"feature level {level} must be (N, {self.in_channels}, H, W), "
                    f"got {tuple(feature.shape)}"
                )
        if mask_features.dim() != 4 or mask_features.shape[1] != self.mask_dim:
            raise ValueError(
                f"mask_features must be (N, {self.mask_dim}, H, W), got {tuple(mask_features.shape)}"
            )

        srcs, pos, sizes = [], [], []
        for level, feature in enumerate(x):
            sizes.append(feature.shape[-2:])
            # (N, C, H, W) -> (HW, N, C)
            pos.append(self.pe_layer(feature).flatten(2).permute(2, 0, 1).to(feature.dtype))
            src = (
                self.input_proj[level](feature).flatten(2)
                + self.level_embed.weight[level][None, :, None]
            )
            srcs.append(src.permute(2, 0, 1))

        batch_size = srcs[0].shape[1]
        query_pos = self.query_embed.weight.unsqueeze(1).expand(-1, batch_size, -1)
        output = self.query_feat.weight.unsqueeze(1).expand(-1, batch_size, -1)

        return self.decode(output, query_pos, srcs, pos, sizes, mask_features)

    def decode(
        self,
        output: torch.Tensor,
        query_pos: torch.Tensor,
        srcs: List[torch.Tensor],
        pos: List[torch.Tensor],
        sizes: List[Tuple[int, int]],
        mask_features: torch.Tensor,
        keep_aux: bool = True,
    ) -> Dict:
        """
        The decoder rounds and the predictions after each.

        Args:
            output, query_pos: (Q, N, C) initial query features and query positions.
            srcs, pos: per feature level, (L_l, N, C) memory tokens and their positions.
            sizes: per feature level, its (h, w) (the attention masks are resized to it).
            mask_features: the per-pixel embeddings :meth:`forward_prediction_heads` takes.
            keep_aux: keep the predictions made before the last round ("aux_outputs"); without,
                only the last one is kept alive.

        Returns:
            dict with "pred_logits", "pred_masks" and "aux_outputs" (see :meth:`forward`).
        """
        predictions_class, predictions_mask = [], []
        outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(
            output, mask_features, sizes[0]
        )
        predictions_class.append(outputs_class)
        predictions_mask.append(outputs_mask)

        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            output = self.transformer_cross_attention_layers[i](
                output, srcs[level], memory_mask=attn_mask, pos=pos[level], query_pos=query_pos
            )
            output = self.transformer_self_attention_layers[i](output, query_pos=query_pos)
            output = self.transformer_ffn_layers[i](output)

            outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(
                output, mask_features, sizes[(i + 1) % self.num_feature_levels]
            )
            if not keep_aux:
                predictions_class.clear()
                predictions_mask.clear()
            predictions_class.append(outputs_class)
            predictions_mask.append(outputs_mask)

        return {
            "pred_logits": predictions_class[-1],
            "pred_masks": predictions_mask[-1],
            "aux_outputs": [
                {"pred_logits": c, "pred_masks": m}
                for c, m in zip(predictions_class[:-1], predictions_mask[:-1])
            ],
        }

    def forward_prediction_heads(
        self, output: torch.Tensor, mask_features: torch.Tensor, attn_mask_size
    ):
        """
        Args:
            output: (Q, N, C) query features.
            mask_features: (N, mask_dim, H_m, W_m).
            attn_mask_size: (h, w) of the feature level the next round attends to.

        Returns:
            class logits (N, Q, K + 1), mask logits (N, Q, H_m, W_m) and the next round's
            attention mask (N * nheads, Q, h * w), bool, True where attention is blocked.
        """
        decoded = self.decoder_norm(output).transpose(0, 1)
        outputs_class = self.class_embed(decoded)
        mask_embed = self.mask_embed(decoded)
        outputs_mask = torch.einsum("nqc,nchw->nqhw", mask_embed, mask_features)

        # The mask is predicted at stride 4 and resized to the attended level.
        attn_mask = F.interpolate(
            outputs_mask, size=attn_mask_size, mode="bilinear", align_corners=False
        )
        return outputs_class, outputs_mask, self.blocked_attention(attn_mask.flatten(2))

    def blocked_attention(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """
        Args:
            mask_logits: (N, Q, L) mask logits at the L tokens the next round attends to.

        Returns:
            (N * nheads, Q, L) bool, detached: True where attention is blocked (background).
        """
        attn_mask = mask_logits.sigmoid() < 0.5
        # A query whose mask is empty at this level would attend to nothing (NaN softmax);
        # let it attend everywhere instead.
        attn_mask[attn_mask.all(-1)] = False
        attn_mask = attn_mask.unsqueeze(1).expand(-1, self.num_heads, -1, -1).flatten(0, 1)
        return attn_mask.detach()
