# Expedit presets of the ViTDet COCO configs (configs/ViTDet/COCO/), the one home of ViTDet's
# presets; Mask2Former's are SWIN_LARGE_EXPEDITE_PRESETS in configs/Mask2Former/common/models.py.
# Each preset gives the ExpediteConfig fields, set at model.backbone.net.expedite and
# overridable from the command line (model.backbone.net.expedite.expedit.k=10, ...). Each 14x14
# window is clustered to grid x grid after `location` blocks.
from expedite_vit.settings import expedite_node

VITDET_EXPEDITE_PRESETS = {
    # Backbone (ViT) GFLOPs at 1024x1024, fvcore, clustering and reconstruction counted
    # (BENCHMARKS.md): 483.2 -> 222.4, 2.17x. ToMe at the same FLOPs needs r=98, half of every
    # window merged in each block from block 4 on (2.17x).
    "base": dict(
        enabled=True, method="expedit", location=4,
        expedit=dict(
            grid=7, n_iters=5, cluster_temperature=0.01, locality_window=5, k=20,
            reconstruct_temperature=0.01, normalize="sum", implementation="default", gather=0,
            warm_start=False,
        ),
        tome=dict(r=98),
    ),
    # 1490.4 -> 716.6 GFLOPs, 2.08x. ToMe at the same FLOPs: r=31 (716.5, 2.08x; CPU backbone
    # latency 1.96x). AiluRus: 16 anchors per window, every token within the 5x5 neighbourhood of
    # one merging (threshold -1, so the cut does not depend on the weights): 856.9, 1.74x (CPU
    # latency 1.96x). method=ailurus or tome switches to them (BENCHMARKS.md).
    "large": dict(
        enabled=True, method="expedit", location=8,
        expedit=dict(
            grid=7, n_iters=5, cluster_temperature=0.01, locality_window=5, k=20,
            reconstruct_temperature=0.01, normalize="sum", implementation="default", gather=0,
            warm_start=False,
        ),
        ailurus=dict(budget=16, neighbourhood=5, density_k=5, threshold=-1.0),
        tome=dict(r=31),
        # Fast-iTPN (method=itpn) at the same FLOPs: 16x16 gathering tokens in the global blocks
        # and 18% of every window kept from block 8 on (keep matched by --match-flops: 2.086x).
        itpn=dict(keep=0.1779, score="neighbour", gather=16),
    ),
    # 2978.5 -> 1449.7 GFLOPs, 2.05x. ToMe at the same FLOPs: r=13 (2.05x).
    "huge": dict(
        enabled=True, method="expedit", location=8,
        expedit=dict(
            grid=8, n_iters=5, cluster_temperature=0.01, locality_window=5, k=20,
            reconstruct_temperature=0.01, normalize="sum", implementation="default", gather=0,
            warm_start=False,
        ),
        tome=dict(r=13),
    ),
}


def vitdet_expedite(preset: str):
    """The ``expedite`` node of ViTDet-{preset} (a key of VITDET_EXPEDITE_PRESETS)."""
    return expedite_node(**VITDET_EXPEDITE_PRESETS[preset])
