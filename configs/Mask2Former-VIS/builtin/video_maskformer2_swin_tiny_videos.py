# A small Mask2Former-VIS for the built-in expedite_videos dataset (6 thing classes, 160x224 frames,
# 6-frame val videos): the architecture of the built-in image Mask2Former
# (configs/Mask2Former/builtin/maskformer2_swin_tiny_scenes_panoptic.py: its Swin backbone with its
# Expedit settings, its head sizes and query count) with the video decoder, so the video model can
# start from that model's checkpoint (checkpoints/mask2former_swin_tiny_scenes.pth). Every key and
# shape agrees except the class-dependent ones: the video model has the 6 thing classes, the image
# model 6 things + 2 stuff, so sem_seg_head.predictor.class_embed and criterion.empty_weight have
# 7 rows here and 9 there.
#
# Frames are evaluated at their own size (no resize); the backbone and pixel decoder take 4 frames
# at a time. Evaluate (YouTube-VIS AP on expedite_videos_val, which is labelled):
#   python train_net.py --eval-only --config-file THIS_FILE train.init_checkpoint=MODEL.pth
# The shipped checkpoint (checkpoints/mask2former_swin_tiny_videos.pth: YouTube-VIS AP 25.2 with
# token reduction off, 22.3 on; BENCHMARKS.md, "Built-in video model") was trained from the image
# model's weights (every weight copied; the class rows mapped by name: the 6 things, then
# "no object") for the 1000 iterations below, about 11 minutes on 2 CPU cores:
#   python tools/init_video_from_image.py checkpoints/mask2former_swin_tiny_scenes.pth INIT.pth
#   python train_net.py --config-file THIS_FILE train.init_checkpoint=INIT.pth model.backbone.expedite.enabled=False
# The dataset is generated with `expedite_vit.data.ensure_expedite_videos()` (at $EXPEDITE_VIDEOS, or
# $DETECTRON2_DATASETS/expedite_videos, or the user cache).
import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler
from omegaconf import OmegaConf

from expedite_vit.data import register_expedite_videos
from expedite_vit.evaluation import YTVISEvaluator

from ...Mask2Former.builtin.maskformer2_swin_tiny_scenes_panoptic import model as image_model
from ...Mask2Former.common.models import swin_channels
from ...Mask2Former.common.optim import adamw
from ..common.data import video_test_loader, video_train_loader
from ..common.models import video_mask2former

# Registered when the config is loaded, so that a train_net.py process finds the dataset wherever
# $EXPEDITE_VIDEOS points.
register_expedite_videos()

FRAME_HEIGHT, FRAME_WIDTH = 160, 224

model = video_mask2former(
    backbone=image_model.backbone,  # model.backbone.expedite, as the image model's
    backbone_channels=swin_channels(image_model.backbone.embed_dim),
    num_classes=6,
    num_queries=image_model.sem_seg_head.num_queries,
    frame_chunk=4,
)
# The image model's head sizes, so its weights fit.
model.sem_seg_head.update(
    {
        key: image_model.sem_seg_head[key]
        for key in (
            "hidden_dim", "conv_dim", "mask_dim", "nheads", "dim_feedforward", "dec_layers",
            "enc_layers", "enc_dim_feedforward",
        )
    }
)
model.criterion.train_num_points = image_model.criterion.train_num_points

dataloader = OmegaConf.create()
dataloader.train = video_train_loader(
    "expedite_videos_train",
    [L(T.RandomFlip)(horizontal=True)],
    sampling_frame_num=3,
    total_batch_size=2,
    num_workers=1,
)
dataloader.test = video_test_loader(
    "expedite_videos_val", short_edge_length=FRAME_HEIGHT, max_size=FRAME_WIDTH, num_workers=1
)
dataloader.evaluator = L(YTVISEvaluator)(dataset_name="expedite_videos_val", output_dir=None)

train = model_zoo.get_config("common/train.py").train
train.update(
    max_iter=1000,
    device="cpu",
    output_dir="./output/video_mask2former_swin_tiny_videos",
    init_checkpoint="",
    eval_period=0,
    log_period=20,
)
train.checkpointer.update(period=500, max_to_keep=2)

optimizer = adamw(lr=1e-4, backbone_multiplier=0.1)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.02),
    warmup_length=50 / 1000,
    warmup_factor=0.01,
)
