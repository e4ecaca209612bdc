# Mask2Former R50 on COCO panoptic, 50 epochs: the official
# configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml (133 classes, 100 queries,
# tested at short edge 800 / max 1333).
#
# The plain baseline: ResNet-50 has no tokens, so there is no token reduction and no
# model.backbone.expedite node; its results are Mask2Former's own (published PQ 51.9).
#
# Evaluate the official model:
#   python train_net.py --eval-only --config-file THIS_FILE train.init_checkpoint=https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_R50_bs16_50ep/model_final_94dc52.pkl
# Training starts from the torchvision ImageNet ResNet-50 as upstream does.
from detectron2 import model_zoo

from ..common.data import coco_panoptic_dataloader
from ..common.models import RESNET50_CHANNELS, mask2former, resnet50_backbone
from ..common.optim import adamw, step_schedule

model = mask2former(
    backbone=resnet50_backbone(),
    backbone_channels=RESNET50_CHANNELS,
    num_classes=133,
    num_queries=100,
    metadata_name="coco_2017_train_panoptic",
    semantic_on=True,
    instance_on=True,
    panoptic_on=True,
)
dataloader = coco_panoptic_dataloader()

train = model_zoo.get_config("common/train.py").train
train.update(
    init_checkpoint="detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    output_dir="./output/mask2former_R50_coco_panoptic",
    max_iter=368750,
)
train.amp.enabled = True
optimizer = adamw()
lr_multiplier = step_schedule(train.max_iter, milestones=(327778, 355092))
