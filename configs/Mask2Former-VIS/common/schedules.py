# The official Mask2Former-VIS Swin-L training schedule (configs/youtubevis_20{19,21}/swin/
# video_maskformer2_swin_large_IN21k_384_bs16_8ep.yaml): from the COCO-instance Mask2Former Swin-L
# (model_final_e5f453.pkl), AdamW lr 1e-4, AMP, one step of the lr by 0.1. Upstream also clips the
# whole model's gradient norm at 0.01, which train_net.py's trainers do not.
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ...Mask2Former.common.optim import adamw


def ytvis_swin_large_schedule(*, output_dir, max_iter, milestone):
    """``train``, ``optimizer`` and ``lr_multiplier`` of a config: ``max_iter`` iterations, the
    lr multiplied by 0.1 at ``milestone``."""
    train = model_zoo.get_config("common/train.py").train
    train.update(init_checkpoint="model_final_e5f453.pkl", output_dir=output_dir, max_iter=max_iter)
    train.amp.enabled = True
    lr_multiplier = L(MultiStepParamScheduler)(
        values=[1.0, 0.1], milestones=[milestone], num_updates=max_iter
    )
    return train, adamw(), lr_multiplier
