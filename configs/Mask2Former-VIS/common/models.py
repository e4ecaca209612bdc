# Mask2Former-VIS models as LazyConfig nodes, with the settings of the official YouTube-VIS YAML
# configs (facebookresearch/Mask2Former, configs/youtubevis_20{19,21}/): the image Mask2Former's
# backbone, pixel decoder and losses, the video decoder (VideoMultiScaleMaskedTransformerDecoder),
# top-10 (query, class) pairs per video at test time.
# Token reduction lives in the backbone: model.backbone.expedite (Swin), applied per frame.
from detectron2.config import LazyCall as L

from expedite_vit.modeling.mask2former_video import (
    VideoMaskFormer,
    build_video_mask2former_criterion,
    build_video_mask2former_head,
)

from ...Mask2Former.common.models import (
    PIXEL_MEAN,
    PIXEL_STD,
    SWIN_LARGE,
    SWIN_LARGE_CHANNELS,
    feature_shapes,
    swin_backbone,
)

# Expedit presets of the released Expedit-Mask2Former YouTube-VIS configs
# (configs/youtubevis_20{19,21}/swin/video_maskformer2_hourglass_swin_large_IN21k_384_bs16_8ep.yaml):
# alpha 14 (stage 3 of Swin-L: its last 8 blocks run on clustered windows), each 12x12 window ->
# 8x8 clusters, temperature 0.01, locality window 7, reconstruction from k=49 clusters at
# temperature 0.01; they differ only in n_iters. Published (backbone GFLOPs per clip, server AP):
# 2019 8957 -> 7631, AP 60.4 -> 60.2; 2021 7159 -> 6253, AP 52.6 -> 51.8.
def _ytvis_preset(n_iters):
    return dict(
        enabled=True, method="expedit", location=14,
        expedit=dict(
            grid=8, n_iters=n_iters, cluster_temperature=0.01, locality_window=7, k=49,
            reconstruct_temperature=0.01, normalize="sum", implementation="default",
        ),
    )


SWIN_LARGE_YTVIS_EXPEDITE_PRESETS = {"ytvis_2019": _ytvis_preset(4), "ytvis_2021": _ytvis_preset(5)}


def swin_large_video_backbone(preset):
    """Swin-L (IN21k, 384: window 12) with the YouTube-VIS Expedit preset ``preset`` (a key of
    SWIN_LARGE_YTVIS_EXPEDITE_PRESETS)."""
    return swin_backbone(**SWIN_LARGE, expedite=SWIN_LARGE_YTVIS_EXPEDITE_PRESETS[preset])


def video_mask2former(*, backbone, backbone_channels, num_classes, num_queries, frame_chunk):
    """
    The VideoMaskFormer node. As for the image models, the criterion and the meta-architecture
    read num_classes, num_queries and dec_layers from ``model.sem_seg_head`` by interpolation.

    Args:
        backbone_channels: channels of the backbone's res2..res5 (sizes the pixel decoder).
        frame_chunk: frames per pass through the backbone and pixel decoder (None: all at once).
    """
    return L(VideoMaskFormer)(
        backbone=backbone,
        sem_seg_head=L(build_video_mask2former_head)(
            input_shape=feature_shapes(backbone_channels),
            num_classes=num_classes,
            num_queries=num_queries,
            dec_layers=9,  # YAML DEC_LAYERS 10 counts the loss on the learnable queries too
        ),
        criterion=L(build_video_mask2former_criterion)(
            num_classes="${..sem_seg_head.num_classes}",
            dec_layers="${..sem_seg_head.dec_layers}",
        ),
        num_queries="${.sem_seg_head.num_queries}",
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
        size_divisibility=32,
        frame_chunk=frame_chunk,
        test_topk_per_video=10,
    )


def swin_large_ytvis_model(year):
    """The official Swin-L (IN21k, 384) YouTube-VIS ``year`` model (40 classes, 200 queries) with
    that year's Expedit preset at ``model.backbone.expedite``."""
    return video_mask2former(
        backbone=swin_large_video_backbone(f"ytvis_{year}"),
        backbone_channels=SWIN_LARGE_CHANNELS,
        num_classes=40,
        num_queries=200,
        # Backbone and pixel decoder run 16 frames at a time, so a long video's backbone
        # activations stay bounded (upstream runs all frames at once and runs out of memory at
        # 100-150 frames).
        frame_chunk=16,
    )
