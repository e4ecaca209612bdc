# ViTDet-L Cascade Mask R-CNN on COCO (100ep): detectron2's
# projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_l_100ep.py field for field
# (tests/test_upstream_configs.py), with the expedited ViT-L and its preset at
# model.backbone.net.expedite (configs/common/vitdet.py). Turn token reduction off with
# model.backbone.net.expedite.enabled=False.
from functools import partial

from ...common.vitdet import vitdet_expedite
from .cascade_mask_rcnn_vitdet_b_100ep import (
    dataloader,
    lr_multiplier,
    model,
    train,
    optimizer,
    get_vit_lr_decay_rate,
)

train.init_checkpoint = (
    "detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_large.pth?matching_heuristics=True"
)

model.backbone.net.embed_dim = 1024
model.backbone.net.depth = 24
model.backbone.net.num_heads = 16
model.backbone.net.drop_path_rate = 0.4
# 5, 11, 17, 23 for global attention
model.backbone.net.window_block_indexes = (
    list(range(0, 5)) + list(range(6, 11)) + list(range(12, 17)) + list(range(18, 23))
)
model.backbone.net.expedite = vitdet_expedite("large")

optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, lr_decay_rate=0.8, num_layers=24)
