# Mask2Former models as LazyConfig nodes, with the settings of the official YAML configs
# (facebookresearch/Mask2Former, configs/*/maskformer2_*.yaml): MaskFormer meta-architecture,
# MSDeformAttn pixel decoder (6 layers on res3-res5), 9-layer masked-attention decoder, losses
# CE 2 / mask BCE 5 / dice 5 with 12544 points, no-object weight 0.1, thresholds 0.8.
# Token reduction lives in the backbone: model.backbone.expedite (Swin).
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet

from expedite_vit.modeling.mask2former import (
    MaskFormer,
    build_mask2former_criterion,
    build_mask2former_head,
)
from expedite_vit.modeling.swin import D2SwinTransformer
from expedite_vit.settings import expedite_node

# The official checkpoints take RGB images normalised with ImageNet statistics.
PIXEL_MEAN = [123.675, 116.280, 103.530]
PIXEL_STD = [58.395, 57.120, 57.375]
LEVELS = ("res2", "res3", "res4", "res5")
STRIDES = (4, 8, 16, 32)

SWIN_LARGE = dict(
    embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12, drop_path_rate=0.3
)
RESNET50_CHANNELS = (256, 512, 1024, 2048)


def feature_shapes(channels):
    """res2..res5 -> ShapeSpec, for the head's input_shape (it must match the backbone)."""
    return {name: L(ShapeSpec)(channels=c, stride=s) for name, c, s in zip(LEVELS, channels, STRIDES)}


def swin_backbone(*, embed_dim, depths, num_heads, window_size, drop_path_rate, expedite):
    """D2SwinTransformer with its ``expedite`` node (a dict of ExpediteConfig fields, each
    method's settings a dict of its own)."""
    return L(D2SwinTransformer)(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        drop_path_rate=drop_path_rate,
        out_features=list(LEVELS),
        expedite=expedite_node(**expedite),
    )


def swin_channels(embed_dim, num_stages=4):
    return tuple(embed_dim * 2**i for i in range(num_stages))


# Expedit presets of the Mask2Former Swin-L configs, the one home of Mask2Former's presets
# (ViTDet's: VITDET_EXPEDITE_PRESETS in configs/common/vitdet.py). Each is a complete set of
# ExpediteConfig fields, set at model.backbone.expedite and overridable from the command line.
# They are the released Expedit configs' (METHODS.md section 1). location is alpha, the blocks at
# full resolution counted over all stages (Swin-L depths 2, 2, 18, 2): all fall in stage 3.
# grid 8: each 12x12 Swin window -> 8x8 clusters.
# Backbone GFLOPs at 1152x1152, fvcore (BENCHMARKS.md); baseline 936.9, published 937. The
# published figures 663/705/620 were measured at location 9/11/7, one block lower than the COCO
# presets: ours at 9, 11 and 7 are 661.4, 704.1 and 618.7 (9 and 7 with the COCO panoptic
# preset's other settings, 11 with the instance preset's). Fast-iTPN (method=itpn) keeps `keep`
# of every window from `location` on, matched to Expedit's FLOPs (Swin has no global attention
# to gather).
SWIN_LARGE_EXPEDITE_PRESETS = {
    # 936.9 -> 682.7 (1.37x). Published: 663 GFLOPs, PQ 57.8 -> 56.8. ToMe at the same FLOPs:
    # r=13 (1.36x; method=tome).
    "coco_panoptic": dict(
        enabled=True, method="expedit", location=10,
        expedit=dict(
            grid=8, n_iters=5, cluster_temperature=0.05, locality_window=7, k=10,
            reconstruct_temperature=0.05, normalize="sum", implementation="default", gather=0,
            warm_start=False,
        ),
        tome=dict(r=13),
        itpn=dict(keep=0.4373, score="neighbour"),  # Fast-iTPN's migration at the same FLOPs: 1.375x
    ),
    # 936.9 -> 725.4 (1.29x). Published: 705 GFLOPs, mask AP 50.1 -> 49.1. ToMe at the same
    # FLOPs: r=16 (1.29x; method=tome).
    "coco_instance": dict(
        enabled=True, method="expedit", location=12,
        expedit=dict(
            grid=8, n_iters=5, cluster_temperature=0.01, locality_window=11, k=60,
            reconstruct_temperature=0.01, normalize="sum", implementation="default", gather=0,
            warm_start=False,
        ),
        tome=dict(r=16),
        itpn=dict(keep=0.4382, score="neighbour"),  # Fast-iTPN's migration at the same FLOPs: 1.290x
    ),
    # 936.9 -> 618.8 (1.51x). Published: 620 GFLOPs, mIoU 55.8 -> 55.5. ToMe at the same FLOPs:
    # r=11 (1.53x; method=tome).
    "ade20k_semantic": dict(
        enabled=True, method="expedit", location=7,
        expedit=dict(
            grid=8, n_iters=5, cluster_temperature=0.01, locality_window=5, k=10,
            reconstruct_temperature=0.01, normalize="sum", implementation="default", gather=0,
            warm_start=False,
        ),
        tome=dict(r=11),
        itpn=dict(keep=0.4373, score="neighbour"),  # Fast-iTPN's migration at the same FLOPs: 1.518x
    ),
}


