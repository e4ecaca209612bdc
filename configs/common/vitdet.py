# ViTDet Mask R-CNN / Cascade Mask R-CNN with the expedited ViT, as in detectron2's
# projects/ViTDet, plus the `expedite` node at model.backbone.net.expedite.
from functools import partial

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from expedite import ExpediteConfig
from expedite_vit.modeling import ExpeditedViT

from .coco_loader_lsj import dataloader

MAE_CHECKPOINT = "detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_{size}.pth?matching_heuristics=True"

# name: (embed_dim, depth, num_heads, drop_path_rate, global attention blocks, lr decay, epochs)
SIZES = {
    "base": (768, 12, 12, 0.1, (2, 5, 8, 11), 0.7, 100),
    "large": (1024, 24, 16, 0.4, (5, 11, 17, 23), 0.8, 100),
    "huge": (1280, 32, 16, 0.5, (7, 15, 23, 31), 0.9, 75),
}


# Expedit presets: each 14x14 window is clustered to grid x grid after `location` blocks. Backbone
# (ViT) FLOPs at 1024x1024, fvcore, clustering and reconstruction counted (BENCHMARKS.md):
EXPEDITE_PRESETS = {
    # 483.2 -> 222.4 GFLOPs: 2.17x
    "base": dict(location=4, grid=7),
    # 1490.4 -> 716.6 GFLOPs: 2.08x
    "large": dict(location=8, grid=7),
    # 2978.5 -> 1449.7 GFLOPs: 2.05x
    "huge": dict(location=8, grid=8),
}
# Shared by every preset; all can be overridden (model.backbone.net.expedite.k=10, ...).
EXPEDITE_DEFAULTS = dict(
    enabled=True, n_iters=5, cluster_temperature=0.01, locality_window=5, k=20,
    reconstruct_temperature=0.01,
)


def mask_rcnn_vitdet(size: str):
    """Returns (model, train, optimizer, lr_multiplier) of ViTDet-{size} Mask R-CNN on COCO,
    with the Expedit preset of that size."""
    embed_dim, depth, num_heads, drop_path, global_blocks, lr_decay, epochs = SIZES[size]
    model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
    net = model.backbone.net
    net._target_ = ExpeditedViT
    net.embed_dim, net.depth, net.num_heads, net.drop_path_rate = embed_dim, depth, num_heads, drop_path
    net.window_block_indexes = [i for i in range(depth) if i not in global_blocks]
    net.expedite = L(ExpediteConfig)(**EXPEDITE_DEFAULTS, **EXPEDITE_PRESETS[size])

    train = model_zoo.get_config("common/train.py").train
    train.amp.enabled = True
    train.ddp.fp16_compression = True
    train.init_checkpoint = MAE_CHECKPOINT.format(size=size)
    # COCO has 118k training images; batch 64.
    train.max_iter = 184375 if epochs == 100 else 138281
    milestones = [163889, 177546] if epochs == 100 else [122500, 133000]
    lr_multiplier = L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01], milestones=milestones, num_updates=train.max_iter
        ),
        warmup_length=250 / train.max_iter,
        warmup_factor=0.001,
    )
    optimizer = model_zoo.get_config("common/optim.py").AdamW
    optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=depth, lr_decay_rate=lr_decay)
    optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
    return model, train, optimizer, lr_multiplier


def cascade_roi_heads(model):
    """Replace Mask R-CNN's box head by ViTDet's three-stage cascade (4conv1fc, LN)."""
    model.roi_heads.update(
        _target_=CascadeROIHeads,
        box_heads=[
            L(FastRCNNConvFCHead)(
                input_shape=ShapeSpec(channels=256, height=7, width=7),
                conv_dims=[256, 256, 256, 256],
                fc_dims=[1024],
                conv_norm="LN",
            )
            for _ in range(3)
        ],
        box_predictors=[
            L(FastRCNNOutputLayers)(
                input_shape=ShapeSpec(channels=1024),
                test_score_thresh=0.05,
                box2box_transform=L(Box2BoxTransform)(weights=(w1, w1, w2, w2)),
                cls_agnostic_bbox_reg=True,
                num_classes="${...num_classes}",
            )
            for (w1, w2) in [(10, 5), (20, 10), (30, 15)]
        ],
        proposal_matchers=[
            L(Matcher)(thresholds=[th], labels=[0, 1], allow_low_quality_matches=False)
            for th in [0.5, 0.6, 0.7]
        ],
    )
    for key in ("box_head", "box_predictor", "proposal_matcher"):
        model.roi_heads.pop(key)
    return model
