# ViTDet-B Mask R-CNN on COCO (100ep), equivalent to detectron2's
# projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py, with an Expedit preset.
# Turn token reduction off with model.backbone.net.expedite.enabled=False.
from ...common.vitdet import dataloader, mask_rcnn_vitdet

# Backbone FLOPs at 1024x1024 (fvcore, clustering and reconstruction counted): see BENCHMARKS.md.
EXPEDITE = dict(
    enabled=True,
    location=4,
    grid=7,
    n_iters=5,
    cluster_temperature=0.01,
    locality_window=5,
    k=20,
    reconstruct_temperature=0.01,
)
model, train, optimizer, lr_multiplier = mask_rcnn_vitdet("base", EXPEDITE)
