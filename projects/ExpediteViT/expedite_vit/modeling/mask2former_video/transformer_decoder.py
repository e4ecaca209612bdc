"""Mask2Former-VIS's video transformer decoder and its 3-D sine positional encoding.

The decoder is the image decoder with video-level queries: each query cross-attends to the tokens
of all T frames of a feature level at once and predicts one mask per frame, i.e. a tube. Its
parameters are the image decoder's (same names, same shapes), so official YouTube-VIS checkpoints
load into it unchanged; only ``forward`` differs.
"""

from typing import Dict, List, Tuple

import torch
from torch.nn import functional as F

from ..mask2former.transformer_decoder import MultiScaleMaskedTransformerDecoder, PositionEmbeddingSine

__all__ = ["PositionEmbeddingSine3D", "VideoMultiScaleMaskedTransformerDecoder"]


def _sine_encoding(coords: torch.Tensor, num_feats: int, temperature: float) -> torch.Tensor:
    """
    Args:
        coords: (L,) positions.

    Returns:
        (L, num_feats): channel 2k is sin and 2k+1 is cos of frequency temperature^(-2k/num_feats).
    """
    dim = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim = temperature ** (2 * torch.div(dim, 2, rounding_mode="floor") / num_feats)
    angles = coords[:, None] / dim
    return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=-1).flatten(1)


class PositionEmbeddingSine3D(PositionEmbeddingSine):
    """
    The 2-D sine encoding of (y, x) plus a sine encoding of time, as Mask2Former-VIS computes it.

    Coordinates of every axis are normalized to (0, scale], time by the clip length: the encoding of
    frame t depends on T, so a sub-clip is encoded differently from the same frames in a longer clip.
    The time term has ``2 * num_pos_feats`` channels with its own frequency schedule over them, and
    is *added* to the concatenated (y, x) encoding. No parameters, no buffers; the constructor
    is :class:`PositionEmbeddingSine`'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, T, C, H, W); only its shape and device are used.

        Returns:
            (B, T, 2 * num_pos_feats, H, W) float32, identical for every video in the batch.
        """
        b, t, _, h, w = x.shape
        eps = 1e-6

        def normalized(length: int) -> torch.Tensor:
            coords = torch.arange(1, length + 1, dtype=torch.float32, device=x.device)
            return coords / (coords[-1:] + eps) * self.scale

        feats = self.num_pos_feats
        pos_y = _sine_encoding(normalized(h), feats, self.temperature)  # (H, F)
        pos_x = _sine_encoding(normalized(w), feats, self.temperature)  # (W, F)
        pos_z = _sine_encoding(normalized(t), 2 * feats, self.temperature)  # (T, 2F)
        pos_yx = torch.cat(
            (pos_y[:, None, :].expand(h, w, feats), pos_x[None, :, :].expand(h, w, feats)), dim=-1
        )
        pos = pos_yx[None] + pos_z[:, None, None, :]  # (T, H, W, 2F)
        return pos.permute(0, 3, 1, 2)[None].expand(b, -1, -1, -1, -1)


