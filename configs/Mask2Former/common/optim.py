# Optimizer and schedules of the official Mask2Former configs: AdamW, lr 1e-4, weight decay 0.05
# (none on norms and Swin's relative position tables), backbone lr x 0.1; step decay x 0.1 at
# ~89% and ~96% of training (COCO), or poly decay with power 0.9 (ADE20K); no warmup.
#
# Not reproduced: upstream clips the gradient norm of the whole model at 0.01 (train_net.py's
# trainers do not clip), and exempts nn.Embedding weights (queries, level embeddings) from
# weight decay (detectron2's get_default_optimizer_params cannot single them out).
import torch
from detectron2.config import LazyCall as L
from detectron2.solver import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler, PolynomialDecayParamScheduler

from expedite_vit.solver import backbone_lr_factor


def adamw(lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1):
    return L(torch.optim.AdamW)(
        params=L(get_default_optimizer_params)(
            base_lr="${..lr}",  # the lr that lr_factor_func scales
            weight_decay_norm=0.0,
            lr_factor_func=L(backbone_lr_factor)(multiplier=backbone_multiplier),
            overrides={"relative_position_bias_table": {"weight_decay": 0.0}},
        ),
        lr=lr,
        betas=(0.9, 0.999),
        weight_decay=weight_decay,
    )


def step_schedule(max_iter, milestones):
    return L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=list(milestones), num_updates=max_iter
    )


def poly_schedule(power=0.9):
    return L(PolynomialDecayParamScheduler)(base_value=1.0, power=power)
