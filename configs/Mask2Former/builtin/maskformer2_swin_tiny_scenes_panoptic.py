# A small Mask2Former (Swin backbone) for panoptic segmentation of the built-in expedite_scenes
# dataset (6 thing + 2 stuff classes, 256x256 images): the architecture of the official models at a
# size that trains from scratch on 2 CPU cores: 1500 iterations of 4 images take about 32 minutes
# with OMP_NUM_THREADS=1 (on a busy machine one thread avoids threads waiting on each other).
# The shipped checkpoint (checkpoints/mask2former_swin_tiny_scenes.pth; `tools/main_job.py --train`
# repeats it into the cache) has two more rounds of 1200 iterations, each started from the
# previous round's weights (train.init_checkpoint=.../model_final.pth train.max_iter=1200):
# PQ 23.9 -> 26.1 -> 28.4 on expedite_scenes_val.
#
# Expedit is applied to a trained model without fine-tuning, so train with token reduction off:
#   python train_net.py --config-file configs/Mask2Former/builtin/maskformer2_swin_tiny_scenes_panoptic.py \
#       model.backbone.expedite.enabled=False
# and evaluate (PQ, mask AP, mIoU on expedite_scenes_val) with it on, or off to compare:
#   python train_net.py --eval-only --config-file THIS_FILE \
#       train.init_checkpoint=output/mask2former_swin_tiny_scenes/model_final.pth
import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler
from omegaconf import OmegaConf

from expedite_vit.data import register_expedite_scenes
from expedite_vit.data.mask2former_mappers import MaskFormerPanopticDatasetMapper
from expedite_vit.evaluation import build_segmentation_evaluator

from ..common.data import test_loader, train_loader
from ..common.models import mask2former, swin_backbone, swin_channels
from ..common.optim import adamw

# Registered when the config is loaded, at $EXPEDITE_DATASETS (default: the user cache), so that a
# train_net.py process finds the dataset wherever it was generated.
register_expedite_scenes()

IMAGE_SIZE = 256
EMBED_DIM = 48

model = mask2former(
    backbone=swin_backbone(
        embed_dim=EMBED_DIM,
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 8, 16),
        window_size=8,  # 256 / 4 / 8: the stage-3 map (16x16) holds 2x2 windows
        drop_path_rate=0.1,
        expedite=dict(
            enabled=True,
            method="expedit",
            location=6,  # stage 3, block 2: its last 4 blocks run on the clustered map
            expedit=dict(
                grid=4,  # each 8x8 window -> 4x4 clusters
                n_iters=5,
                cluster_temperature=0.01,
                locality_window=3,
                k=4,
                reconstruct_temperature=0.01,
            ),
            # The other methods at the same backbone FLOPs (within 5%, BENCHMARKS.md): 1.28x and
            # 1.27x against Expedit's 1.30x (expedite.method=ailurus or tome).
            ailurus=dict(budget=16, threshold=-1.0),
            tome=dict(r=32),
            # Fast-iTPN's migration (method=itpn): half of every window; Swin has no global
            # attention to gather.
            itpn=dict(keep=0.5, score="neighbour"),
        ),
    ),
    backbone_channels=swin_channels(EMBED_DIM),
    num_classes=8,
    num_queries=30,  # scenes hold at most 10 things and 2 stuff segments
    metadata_name="expedite_scenes_train_panoptic",
    semantic_on=True,
    instance_on=True,
    panoptic_on=True,
)
model.sem_seg_head.update(
    # 96 rather than 128 channels: the pixel decoder's stride-4 convolutions cost 20% of a
    # training step at 128.
    hidden_dim=96,
    conv_dim=96,
    mask_dim=96,
    nheads=4,
    dim_feedforward=512,
    dec_layers=3,
    enc_layers=2,
    enc_dim_feedforward=256,
)
# Upstream keeps queries whose class score passes 0.8 for panoptic inference; this small model is
# less confident: on expedite_scenes_val (reduction off) PQ is 21.8 at 0.8, 26.1 at 0.5, 28.4 at
# 0.25 and 28.5 at 0.1.
model.object_mask_threshold = 0.25
# Upstream samples 12544 of the 256x256 mask logits of a 1024 crop; 1024 of 64x64 here.
model.criterion.train_num_points = 1024

dataloader = OmegaConf.create()
dataloader.train = train_loader(
    "expedite_scenes_train_panoptic",
    L(MaskFormerPanopticDatasetMapper)(
        augmentations=[
            L(T.RandomFlip)(horizontal=True),
            L(T.ResizeScale)(
                min_scale=0.8, max_scale=1.25, target_height=IMAGE_SIZE, target_width=IMAGE_SIZE
            ),
            L(T.FixedSizeCrop)(crop_size=(IMAGE_SIZE, IMAGE_SIZE), pad=False),
        ],
        image_format="RGB",
    ),
    total_batch_size=4,
    num_workers=1,
)
dataloader.test = test_loader(
    "expedite_scenes_val_panoptic", short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE, num_workers=1
)
# One model, three tasks, each scored against the dataset that holds its ground truth.
dataloader.evaluator = L(build_segmentation_evaluator)(
    datasets={
        "panoptic_seg": "expedite_scenes_val_panoptic",
        "segm": "expedite_scenes_val",
        "sem_seg": "expedite_scenes_val_sem_seg",
    }
)

train = model_zoo.get_config("common/train.py").train
train.update(
    max_iter=1500,
    device="cpu",
    output_dir="./output/mask2former_swin_tiny_scenes",
    init_checkpoint="",
    eval_period=0,
    log_period=20,
)
train.checkpointer.update(period=500, max_to_keep=2)

optimizer = adamw(lr=2e-4, backbone_multiplier=1.0)  # trained from scratch: one lr for all
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.02),
    warmup_length=100 / 1500,
    warmup_factor=0.01,
)
