# The small built-in Mask2Former of maskformer2_swin_tiny_scenes_panoptic.py (same head, data,
# schedule and evaluation) on ViTDet's backbone instead of Swin: a plain ViT with windowed and
# global attention blocks, whose last map the simple feature pyramid turns into res2..res5
# (strides 4..32) for the pixel decoder.
#
# Token reduction sits where it does for ViTDet: model.backbone.net.expedite. As for the Swin
# model, train with it off (model.backbone.net.expedite.enabled=False) and evaluate with it on.
from detectron2.config import LazyCall as L

from expedite_vit.modeling import ExpeditedViT
from expedite_vit.settings import expedite_node
from expedite_vit.modeling.vitdet_pyramid import Mask2FormerSimpleFeaturePyramid

from ..common.models import feature_shapes
from .maskformer2_swin_tiny_scenes_panoptic import (
    IMAGE_SIZE,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

PYRAMID_CHANNELS = 128

model.backbone = L(Mask2FormerSimpleFeaturePyramid)(
    net=L(ExpeditedViT)(
        img_size=IMAGE_SIZE,
        patch_size=16,  # stride 16: the pyramid's 4x up to 0.5x scales give strides 4..32
        embed_dim=192,
        depth=6,
        num_heads=6,
        drop_path_rate=0.1,
        window_size=8,  # the 16x16 token map of a 256x256 image holds 2x2 windows
        window_block_indexes=[0, 1, 3, 4],  # blocks 2 and 5 attend globally
        use_rel_pos=True,
        pretrain_img_size=IMAGE_SIZE,
        pretrain_use_cls_token=False,
        out_feature="last_feat",
        expedite=expedite_node(
            enabled=True,
            method="expedit",
            location=2,  # blocks 2..5 run on the clustered map
            expedit=dict(
                grid=4,  # each 8x8 window -> 4x4 clusters
                n_iters=5,
                cluster_temperature=0.01,
                locality_window=3,
                k=4,
                reconstruct_temperature=0.01,
            ),
        ),
    ),
    in_feature="last_feat",
    out_channels=PYRAMID_CHANNELS,
    scale_factors=(4.0, 2.0, 1.0, 0.5),
    norm="LN",
)
model.sem_seg_head.input_shape = feature_shapes((PYRAMID_CHANNELS,) * 4)
optimizer.params.overrides.pos_embed = {"weight_decay": 0.0}  # as ViTDet trains its ViT
train.output_dir = "./output/mask2former_vitdet_tiny_scenes"
