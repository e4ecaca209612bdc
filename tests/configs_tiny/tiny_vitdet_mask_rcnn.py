"""ViTDet Mask R-CNN shrunk to run a few CPU iterations in seconds, for tests of train_net.py.

Architecture follows detectron2's ``common/models/mask_rcnn_vitdet.py`` (windowed and global
attention blocks, relative positions, simple feature pyramid) at toy sizes.

Data: a COCO-format dataset in the directory named by $EXPEDITE_TINY_COCO_DIR holding
``train.json``, ``val.json`` and ``images/``; tests write a synthetic one there. The dataset
is registered when this file is loaded, because the process running it (e.g. train_net.py in
a subprocess) is not the one that wrote the data.
"""
import os

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from fvcore.common.param_scheduler import MultiStepParamScheduler
from detectron2.solver import WarmupParamScheduler

from expedite_vit.settings import expedite_node
from expedite_vit.modeling import ExpeditedViT

TRAIN_DATASET = "tiny_vitdet_coco_train"
TEST_DATASET = "tiny_vitdet_coco_val"
IMAGE_SIZE = 128
NUM_CLASSES = 3


def _register_tiny_coco(dataset_dir):
    for name, json_name in ((TRAIN_DATASET, "train.json"), (TEST_DATASET, "val.json")):
        # Loading the config again (e.g. train then resume in one process) may point the
        # names at a new directory; replace the registration rather than keep a stale one.
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(
            name, {}, os.path.join(dataset_dir, json_name), os.path.join(dataset_dir, "images")
        )


_register_tiny_coco(os.environ.get("EXPEDITE_TINY_COCO_DIR", "datasets/tiny_coco"))

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

vit = model.backbone.net
vit._target_ = ExpeditedViT
# Token reduction from block 1 on: 4x4 windows clustered to 2x2.
vit.expedite = expedite_node(enabled=True, location=1, expedit=dict(grid=2, k=3))
vit.img_size = IMAGE_SIZE
vit.embed_dim = 64
vit.depth = 4
vit.num_heads = 4
vit.drop_path_rate = 0.0
vit.window_size = 4
vit.window_block_indexes = [0, 2]  # blocks 1 and 3 attend globally

fpn_channels = 64
model.backbone.out_channels = fpn_channels
model.backbone.square_pad = IMAGE_SIZE

rpn = model.proposal_generator
rpn.head.in_channels = fpn_channels
rpn.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
rpn.batch_size_per_image = 64
rpn.pre_nms_topk = (200, 100)
rpn.post_nms_topk = (50, 20)

roi_heads = model.roi_heads
roi_heads.num_classes = NUM_CLASSES
roi_heads.batch_size_per_image = 32
roi_heads.box_head.input_shape.channels = fpn_channels
roi_heads.box_head.conv_dims = [fpn_channels]
roi_heads.box_head.fc_dims = [128]
roi_heads.box_predictor.input_shape.channels = 128
roi_heads.box_predictor.test_topk_per_image = 20
roi_heads.mask_head.input_shape.channels = fpn_channels
roi_heads.mask_head.conv_dims = [fpn_channels, fpn_channels]

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = TRAIN_DATASET
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.mapper.image_format = "RGB"  # the ViTDet model takes RGB
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.dataset.names = TEST_DATASET
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE),
]
dataloader.test.num_workers = 0

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 1e-4

train = model_zoo.get_config("common/train.py").train
train.output_dir = "./output/tiny_vitdet_mask_rcnn"
train.device = "cpu"
train.init_checkpoint = ""
train.max_iter = 10
train.eval_period = 10
train.log_period = 1
train.checkpointer.period = 5

# Schedules are scale-invariant: the drop comes at 80% of train.max_iter whatever its value.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[8], num_updates=10),
    warmup_length=0.2,
    warmup_factor=0.1,
)
