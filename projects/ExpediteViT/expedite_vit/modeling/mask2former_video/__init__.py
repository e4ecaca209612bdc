"""Mask2Former-VIS (video instance segmentation) built from the image Mask2Former's pieces,
loading the official YouTube-VIS checkpoints unchanged."""

from .criterion import VideoHungarianMatcher, VideoSetCriterion, build_video_mask2former_criterion
from .meta_arch import VideoMaskFormer, build_video_mask2former_head
from .transformer_decoder import PositionEmbeddingSine3D, VideoMultiScaleMaskedTransformerDecoder

__all__ = [
    "PositionEmbeddingSine3D",
    "VideoHungarianMatcher",
    "VideoMaskFormer",
    "VideoMultiScaleMaskedTransformerDecoder",
    "VideoSetCriterion",
    "build_video_mask2former_criterion",
    "build_video_mask2former_head",
]
