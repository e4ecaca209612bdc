# Mask2Former Swin-L (IN21k, 384) on COCO panoptic, 100 epochs: the official
# configs/coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml
# (133 classes, 200 queries, tested at short edge 800 / max 1333), with Expedit in the backbone.
#
# Published (Expedit paper, COCO val): PQ 57.8 -> 56.8, 937 -> 663 GFLOPs with this preset.
# Turn token reduction off with model.backbone.expedite.enabled=False.
#
# Evaluate the official model (it loads unchanged, expedite on or off):
#   python train_net.py --eval-only --config-file THIS_FILE train.init_checkpoint=https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_swin_large_IN21k_384_bs16_100ep/model_final_f07440.pkl
# Training starts from the ImageNet-21k Swin-L weights as upstream does:
# swin_large_patch4_window12_384_22k.pkl, made by Mask2Former's
# tools/convert-pretrained-swin-model-to-d2.py from the official Swin release.
from detectron2 import model_zoo

from ..common.data import coco_panoptic_dataloader
from ..common.models import SWIN_LARGE_CHANNELS, mask2former, swin_large_backbone
from ..common.optim import adamw, step_schedule

model = mask2former(
    backbone=swin_large_backbone("coco_panoptic"),  # model.backbone.expedite
    backbone_channels=SWIN_LARGE_CHANNELS,
    num_classes=133,
    num_queries=200,
    metadata_name="coco_2017_train_panoptic",
    semantic_on=True,
    instance_on=True,
    panoptic_on=True,
)
dataloader = coco_panoptic_dataloader()

train = model_zoo.get_config("common/train.py").train
train.update(
    init_checkpoint="swin_large_patch4_window12_384_22k.pkl",
    output_dir="./output/mask2former_swin_large_coco_panoptic",
    max_iter=737500,
)
train.amp.enabled = True
optimizer = adamw()
lr_multiplier = step_schedule(train.max_iter, milestones=(655556, 710184))
