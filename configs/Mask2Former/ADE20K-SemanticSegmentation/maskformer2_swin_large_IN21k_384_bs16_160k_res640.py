# Mask2Former Swin-L (IN21k, 384) on ADE20K-150 semantic segmentation, 160k iterations at 640:
# the official configs/ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml
# (150 classes, 100 queries, tested single-scale at short edge 640 / max 2560), with Expedit in the
# backbone.
#
# Published (Expedit paper, ADE20K val, single scale): mIoU 55.8 -> 55.5, 937 -> 620
# GFLOPs. The preset is the released Expedit config's for this model (location 7, 8x8, 5 iters,
# t 0.01, window 5, k 10, t' 0.01): SWIN_LARGE_EXPEDITE_PRESETS in ../common/models.py. Turn token
# reduction off with model.backbone.expedite.enabled=False.
#
# Evaluate the official model (it loads unchanged, expedite on or off):
#   python train_net.py --eval-only --config-file THIS_FILE train.init_checkpoint=https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/semantic/maskformer2_swin_large_IN21k_384_bs16_160k_res640/model_final_6b4a3a.pkl
# Training starts from the ImageNet-21k Swin-L weights as upstream does (see the COCO configs).
from detectron2 import model_zoo

from ..common.data import ade20k_semantic_dataloader
from ..common.models import SWIN_LARGE_CHANNELS, mask2former, swin_large_backbone
from ..common.optim import adamw, poly_schedule

model = mask2former(
    backbone=swin_large_backbone("ade20k_semantic"),  # model.backbone.expedite
    backbone_channels=SWIN_LARGE_CHANNELS,
    num_classes=150,
    num_queries=100,
    metadata_name="ade20k_sem_seg_train",
    semantic_on=True,
    instance_on=False,
    panoptic_on=False,
)
dataloader = ade20k_semantic_dataloader(crop_size=640)

train = model_zoo.get_config("common/train.py").train
train.update(
    init_checkpoint="swin_large_patch4_window12_384_22k.pkl",
    output_dir="./output/mask2former_swin_large_ade20k_semantic",
    max_iter=160000,
)
train.amp.enabled = True
optimizer = adamw()
lr_multiplier = poly_schedule(power=0.9)
