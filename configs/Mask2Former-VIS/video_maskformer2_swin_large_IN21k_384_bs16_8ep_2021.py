# Mask2Former-VIS Swin-L (IN21k, 384) on YouTube-VIS 2021: the official
# configs/youtubevis_2021/swin/video_maskformer2_swin_large_IN21k_384_bs16_8ep.yaml (40 classes,
# 200 queries, one video per test batch, tested at short edge 360 / max 1333: upstream left 480
# out, it ran out of memory), with the Expedit preset of the released Expedit-Mask2Former
# YouTube-VIS 2021 config in the backbone, clustering every 12x12 window of every frame.
#
# Published (Expedit paper, YouTube-VIS 2021 server AP): 52.6 -> 51.8, backbone 7159 -> 6253
# GFLOPs per clip.
# Turn token reduction off with model.backbone.expedite.enabled=False.
#
# Evaluate the official model (it loads unchanged, expedite on or off); ytvis_2021_val has no public
# labels, so the evaluator writes OUTPUT_DIR/results.zip for the evaluation server:
#   python train_net.py --eval-only --config-file THIS_FILE train.init_checkpoint=https://dl.fbaipublicfiles.com/maskformer/video_mask2former/ytvis_2021/video_maskformer2_swin_large_IN21k_384_bs16_8ep/model_final_4da256.pkl
# Training starts, as upstream, from the COCO-instance Mask2Former Swin-L (model_final_e5f453.pkl),
# with the official schedule (AdamW, lr 1e-4, AMP; upstream also clips the whole model's gradient
# norm at 0.01, which train_net.py's trainers do not).
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..Mask2Former.common.models import SWIN_LARGE_CHANNELS
from ..Mask2Former.common.optim import adamw
from .common.data import ytvis_dataloader
from .common.models import swin_large_video_backbone, video_mask2former

model = video_mask2former(
    backbone=swin_large_video_backbone("ytvis_2021"),  # model.backbone.expedite
    backbone_channels=SWIN_LARGE_CHANNELS,
    num_classes=40,
    num_queries=200,
    # Backbone and pixel decoder run 16 frames at a time, so a long video's backbone activations
    # stay bounded (upstream runs all frames at once and runs out of memory at 100-150 frames).
    frame_chunk=16,
)
dataloader = ytvis_dataloader("2021", test_short_edge=360)

train = model_zoo.get_config("common/train.py").train
train.update(
    init_checkpoint="model_final_e5f453.pkl",
    output_dir="./output/video_mask2former_swin_large_ytvis_2021",
    max_iter=8000,
)
train.amp.enabled = True
optimizer = adamw()
lr_multiplier = L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[5500], num_updates=train.max_iter)