class VideoMultiScaleMaskedTransformerDecoder(MultiScaleMaskedTransformerDecoder):
    """
    Mask2Former-VIS's decoder: ``num_queries`` video-level queries, each predicting one class and
    one mask tube over the T frames of its video. Round ``i`` cross-attends to the T * h * w tokens
    of level ``i % num_feature_levels`` (frame-major), masked by the previous round's tubes.

    Constructor arguments and parameters are those of :class:`MultiScaleMaskedTransformerDecoder`.
    """

    def __init__(self, in_channels: int, *, hidden_dim: int = 256, **kwargs):
        super().__init__(in_channels, hidden_dim=hidden_dim, **kwargs)
        self.pe_layer = PositionEmbeddingSine3D(hidden_dim // 2)

    def forward(
        self, x: List[torch.Tensor], mask_features: torch.Tensor, num_videos: int = 1
    ) -> Dict:
        """
        Args:
            x: ``num_feature_levels`` feature maps (B * T, in_channels, H_l, W_l), low to high
                resolution, the frames of each video consecutive.
            mask_features: (B * T, mask_dim, H_m, W_m) per-pixel embeddings of the same frames.
            num_videos: B; every video has T = (B * T) / B frames.

        Returns:
            dict with
              "pred_logits": (B, Q, num_classes + 1) class logits,
              "pred_masks": (B, Q, T, H_m, W_m) mask logits,
              "aux_outputs": in training, list of ``dec_layers`` dicts with the same two keys for
                  the predictions made before the last round (initial queries first); empty
                  otherwise, since every round's tubes would take ``dec_layers + 1`` times the
                  memory of the output on a long video.
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(x)}")
        if mask_features.dim() != 4 or mask_features.shape[1] != self.mask_dim:
            raise ValueError(
                f"mask_features must be (B * T, {self.mask_dim}, H, W), got {tuple(mask_features.shape)}"
            )
        num_frames_total = mask_features.shape[0]
        if num_videos < 1 or num_frames_total % num_videos != 0:
            raise ValueError(f"{num_frames_total} frames cannot be split into {num_videos} videos")
        for level, feature in enumerate(x):
            if feature.dim() != 4 or feature.shape[:2] != (num_frames_total, self.in_channels):
                raise ValueError(
                    f"feature level {level} must be ({num_frames_total}, {self.in_channels}, H, W), "
                    f"got {tuple(feature.shape)}"
                )
        b, t = num_videos, num_frames_total // num_videos
        mask_features = mask_features.view(b, t, *mask_features.shape[1:])

        srcs, pos, sizes = [], [], []
        for level, feature in enumerate(x):
            h, w = feature.shape[-2:]
            sizes.append((h, w))
            # (B * T, C, H, W) -> (T * HW, B, C): one memory of all frames, frame-major.
            level_pos = self.pe_layer(feature.view(b, t, -1, h, w)).flatten(3)
            pos.append(level_pos.permute(1, 3, 0, 2).flatten(0, 1).to(feature.dtype))
            src = (
                self.input_proj[level](feature).flatten(2)
                + self.level_embed.weight[level][None, :, None]
            )
            srcs.append(src.view(b, t, -1, h * w).permute(1, 3, 0, 2).flatten(0, 1))

        query_pos = self.query_embed.weight.unsqueeze(1).expand(-1, b, -1)
        output = self.query_feat.weight.unsqueeze(1).expand(-1, b, -1)

        # Outside training only the last round's predictions are kept (see "aux_outputs").
        return self.decode(
            output, query_pos, srcs, pos, sizes, mask_features, keep_aux=self.training
        )

    def forward_prediction_heads(
        self, output: torch.Tensor, mask_features: torch.Tensor, attn_mask_size: Tuple[int, int]
    ):
        """
        Args:
            output: (Q, B, C) query features.
            mask_features: (B, T, mask_dim, H_m, W_m).
            attn_mask_size: (h, w) of the feature level the next round attends to.

        Returns:
            class logits (B, Q, K + 1), mask logits (B, Q, T, H_m, W_m) and the next round's
            attention mask (B * nheads, Q, T * h * w), bool, True where attention is blocked.
        """
        decoded = self.decoder_norm(output).transpose(0, 1)
        outputs_class = self.class_embed(decoded)
        mask_embed = self.mask_embed(decoded)
        outputs_mask = torch.einsum("bqc,btchw->bqthw", mask_embed, mask_features)

        # Every frame's mask is resized to the attended level (frames as channels), then the
        # frames are flattened in the memory's frame-major order.
        b, q, t = outputs_mask.shape[:3]
        attn_mask = F.interpolate(
            outputs_mask.flatten(0, 1), size=attn_mask_size, mode="bilinear", align_corners=False
        )
        return outputs_class, outputs_mask, self.blocked_attention(attn_mask.view(b, q, -1))
