"""Mask2Former (minus backbones), loading the official checkpoints unchanged.

Runs without compiled extensions: deformable attention is plain PyTorch, with a Triton kernel
picked per call for CUDA inference.
"""

from .criterion import SetCriterion, build_mask2former_criterion
from .matcher import HungarianMatcher
from .meta_arch import MaskFormer, MaskFormerHead, build_mask2former_head
from .ms_deform_attn import (
    MSDeformAttn,
    ms_deform_attn_core_pytorch,
    multi_scale_deformable_attention,
)
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MultiScaleMaskedTransformerDecoder, PositionEmbeddingSine

__all__ = [
    "HungarianMatcher",
    "MSDeformAttn",
    "MSDeformAttnPixelDecoder",
    "MaskFormer",
    "MaskFormerHead",
    "MultiScaleMaskedTransformerDecoder",
    "PositionEmbeddingSine",
    "SetCriterion",
    "build_mask2former_criterion",
    "build_mask2former_head",
    "ms_deform_attn_core_pytorch",
    "multi_scale_deformable_attention",
]
