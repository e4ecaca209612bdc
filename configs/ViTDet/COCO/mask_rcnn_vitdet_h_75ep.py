# ViTDet-H Mask R-CNN on COCO (75ep), equivalent to detectron2's
# projects/ViTDet/configs/COCO/mask_rcnn_vitdet_h_75ep.py, with an Expedit preset.
# Expedit preset and its measured FLOPs ratio: EXPEDITE_PRESETS in configs/common/vitdet.py.
# Turn token reduction off with model.backbone.net.expedite.enabled=False.
from ...common.vitdet import dataloader, mask_rcnn_vitdet

model, train, optimizer, lr_multiplier = mask_rcnn_vitdet("huge")
