"""Forward-only Triton kernel for multi-scale deformable attention.

Imported lazily by :func:`ms_deform_attn.multi_scale_deformable_attention` the first time a
CUDA tensor needs no gradient, so neither Triton nor a GPU is needed to import the package.
Triton compiles the kernel on first use: no build step. Semantics are those of
:func:`ms_deform_attn.ms_deform_attn_core_pytorch` (bilinear, zero padding, pixel centres at
(i + 0.5) / size). With ``TRITON_INTERPRET=1`` set before this module is imported, the kernel
runs on CPU tensors, which is how it is tested without a GPU.
"""

import importlib.util
from typing import List, Tuple

import torch

__all__ = ["is_available", "ms_deform_attn_triton"]


def is_available() -> bool:
    return importlib.util.find_spec("triton") is not None


if is_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _ms_deform_attn_forward_kernel(
        value_ptr,  # (N, S, M, D)
        shapes_ptr,  # (L, 2) int32: H, W
        level_starts_ptr,  # (L,) int32
        locations_ptr,  # (N, Lq, M, L, P, 2)
        weights_ptr,  # (N, Lq, M, L, P)
        out_ptr,  # (N, Lq, M, D)
        num_tokens,
        num_queries,
        NUM_HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        NUM_LEVELS: tl.constexpr,
        NUM_POINTS: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        # One program: BLOCK_Q queries of one (image, head), all channels of the head.
        batch_head = tl.program_id(1)
        n = batch_head // NUM_HEADS
        m = batch_head % NUM_HEADS
        q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        d = tl.arange(0, BLOCK_D)
        q_ok = q < num_queries
        d_ok = d < HEAD_DIM

        # Index of (n, q, m) in the (N, Lq, M) leading dims of locations, weights and output.
        query_row = (n * num_queries + q).to(tl.int64) * NUM_HEADS + m
        value_head = value_ptr + n.to(tl.int64) * num_tokens * NUM_HEADS * HEAD_DIM + m * HEAD_DIM
        acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
        for level in tl.static_range(NUM_LEVELS):
            h = tl.load(shapes_ptr + 2 * level)
            w = tl.load(shapes_ptr + 2 * level + 1)
            start = tl.load(level_starts_ptr + level)
            hf = h.to(tl.float32)
            wf = w.to(tl.float32)
            for point in tl.static_range(NUM_POINTS):
                sample = query_row * (NUM_LEVELS * NUM_POINTS) + level * NUM_POINTS + point
                x = tl.load(locations_ptr + 2 * sample, mask=q_ok, other=0.0).to(tl.float32)
                y = tl.load(locations_ptr + 2 * sample + 1, mask=q_ok, other=0.0).to(tl.float32)
                attn = tl.load(weights_ptr + sample, mask=q_ok, other=0.0).to(tl.float32)
                # Continuous pixel coordinates; clamping far-away points keeps the integer
                # conversion safe and changes nothing, their neighbours are all outside.
                px = tl.minimum(tl.maximum(x * wf - 0.5, -2.0), wf + 1.0)
                py = tl.minimum(tl.maximum(y * hf - 0.5, -2.0), hf + 1.0)
                x0f = tl.floor(px)
                y0f = tl.floor(py)
                fx = px - x0f
                fy = py - y0f
                x0 = x0f.to(tl.int32)
                y0 = y0f.to(tl.int32)
                for dy in tl.static_range(2):
                    for dx in tl.static_range(2):
                        if dy == 0:
                            wy = 1.0 - fy
                        else:
                            wy = fy
                        if dx == 0:
                            wx = 1.0 - fx
                        else:
                            wx = fx
                        yy = y0 + dy
                        xx = x0 + dx
                        inside = q_ok & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
                        token = (start + yy * w + xx).to(tl.int64)
                        ptrs = value_head + token[:, None] * (NUM_HEADS * HEAD_DIM) + d[None, :]
                        corner = tl.load(ptrs, mask=inside[:, None] & d_ok[None, :], other=0.0)
                        acc += (attn * wy * wx)[:, None] * corner.to(tl.float32)

        out_ptrs = out_ptr + query_row[:, None] * HEAD_DIM + d[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


def ms_deform_attn_triton(
    value: torch.Tensor,
    spatial_shapes: List[Tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    block_queries: int = 64,
) -> torch.Tensor:
    """
    Args:
        value: (N, S, M, D).
        spatial_shapes: L pairs (H_l, W_l).
        sampling_locations: (N, Lq, M, L, P, 2) normalized (x, y).
        attention_weights: (N, Lq, M, L, P).
        block_queries: queries per program (a power of two).

    Returns:
        (N, Lq, M * D) in the dtype of ``value`` (accumulated in float32).
    """
    n, s, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    device = value.device
    shapes = torch.tensor(spatial_shapes, dtype=torch.int32, device=device).view(num_levels, 2)
    sizes = [h * w for h, w in spatial_shapes]
    starts = torch.tensor(
        [sum(sizes[:i]) for i in range(num_levels)], dtype=torch.int32, device=device
    )
    out = torch.empty(n, lq, m, d, dtype=value.dtype, device=device)
    grid = (triton.cdiv(lq, block_queries), n * m)
    _ms_deform_attn_forward_kernel[grid](
        value.contiguous(),
        shapes,
        starts,
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
        out,
        s,
        lq,
        NUM_HEADS=m,
        HEAD_DIM=d,
        NUM_LEVELS=num_levels,
        NUM_POINTS=p,
        BLOCK_Q=block_queries,
        BLOCK_D=triton.next_power_of_2(d),
    )
    return out.view(n, lq, m * d)
