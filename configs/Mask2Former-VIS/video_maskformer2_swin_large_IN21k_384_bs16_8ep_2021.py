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
# Training starts, as upstream, from the COCO-instance Mask2Former Swin-L, with the official
# schedule (common/schedules.py).
from .common.data import ytvis_dataloader
from .common.models import swin_large_ytvis_model
from .common.schedules import ytvis_swin_large_schedule

model = swin_large_ytvis_model("2021")  # model.backbone.expedite: the 2021 preset
dataloader = ytvis_dataloader("2021", test_short_edge=360)
train, optimizer, lr_multiplier = ytvis_swin_large_schedule(
    output_dir="./output/video_mask2former_swin_large_ytvis_2021", max_iter=8000, milestone=5500
)