def swin_large_backbone(preset):
    """Swin-L (IN21k, 384: window 12) as in the official Mask2Former Swin-L configs, with the
    Expedit preset ``preset`` (a key of SWIN_LARGE_EXPEDITE_PRESETS)."""
    return swin_backbone(**SWIN_LARGE, expedite=SWIN_LARGE_EXPEDITE_PRESETS[preset])


SWIN_LARGE_CHANNELS = swin_channels(SWIN_LARGE["embed_dim"])


def resnet50_backbone():
    """detectron2's ResNet-50 as Mask2Former uses it: torchvision-style (stride in the 3x3 conv),
    frozen BN, nothing frozen. It has no tokens to cluster, so no ``expedite`` node."""
    return L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=list(LEVELS),
        freeze_at=0,
    )


def mask2former(
    *,
    backbone,
    backbone_channels,
    num_classes,
    num_queries,
    metadata_name,
    semantic_on,
    instance_on,
    panoptic_on,
):
    """
    The MaskFormer node. Settings stated once: the criterion and the meta-architecture read
    num_classes, num_queries and dec_layers from ``model.sem_seg_head`` by interpolation, so an
    override of the head changes them everywhere.

    Args:
        backbone_channels: channels of the backbone's res2..res5 (sizes the pixel decoder).
        metadata_name: dataset whose metadata gives panoptic inference its thing classes.
        semantic_on, instance_on, panoptic_on: which results inference returns.
    """
    return L(MaskFormer)(
        backbone=backbone,
        sem_seg_head=L(build_mask2former_head)(
            input_shape=feature_shapes(backbone_channels),
            num_classes=num_classes,
            num_queries=num_queries,
            dec_layers=9,  # YAML DEC_LAYERS 10 counts the loss on the learnable queries too
        ),
        criterion=L(build_mask2former_criterion)(
            num_classes="${..sem_seg_head.num_classes}",
            dec_layers="${..sem_seg_head.dec_layers}",
        ),
        num_queries="${.sem_seg_head.num_queries}",
        object_mask_threshold=0.8,
        overlap_threshold=0.8,
        # By its import path rather than L(MetadataCatalog.get): a bound method would be saved in
        # config.yaml as the unbound _MetadataCatalog.get, which cannot be called again.
        metadata=L("detectron2.data.MetadataCatalog.get")(name=metadata_name),
        size_divisibility=32,
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
        semantic_on=semantic_on,
        instance_on=instance_on,
        panoptic_on=panoptic_on,
        test_topk_per_image=100,
    )
