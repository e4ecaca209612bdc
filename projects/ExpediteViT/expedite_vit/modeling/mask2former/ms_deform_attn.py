"""Multi-scale deformable attention (Deformable DETR), as used by Mask2Former's pixel decoder.

Upstream Mask2Former imports a compiled CUDA extension for this op when its module is imported,
which makes the whole package unusable without a build step. Here the op is plain PyTorch
(``F.grid_sample``), with an optional Triton kernel (``ms_deform_attn_triton.py``) that is
chosen per call for CUDA inference and compiled just in time; Triton is not even imported until
such a call.

Shape names used below:
    N: batch, Lq: number of queries, S: number of value tokens over all levels (sum of H_l*W_l),
    M: attention heads, D: channels per head, L: feature levels, P: sampling points per level.
"""

import logging
import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

SpatialShapes = Union[Sequence[Tuple[int, int]], torch.Tensor]

logger = logging.getLogger(__name__)
# Set when the Triton kernel failed to compile or launch in this process.
_triton_failed = False

__all__ = [
    "MSDeformAttn",
    "ms_deform_attn_core_pytorch",
    "multi_scale_deformable_attention",
]


def _as_int_shapes(spatial_shapes: SpatialShapes) -> List[Tuple[int, int]]:
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def ms_deform_attn_core_pytorch(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """
    Reference implementation that runs on any device and supports autograd.

    Each sampling location is read with bilinear interpolation where out-of-image neighbours
    count as zero, pixel centres lying at ((i + 0.5) / W, (j + 0.5) / H): exactly
    ``F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``, which is also
    what the official CUDA kernel computes.

    Args:
        value: (N, S, M, D) values of all levels, flattened row-major per level and concatenated.
        spatial_shapes: L pairs (H_l, W_l), as a list or an (L, 2) integer tensor.
        sampling_locations: (N, Lq, M, L, P, 2) normalized (x, y) in [0, 1] (may lie outside).
        attention_weights: (N, Lq, M, L, P), already normalized over (L, P).

    Returns:
        (N, Lq, M * D)
    """
    shapes = _as_int_shapes(spatial_shapes)
    n, s, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    if len(shapes) != num_levels:
        raise ValueError(
            f"sampling_locations has {num_levels} levels but spatial_shapes has {len(shapes)}"
        )
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(f"spatial_shapes {shapes} do not add up to {s} value tokens")

    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample works on [-1, 1] coordinates.
    grids = 2 * sampling_locations - 1
    output = value.new_zeros(n * m, d, lq)
    for level, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        value_l = value_per_level[level].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(
            value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (N*M, D, Lq, P)
        # (N, Lq, M, P) -> (N*M, 1, Lq, P)
        weights_l = attention_weights[:, :, :, level].transpose(1, 2).reshape(n * m, 1, lq, p)
        # Accumulating level by level keeps the peak memory at one level's samples.
        output = output + (sampled * weights_l).sum(-1)
    return output.view(n, m * d, lq).transpose(1, 2).contiguous()


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """
    Same contract as :func:`ms_deform_attn_core_pytorch`; picks the implementation per call.

    The Triton kernel is used for CUDA tensors when no gradient is needed (it has no backward)
    and Triton is installed; every other call takes the PyTorch path. If the kernel cannot be
    compiled or launched (Triton also needs a C compiler at run time), a warning is logged
    once and the PyTorch path is used from then on.
    """
    global _triton_failed
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (value, sampling_locations, attention_weights)
    )
    if value.is_cuda and not needs_grad and not _triton_failed:
        from . import ms_deform_attn_triton

        if ms_deform_attn_triton.is_available():
            try:
                return ms_deform_attn_triton.ms_deform_attn_triton(
                    value, _as_int_shapes(spatial_shapes), sampling_locations, attention_weights
                )
            except Exception as error:  # noqa: BLE001 - any compile/launch failure: fall back
                _triton_failed = True
                logger.warning(
                    f"Triton deformable attention unavailable ({error!r}); using PyTorch"
                )
    return ms_deform_attn_core_pytorch(value, spatial_shapes, sampling_locations, attention_weights)


class MSDeformAttn(nn.Module):
    """
    Multi-scale deformable attention: each query attends to ``n_points`` learned offsets around
    its reference point on each of ``n_levels`` feature maps.

    Parameter names and shapes match the official checkpoints (``sampling_offsets``,
    ``attention_weights``, ``value_proj``, ``output_proj``).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        """
        Args:
            d_model: channels of queries and values.
            n_levels: number of feature levels attended to.
            n_heads: attention heads; must divide ``d_model``.
            n_points: sampling points per head and level.
        """
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        # Deformable DETR's initialisation: offsets start on rays in n_heads evenly spread
        # directions, point k at distance k (in pixels of each level), with equal attention.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        # Scale so the larger component is 1: the first point sits on a neighbouring pixel.
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        distances = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        offsets = directions[:, None, None, :] * distances[None, None, :, None]
        offsets = offsets.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(offsets.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: SpatialShapes,
    ) -> torch.Tensor:
        """
        Args:
            query: (N, Lq, C) query features (usually with positional encoding added).
            reference_points: (N, Lq, L, 2) normalized (x, y) per level, (0, 0) the top-left
                and (1, 1) the bottom-right corner of each feature map.
            input_flatten: (N, S, C) values of all levels, flattened and concatenated.
            spatial_shapes: L pairs (H_l, W_l) describing ``input_flatten``.

        Returns:
            (N, Lq, C)
        """
        shapes = _as_int_shapes(spatial_shapes)
        n, lq, c = query.shape
        if c != self.d_model or input_flatten.shape[-1] != self.d_model:
            raise ValueError(
                f"expected {self.d_model} channels, got query {tuple(query.shape)} "
                f"and input {tuple(input_flatten.shape)}"
            )
        if len(shapes) != self.n_levels:
            raise ValueError(f"expected {self.n_levels} feature levels, got {len(shapes)}")
        s = input_flatten.shape[1]
        if sum(h * w for h, w in shapes) != s:
            raise ValueError(f"spatial_shapes {shapes} do not add up to {s} input tokens")
        if reference_points.shape != (n, lq, self.n_levels, 2):
            raise ValueError(
                f"reference_points must have shape {(n, lq, self.n_levels, 2)}, "
                f"got {tuple(reference_points.shape)}"
            )

        m, num_levels, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten).view(n, s, m, c // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, num_levels, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, num_levels * p)
        weights = weights.softmax(-1).view(n, lq, m, num_levels, p)
        # Offsets are predicted in pixels of each level; normalize by that level's (W, H).
        level_sizes = torch.tensor(
            [[w, h] for h, w in shapes], dtype=offsets.dtype, device=offsets.device
        )
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / level_sizes[None, None, None, :, None, :]
        )
        output = multi_scale_deformable_attention(value, shapes, locations, weights)
        return self.output_proj(output)
